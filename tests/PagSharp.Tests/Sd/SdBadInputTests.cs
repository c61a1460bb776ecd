using System.Text.Json.Nodes;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>Bad folders and options: every error exits with 2 and names the file and what was expected.</summary>
[Collection(CliCollection.Name)]
public sealed class SdBadInputTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    private static string Sampling => SdFixtures.Unet("sampling.safetensors");

    public void Dispose() => _sd.Dispose();

    private (int Exit, string Log) Latent(params string[] extra) => Pag.Run(new[]
    {
        "txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds",
        "--steps", "2", "--count", "1", "--output-type", "latent", "--output", _sd.Dir.File("out" + Guid.NewGuid().ToString("N")),
    }.Concat(extra).ToArray());

    /// <summary>A latent-output run; its latents file's bytes (null when it failed) and log.</summary>
    private (byte[]? Latents, string Log) LatentBytes(params string[] extra)
    {
        string dir = _sd.Dir.File("lat" + Guid.NewGuid().ToString("N"));
        var (exit, log) = Pag.Run(new[]
        {
            "txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds",
            "--steps", "3", "--count", "1", "--output-type", "latent", "--output", dir,
        }.Concat(extra).ToArray());
        return (exit == 0 ? File.ReadAllBytes(Path.Combine(dir, "latents.npy")) : null, log);
    }

    private static void AssertBad((int Exit, string Log) r, params string[] expected)
    {
        Assert.True(r.Exit == 2, r.Log);
        foreach (var e in expected) Assert.Contains(e, r.Log);
    }

    [Fact]
    public void MissingWeights_NamesTheFolderAndTheFileNames()
    {
        File.Delete(_sd.Path("unet/diffusion_pytorch_model.safetensors"));
        AssertBad(Latent(), _sd.Path("unet"), "diffusion_pytorch_model.safetensors", "model.safetensors");
    }

    [Fact]
    public void NotAFolderOrNoModelIndex()
    {
        AssertBad(Pag.Run("txt2img", "--model", _sd.Dir.File("nope"), "--prompt", "x"), "does not exist");
        File.Delete(_sd.Path("model_index.json"));
        AssertBad(Latent(), "model_index.json");
    }

    [Fact]
    public void ComponentsACallDoesNotNeed_MayBeAbsent()
    {
        Directory.Delete(_sd.Path("vae"), true);
        Directory.Delete(_sd.Path("text_encoder"), true);
        Directory.Delete(_sd.Path("tokenizer"), true);
        var r = Latent("--guidance-scale", "5");
        Assert.True(r.Exit == 0, r.Log);
        // Pixel output needs the VAE; a prompt needs the text encoder.
        AssertBad(Latent("--output-type", "pil"), _sd.Path("vae"), "--output-type latent");
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "cat", "--output-type", "latent", "--output", _sd.Dir.File("p")),
            "tokenizer", "--prompt-embeds");
        // CFG with a prompt embedding but no negative one needs the text encoder for the empty prompt.
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--output-type", "latent",
            "--steps", "1", "--output", _sd.Dir.File("q")), "tokenizer", "--negative-prompt-embeds");
    }

    [Fact]
    public void MismatchedUNetConfig_ListsTheShapeMismatches()
    {
        var cfg = JsonNode.Parse(File.ReadAllText(_sd.Path("unet/config.json")))!.AsObject();
        cfg["block_out_channels"] = new JsonArray(4, 16);
        cfg["attention_head_dim"] = 8;
        _sd.Write("unet/config.json", cfg.ToJsonString());
        AssertBad(Latent(), _sd.Path("unet/diffusion_pytorch_model.safetensors"), "shape mismatches", _sd.Path("unet/config.json"));
    }

    [Fact]
    public void TextEncoderWidth_MustMatchCrossAttentionDim()
    {
        int vocab = ToyClip.Vocab().Count;
        var json = ToyClip.TextConfigJson(vocab, hidden: 16);
        _sd.Write("text_encoder/config.json", json);
        using (var te = new ClipTextModel(ClipTextConfig.FromJson(json, "x")))
            SafeTensors.Save(_sd.Path("text_encoder/model.safetensors"), te.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "cat", "--output-type", "latent", "--output", _sd.Dir.File("o")),
            "hidden_size 16", "cross_attention_dim 8");
    }

    [Fact]
    public void Fp16Weights_AreUpcast_AndMixUpsAreRefused()
    {
        string fp32 = _sd.Path("unet/diffusion_pytorch_model.safetensors"), fp16 = _sd.Path("unet/diffusion_pytorch_model.fp16.safetensors");
        var w = SafeTensors.Load(fp32);
        try
        {
            SafeTensors.Save(fp16, w.ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.Float16)));
            File.Delete(fp32);
            string tensor = _sd.Dir.File("fp16.npy");
            var r = Latent("--guidance-scale", "5", "--pag-scale", "3", "--steps", "5", "--init-noise", Sampling + ":latents_T", "--save-tensor", tensor);
            Assert.True(r.Exit == 0, r.Log);
            using (var actual = Npy.Load(tensor))
            using (var expected = SafeTensors.LoadTensor(Sampling, "final_cfg5_pag3_mid"))
            {
                Assert.Equal(ScalarType.Float32, actual.dtype);
                SdFixtures.AssertRelative(expected, actual, 2e-2, "fp16 weights vs the fp32 reference (fp16 rounding of the weights only)");
            }
            // A ".fp16" file that holds float32.
            SafeTensors.Save(fp16, w);
            AssertBad(Latent(), fp16, "fp16 variant", "Float32");
            // One file with two precisions.
            SafeTensors.Save(fp16, w.ToDictionary(kv => kv.Key, kv => kv.Key.StartsWith("conv_in", StringComparison.Ordinal) ? kv.Value.to_type(ScalarType.Float16) : kv.Value));
            AssertBad(Latent(), fp16, "mixes floating-point dtypes");
        }
        finally { TensorAssert.DisposeAll(w); }
    }

    [Fact]
    public void BadOptions()
    {
        AssertBad(Latent("--scheduler", "pndm"), "unknown scheduler 'pndm'", "ddim, euler, euler-a, dpmpp-2m");
        AssertBad(Latent("--pag-layers", "down.block_1"), "down.block_1", "mid_block.attentions.0.transformer_blocks.0.attn1");
        AssertBad(Latent("--steps", "2000"), "exceed num_train_timesteps");
        AssertBad(Latent("--output-type", "jpeg"), "--output-type");
        AssertBad(Latent("--width", "60"), "multiples of 8");
        AssertBad(Latent("--pag-cache-interval", "0"), "cache interval", "≥ 1");
        AssertBad(Latent("--init-noise", Sampling + ":prompt_embeds"), "--init-noise");
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--output", _sd.Dir.File("n")), "--prompt");
    }

    [Fact]
    public void PromptEmbeddingShapes_AreChecked()
    {
        using var dir = new TempDir();
        string wrongDim = dir.File("wide.npy"), wrongLen = dir.File("short.npy");
        using (var t = zeros(1, 77, 16)) Npy.Save(wrongDim, t);
        using (var t = zeros(1, 10, 8)) Npy.Save(wrongLen, t);
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--prompt-embeds", wrongDim, "--guidance-scale", "1", "--output-type", "latent",
            "--output", dir.File("a")), wrongDim, "cross_attention_dim 8");
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", wrongLen,
            "--output-type", "latent", "--output", dir.File("b")), "must match");
        AssertBad(Pag.Run("txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--count", "1",
            "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds", "--negative-prompt", "x", "--output", dir.File("c")), "not both");
    }

    [Fact]
    public void AnImageTooLargeForMemoryIsRefusedBeforeAnythingIsWritten()
    {
        var r = Latent("--width", "32768", "--height", "32768");
        AssertBad(r, "for a single image", "is available");
    }

    [Fact]
    public void SchedulerConfig_UnsupportedKeysAreNamed()
    {
        var cfg = JsonNode.Parse(File.ReadAllText(_sd.Path("scheduler/scheduler_config.json")))!.AsObject();
        cfg["use_exponential_sigmas"] = true;
        _sd.Write("scheduler/scheduler_config.json", cfg.ToJsonString());
        // Refused by the schedulers that would use it; DDIM ignores it, as diffusers' DDIMScheduler.from_config does.
        AssertBad(Latent("--scheduler", "dpmpp-2m"), "scheduler_config.json", "use_exponential_sigmas", "dpmpp-2m");
        AssertBad(Latent("--scheduler", "euler"), "use_exponential_sigmas");
        var r = Latent("--scheduler", "ddim");
        Assert.True(r.Exit == 0, r.Log);
    }

    [Fact]
    public void KarrasSigmas_FromTheFolderOrTheFlag_AreTheSameRun()
    {
        var flag = LatentBytes("--scheduler", "dpmpp-2m", "--karras-sigmas");
        Assert.True(flag.Latents is not null, flag.Log);
        var plain = LatentBytes("--scheduler", "dpmpp-2m");
        Assert.True(plain.Latents is not null, plain.Log);
        var cfg = JsonNode.Parse(File.ReadAllText(_sd.Path("scheduler/scheduler_config.json")))!.AsObject();
        cfg["use_karras_sigmas"] = true;
        _sd.Write("scheduler/scheduler_config.json", cfg.ToJsonString());
        var folder = LatentBytes("--scheduler", "dpmpp-2m");
        Assert.True(folder.Latents is not null, folder.Log);
        Assert.Equal(flag.Latents, folder.Latents);
        Assert.NotEqual(plain.Latents, folder.Latents);
    }
}
