using System.Text.Json.Nodes;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Original (lllyasviel/ControlNet, LDM) single-file ControlNets (fixtures README §15): the sd_controlnet_tiny
/// ControlNet converted to <c>control_model.*</c> keys (and without prefix), which diffusers'
/// <c>ControlNetModel.from_single_file</c> loads bitwise to the fixture weights, loads to the same weights here and
/// runs <c>pag txt2img --controlnet FILE</c> as the folder; the shipped SD 1.5 ControlNet config and the key map take
/// every key of the real SD 1.5 ControlNet.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class ControlNetSingleFileTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    public void Dispose() => _sd.Dispose();

    internal static string Fx(string name) => Fixtures.Path("single_file", "controlnet", name);
    private static string Sampling => ControlNetParityTests.Fx("sampling.safetensors");

    private static void AssertSameWeights(SdControlNet expected, SdControlNet actual, string what)
    {
        var e = expected.state_dict();
        var a = actual.state_dict();
        Assert.Equal(e.Keys.Order(), a.Keys.Order());
        foreach (var (k, t) in e)
        {
            Assert.Equal(t.shape, a[k].shape);
            TensorAssert.BitwiseEqual(t, a[k], $"{what}: {k} differs");
        }
    }

    [Theory]
    [InlineData("control_tiny.safetensors", "control_model.")]
    [InlineData("control_tiny_noprefix.safetensors", "")]
    public void OriginalFile_LoadsTheSameWeightsAsTheDiffusersControlNet(string name, string prefix)
    {
        using (var f = SdSingleFile.TryOpenControlNet(Fx(name)))
        {
            Assert.NotNull(f);
            Assert.Equal(prefix, f!.ControlNetKeyPrefix);
            Assert.Equal(SdFamily.Sd1, f.Family);
        }
        using var reference = ControlNetParityTests.LoadControlNet();
        // config.json beside the file (the fixture's ControlNet config, as diffusers' from_single_file was given it).
        using var loaded = SdControlNet.Load(Fx(name));
        AssertSameWeights(reference, loaded, name);
        // The same through SdLoader with an explicit config, and the forward equals diffusers' folder model.
        using var viaLoader = SdLoader.LoadControlNet(ControlNetConfig.Load(Fx("config.json")), Fx(name));
        AssertSameWeights(reference, viaLoader, name + " (SdLoader)");
        var c = SdFixtures.Tensors(ControlNetParityTests.Fx("cases.safetensors"));
        try
        {
            using var _ = no_grad();
            using var r = loaded.Forward(c["x"], c["t"].reshape(Array.Empty<long>()), c["encoder_hidden_states"], c["controlnet_cond"]);
            Close.Assert(c["cn_scale1.0_mid"], r.Mid, 1e-5, "ControlNet mid residual from the single file");
            for (int i = 0; i < r.Down.Count; i++) Close.Assert(c[$"cn_scale1.0_down_{i}"], r.Down[i], 1e-5, $"down residual {i}");
        }
        finally { TensorAssert.DisposeAll(c); }
    }

    [Fact]
    public void DiffusersFolderFile_IsNotTakenForAnOriginalControlNet()
    {
        Assert.Null(SdSingleFile.TryOpenControlNet(ControlNetParityTests.Fx("controlnet_weights.safetensors")));
        Assert.Null(SdSingleFile.TryOpenControlNet(Fixtures.Path("single_file", "sd15_unet_only.safetensors")));
    }

    [Fact]
    public void Txt2Img_ControlNetSingleFile_EqualsTheFolderRun()
    {
        string folder = _sd.Dir.File("cn-folder");
        ControlNetCliTests.WriteControlNet(folder, ControlNetParityTests.ControlNetConfigJson(), ControlNetParityTests.Fx("controlnet_weights.safetensors"));
        string[] Args(string cn, string tensor) =>
        [
            "txt2img", "--model", _sd.Root, "--controlnet", cn, "--control-image", Sampling + ":control_image",
            "--init-noise", Sampling + ":latents_T", "--guidance-scale", "6", "--pag-scale", "3", "--pag-layers", "mid",
            "--steps", "5", "--scheduler", "ddim", "--output-type", "latent", "--save-tensor", tensor, "--output", _sd.Dir.File(System.IO.Path.GetFileNameWithoutExtension(tensor)),
            "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds",
        ];
        string a = _sd.Dir.File("folder.npy"), b = _sd.Dir.File("single.npy"), n = _sd.Dir.File("noprefix.npy");
        var (exit, log) = Pag.Run(Args(folder, a));
        Assert.True(exit == 0, log);
        (exit, log) = Pag.Run(Args(Fx("control_tiny.safetensors"), b));
        Assert.True(exit == 0, log);
        (exit, log) = Pag.Run(Args(Fx("control_tiny_noprefix.safetensors"), n));
        Assert.True(exit == 0, log);
        using var fromFolder = Npy.Load(a);
        using var fromFile = Npy.Load(b);
        using var fromNoPrefix = Npy.Load(n);
        TensorAssert.BitwiseEqual(fromFolder, fromFile, "--controlnet FILE (control_model.*) equals the folder run");
        TensorAssert.BitwiseEqual(fromFolder, fromNoPrefix, "--controlnet FILE (no prefix) equals the folder run");
        using var expected = SafeTensors.LoadTensor(Sampling, "final_cfg6_pag3_mid");
        SdFixtures.AssertRelative(expected, fromFile, 1e-4, "pag txt2img --controlnet control_tiny.safetensors vs diffusers");
    }

    [Fact]
    public void WithoutConfigBeside_TheShippedSd15ConfigIsUsed_AndAMismatchSaysSo()
    {
        using var dir = new TempDir();
        string file = dir.File("control_tiny.safetensors");
        File.Copy(Fx("control_tiny.safetensors"), file);
        var ex = Assert.Throws<PagSharpException>(() => SdControlNet.Load(file));
        Assert.Contains(System.IO.Path.Combine("controlnet-sd15", "config.json"), ex.Message);
        Assert.Contains("shape mismatches", ex.Message);
        Assert.Contains("control_model.input_hint_block.0.weight", ex.Message);
        Assert.Contains("beside the file", ex.Message);
        // The CLI reports it and writes nothing.
        string outDir = _sd.Dir.File("noconfig");
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--controlnet", file, "--control-image", Sampling + ":control_image",
            "--prompt-embeds", Sampling + ":prompt_embeds", "--steps", "1", "--output-type", "latent", "--output", outDir);
        Assert.True(exit == 2, log);
        Assert.Contains("controlnet-sd15", log);
        Assert.False(Directory.Exists(outDir));
        // A diffusers weight file without config.json beside it keeps its own message.
        string plain = dir.File("weights.safetensors");
        File.Copy(ControlNetParityTests.Fx("controlnet_weights.safetensors"), plain);
        ex = Assert.Throws<PagSharpException>(() => SdControlNet.Load(plain));
        Assert.Contains("need the diffusers ControlNetModel config.json", ex.Message);
    }

    [Fact]
    public void BrokenOriginalFiles_ListTheirKeys_AndAreRefusedAsModels()
    {
        using var dir = new TempDir();
        File.Copy(Fx("config.json"), dir.File("config.json"));
        var t = SafeTensors.Load(Fx("control_tiny.safetensors"));
        try
        {
            var missing = t.Where(kv => kv.Key != "control_model.zero_convs.3.0.weight").ToDictionary(kv => kv.Key, kv => kv.Value);
            SafeTensors.Save(dir.File("missing.safetensors"), missing);
            var ex = Assert.Throws<PagSharpException>(() => SdControlNet.Load(dir.File("missing.safetensors")));
            Assert.Contains("control_model.zero_convs.3.0.weight (for controlnet_down_blocks.3.weight)", ex.Message);
            var extra = new Dictionary<string, Tensor>(t) { ["control_model.input_hint_block.6.weight"] = zeros(1) };
            SafeTensors.Save(dir.File("extra.safetensors"), extra);
            ex = Assert.Throws<PagSharpException>(() => SdControlNet.Load(dir.File("extra.safetensors")));
            Assert.Contains("keys left over (1)", ex.Message);
            Assert.Contains("control_model.input_hint_block.6.weight", ex.Message);
            // fp16 weights are up-cast.
            SafeTensors.Save(dir.File("half.safetensors"), t.ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.Float16)));
            using var half = SdControlNet.Load(dir.File("half.safetensors"));
            using var reference = ControlNetParityTests.LoadControlNet();
            foreach (var (k, p) in reference.state_dict())
                Close.Assert(p, half.state_dict()[k], 2e-3 * Math.Max(1.0, p.abs().max().item<float>()), "fp16 " + k);
        }
        finally { TensorAssert.DisposeAll(t); }
        foreach (var name in new[] { "control_tiny.safetensors", "control_tiny_noprefix.safetensors" })
        {
            var ex = Assert.Throws<PagSharpException>(() => SdSingleFile.Open(Fx(name)));
            Assert.Contains("original ControlNet checkpoint", ex.Message);
            Assert.Contains("--controlnet", ex.Message);
        }
    }
}

/// <summary>The shipped SD 1.5 ControlNet config and the key map against the real SD 1.5 ControlNet's key list (fixtures README §15.2).</summary>
[Collection(MetaDeviceCollection.Name)]
public sealed class ControlNetSd15KeysTests
{
    [Fact]
    public void TheShippedSd15Config_TakesEveryKeyOfTheOriginalSd15ControlNet()
    {
        // cldm.ControlNet(cldm_v15.yaml) built on the meta device: key -> shape, no tensors.
        var keys = JsonNode.Parse(File.ReadAllText(ControlNetSingleFileTests.Fx("control_sd15_keys.json")))!["keys"]!.AsObject()
            .ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(v => v!.GetValue<long>()).ToArray());
        Assert.Equal(340, keys.Count);
        string? cfg = SdSingleFile.BuiltInControlNetConfig();
        Assert.NotNull(cfg);
        var file = SdSingleFile.ControlNetFromShapes(keys, "control_v11p_sd15 keys");
        Assert.Equal("control_model.", file.ControlNetKeyPrefix);
        Assert.Equal(SdFamily.Sd1, file.Family);
        set_default_device(new Device("meta"));
        try
        {
            using var net = new SdControlNet(ControlNetConfig.Load(cfg!));
            file.LoadControlNet(net, cfg!); // every parameter found with its shape, nothing left over
            Assert.Equal(361_279_120L, net.parameters().Sum(p => p.numel()));
        }
        finally { set_default_device(CPU); }
        // An SD 2.x ControlNet (1024-wide cross-attention) is told apart; the SD 1.5 config then does not fit it.
        var sd2 = keys.ToDictionary(kv => kv.Key, kv => kv.Key.EndsWith("attn2.to_k.weight", StringComparison.Ordinal) || kv.Key.EndsWith("attn2.to_v.weight", StringComparison.Ordinal)
            ? new[] { kv.Value[0], 1024L } : kv.Value);
        var file2 = SdSingleFile.ControlNetFromShapes(sd2, "sd2 keys");
        Assert.Equal(SdFamily.Sd2, file2.Family);
        set_default_device(new Device("meta"));
        try
        {
            using var net = new SdControlNet(ControlNetConfig.Load(cfg!));
            var ex = Assert.Throws<PagSharpException>(() => file2.LoadControlNet(net, cfg!));
            Assert.Contains("shape mismatches", ex.Message);
            Assert.Contains("beside the file", ex.Message);
        }
        finally { set_default_device(CPU); }
    }
}
