using PagSharp.Guidance;
using PagSharp.Denoisers;
using PagSharp.Pipelines;
using System.Text.Json.Nodes;
using PagSharp.Attention;
using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Sampling;
using PagSharp.Tests.Cli;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary><c>pag txt2img --controlnet</c> on a tiny diffusers folder and the fixture ControlNet (README §9.3).</summary>
[Collection(CliCollection.Name)]
public sealed class ControlNetCliTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    private static string Sampling => ControlNetParityTests.Fx("sampling.safetensors");

    public ControlNetCliTests() => WriteControlNet(Cn, ControlNetParityTests.ControlNetConfigJson(), ControlNetParityTests.Fx("controlnet_weights.safetensors"));

    public void Dispose() => _sd.Dispose();

    private string Cn => _sd.Dir.File("cn-tiny");

    internal static void WriteControlNet(string dir, string configJson, string? weights)
    {
        Directory.CreateDirectory(dir);
        var cfg = JsonNode.Parse(configJson)!.AsObject();
        cfg["_class_name"] = "ControlNetModel";
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
        if (weights is not null) File.Copy(weights, Path.Combine(dir, "diffusion_pytorch_model.safetensors"));
    }

    private string[] Embeds(bool uncond) => uncond
        ? new[] { "--prompt-embeds", Sampling + ":negative_prompt_embeds" }
        : new[] { "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds" };

    [Theory]
    [InlineData("final_cfg6_pag3_mid", "6", "3", "1.0", false)]
    [InlineData("final_cfg6_pag3_mid_cn0.5", "6", "3", "0.5", false)]
    [InlineData("final_cfg6", "6", "0", "1.0", false)]
    [InlineData("final_uncond_pag3_mid", "0", "3", "1.0", true)]
    [InlineData("final_uncond_none", "0", "0", "1.0", true)]
    public void Txt2Img_ControlNet_ReproducesDiffusers(string key, string g, string s, string cs, bool uncond)
    {
        string outDir = _sd.Dir.File("out_" + key), tensor = _sd.Dir.File(key + ".npy");
        var args = new List<string> { "txt2img", "--model", _sd.Root, "--controlnet", Cn, "--control-image", Sampling + ":control_image",
            "--controlnet-scale", cs, "--init-noise", Sampling + ":latents_T", "--guidance-scale", g, "--pag-scale", s, "--pag-layers", "mid",
            "--steps", "5", "--scheduler", "ddim", "--output-type", "latent", "--save-tensor", tensor, "--output", outDir };
        args.AddRange(Embeds(uncond));
        var (exit, log) = Pag.Run(args.ToArray());
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(tensor);
        using var expected = SafeTensors.LoadTensor(Sampling, key);
        SdFixtures.AssertRelative(expected, actual, 1e-4, "pag txt2img --controlnet " + key);
        var run = File.ReadAllText(Path.Combine(outDir, "run.json"));
        Assert.Contains("\"controlnet_conditioning_scale\"", run);
        Assert.Matches("\"(steps_offset|StepsOffset)\": 0,", run); // the folder's scheduler, without the StableDiffusionPipeline fix-ups
    }

    [Fact]
    public void Txt2Img_PngControlImage_Canny_EndToEnd_AndLibraryGenerateEqualsTheCommand()
    {
        // A 100×80 photo-like image (a bright disc on a gradient), resized to 64×64 for the run.
        string png = _sd.Dir.File("photo.png");
        var px = new float[3 * 80 * 100];
        for (int y = 0; y < 80; y++)
            for (int x = 0; x < 100; x++)
            {
                bool disc = (x - 50) * (x - 50) + (y - 40) * (y - 40) < 400;
                for (int c = 0; c < 3; c++) px[(c * 80 + y) * 100 + x] = disc ? 0.9f : -0.8f + 0.004f * x * (c + 1);
            }
        using (var t = tensor(px, new long[] { 3, 80, 100 })) Png.Save(png, t);

        string outDir = _sd.Dir.File("canny"), images = _sd.Dir.File("canny.npy");
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--controlnet", Cn, "--control-image", png, "--canny",
            "--prompt", "", "--guidance-scale", "0", "--pag-scale", "3", "--steps", "3", "--width", "64", "--height", "64",
            "--count", "2", "--seed", "5", "--output", outDir, "--save-tensor", images);
        Assert.True(exit == 0, log);
        foreach (var f in new[] { "00000.png", "00001.png", "grid.png", "run.json", "control.png" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        using (var control = Png.Load(Path.Combine(outDir, "control.png")))
        {
            Assert.Equal(new long[] { 3, 64, 64 }, control.shape);
            Assert.True(control.max().item<float>() > 0.5f, "edges present");
            Assert.True(control.min().item<float>() < -0.9f, "background black");
        }

        using var sd = StableDiffusion.Load(_sd.Root, new SdComponents(Vae: true, TextEncoder: true));
        using var cn = SdControlNet.Load(Cn);
        using var img = ControlImage.Load(png, 64, 64, sd.VaeScaleFactor, ControlPreprocessor.Canny);
        var g = new GuidanceSettings { GuidanceScale = 0, PagScale = SdFixtures.Pag(3), PagLayers = DiffusersLayerSpec.Resolve("mid", sd.Unet.AttentionLayers) };
        using var lib = sd.Generate("", new long[] { 5, 6 }, g, steps: 3, control: new SdControl(cn, img));
        using var cmd = Npy.Load(images);
        Close.Assert(cmd, lib, 1e-6, "Generate(control) vs pag txt2img --controlnet");
        // The ControlNet changes the result.
        using var plain = sd.Generate("", new long[] { 5, 6 }, g, steps: 3, width: 64, height: 64);
        Close.AssertDiffer(plain, lib, 1e-3, "with vs without ControlNet");
    }

    [Fact]
    public void Txt2Img_Compare_ControlNetGrid_ControlNoneCfgPagCfgPag()
    {
        string outDir = _sd.Dir.File("cmp"), grid = _sd.Dir.File("cmp.npy");
        var common = new List<string> { "txt2img", "--model", _sd.Root, "--controlnet", Cn, "--control-image", Sampling + ":control_image",
            "--init-noise", Sampling + ":latents_T", "--pag-layers", "mid", "--steps", "5", "--scheduler", "ddim" };
        common.AddRange(Embeds(false));
        var (exit, log) = Pag.Run(common.Concat(new[] { "--compare", "none,cfg:6,pag:3,cfg:6+pag:3", "--output", outDir, "--save-tensor", grid }).ToArray());
        Assert.True(exit == 0, log);
        Assert.Contains("control, none, cfg:6, pag:3, cfg:6+pag:3", log);
        Assert.True(File.Exists(Path.Combine(outDir, "compare.png")));
        using var g = Npy.Load(grid);
        Assert.Equal(new long[] { 5, 3, 64, 64 }, g.shape);
        using (var ci = SafeTensors.LoadTensor(Sampling, "control_image"))
            Close.Assert(ci[0], g[0], 1e-7, "column 0 is the control image");
        // The CFG+PAG column equals the single run with the same settings.
        string single = _sd.Dir.File("single.npy");
        (exit, log) = Pag.Run(common.Concat(new[] { "--guidance-scale", "6", "--pag-scale", "3", "--output", _sd.Dir.File("single"), "--save-tensor", single }).ToArray());
        Assert.True(exit == 0, log);
        using var one = Npy.Load(single);
        Close.Assert(one[0], g[4], 1e-6, "cfg:6+pag:3 column vs pag txt2img");
        Close.AssertDiffer(g[1], g[4], 1e-4, "none vs cfg+pag");
        // SAG columns run too (one guidance engine for every family), and a latent-output comparison is refused.
        (exit, log) = Pag.Run(common.Concat(new[] { "--compare", "sag:1", "--output", _sd.Dir.File("c2") }).ToArray());
        Assert.True(exit == 0, log);
        Assert.True(File.Exists(Path.Combine(_sd.Dir.File("c2"), "compare.png")));
        (exit, log) = Pag.Run(common.Concat(new[] { "--compare", "none", "--output-type", "latent", "--output", _sd.Dir.File("c3") }).ToArray());
        Assert.True(exit == 2, log);
        Assert.Contains("latent", log);
    }

    [Fact]
    public void Txt2Img_ControlNetPipelineFolder_UsesItsControlnetSubfolder()
    {
        WriteControlNet(_sd.Path("controlnet"), ControlNetParityTests.ControlNetConfigJson(), ControlNetParityTests.Fx("controlnet_weights.safetensors"));
        string tensor = _sd.Dir.File("sub.npy");
        var args = new List<string> { "txt2img", "--model", _sd.Root, "--control-image", Sampling + ":control_image", "--init-noise", Sampling + ":latents_T",
            "--guidance-scale", "0", "--pag-scale", "3", "--steps", "5", "--scheduler", "ddim", "--output-type", "latent", "--save-tensor", tensor,
            "--output", _sd.Dir.File("sub") };
        args.AddRange(Embeds(true));
        var (exit, log) = Pag.Run(args.ToArray());
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(tensor);
        using var expected = SafeTensors.LoadTensor(Sampling, "final_uncond_pag3_mid");
        SdFixtures.AssertRelative(expected, actual, 1e-4, "controlnet/ subfolder");
    }

    [Fact]
    public void Txt2Img_DefaultSize_IsTheControlImageSize()
    {
        string png = _sd.Dir.File("edges.png");
        using (var t = rand(3, 48, 40) * 2 - 1) Png.Save(png, t);
        string outDir = _sd.Dir.File("size");
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--controlnet", Cn, "--control-image", png, "--prompt", "cat",
            "--steps", "1", "--count", "1", "--output-type", "latent", "--output", outDir);
        Assert.True(exit == 0, log);
        using var lat = Npy.Load(Path.Combine(outDir, "latents.npy"));
        Assert.Equal(new long[] { 1, 4, 24, 20 }, lat.shape);
    }

    private void AssertBad(string outDir, (int Exit, string Log) r, params string[] expected)
    {
        Assert.True(r.Exit == 2, r.Log);
        foreach (var e in expected) Assert.Contains(e, r.Log);
        Assert.False(Directory.Exists(outDir), "nothing may be written: " + outDir);
    }

    private (int, string) Run(string outDir, params string[] extra) => Pag.Run(new[]
    {
        "txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds",
        "--steps", "2", "--count", "1", "--output-type", "latent", "--output", outDir,
    }.Concat(extra).ToArray());

    [Fact]
    public void BadInput_ClearErrors_Exit2_NothingWritten()
    {
        string o = _sd.Dir.File("bad");
        string ci = Sampling + ":control_image";
        // Missing pieces.
        AssertBad(o, Run(o, "--controlnet", Cn), "--control-image");
        AssertBad(o, Run(o, "--control-image", ci), "--controlnet", Path.Combine(_sd.Root, "controlnet"));
        AssertBad(o, Run(o, "--controlnet", _sd.Dir.File("nope"), "--control-image", ci), "nope", "does not exist");
        AssertBad(o, Run(o, "--controlnet", Cn, "--control-image", _sd.Dir.File("missing.png")), "missing.png", "does not exist");
        string noCfg = _sd.Dir.File("cn_nocfg");
        Directory.CreateDirectory(noCfg);
        File.Copy(ControlNetParityTests.Fx("controlnet_weights.safetensors"), Path.Combine(noCfg, "diffusion_pytorch_model.safetensors"));
        AssertBad(o, Run(o, "--controlnet", noCfg, "--control-image", ci), Path.Combine(noCfg, "config.json"), "config.json");
        string noW = _sd.Dir.File("cn_noweights");
        WriteControlNet(noW, ControlNetParityTests.ControlNetConfigJson(), null);
        AssertBad(o, Run(o, "--controlnet", noW, "--control-image", ci), noW, "diffusion_pytorch_model.safetensors");
        // Weights that do not match the config (strict loading).
        string wrongW = _sd.Dir.File("cn_wrongweights");
        WriteControlNet(wrongW, ControlNetParityTests.ControlNetConfigJson(), SdFixtures.Unet("weights.safetensors"));
        AssertBad(o, Run(o, "--controlnet", wrongW, "--control-image", ci), "diffusion_pytorch_model.safetensors", "controlnet_cond_embedding");

        // A ControlNet whose config does not fit the UNet (cross-attention width 16, latent channels 8).
        foreach (var (key, value, expect) in new[] { ("cross_attention_dim", "16", "cross_attention_dim"), ("in_channels", "8", "in_channels"), ("block_out_channels", "[4, 16]", "skip connections") })
        {
            string dir = _sd.Dir.File("cn_" + key);
            var cfg = JsonNode.Parse(ControlNetParityTests.ControlNetConfigJson())!.AsObject();
            cfg[key] = JsonNode.Parse(value);
            WriteControlNet(dir, cfg.ToJsonString(), null);
            using (var net = new SdControlNet(ControlNetConfig.FromJson(cfg.ToJsonString(), "test")))
                SafeTensors.Save(Path.Combine(dir, "diffusion_pytorch_model.safetensors"), net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));
            AssertBad(o, Run(o, "--controlnet", dir, "--control-image", ci), Path.Combine(dir, "config.json"), expect, "does not belong");
        }

        // Control images of the wrong channels or size.
        string t4 = _sd.Dir.File("four.npy"), t48 = _sd.Dir.File("small.npy");
        using (var x = rand(1, 4, 64, 64)) Npy.Save(t4, x);
        using (var x = rand(1, 3, 48, 48)) Npy.Save(t48, x);
        AssertBad(o, Run(o, "--controlnet", Cn, "--control-image", t4), "four.npy", "[1 or N,3,H,W]", "conditioning_channels 3");
        AssertBad(o, Run(o, "--controlnet", Cn, "--control-image", t48, "--width", "64", "--height", "64"), "small.npy", "48×48", "64×64");
        AssertBad(o, Run(o, "--controlnet", Cn, "--control-image", ci, "--init-noise", Sampling + ":latents_T", "--width", "32", "--height", "32"), "control_image");
        AssertBad(o, Run(o, "--controlnet", Cn, "--control-image", ci, "--canny"), "--canny");
        AssertBad(o, Run(o, "--controlnet", Cn, "--control-image", ci, "--control-guidance-start", "0.8", "--control-guidance-end", "0.2"), "control guidance start");
    }

    [Fact]
    public void Library_ControlImageOfTheWrongSizeOrChannels_IsRefused()
    {
        using var unet = ControlNetParityTests.LoadUnet();
        using var cn = ControlNetParityTests.LoadControlNet();
        using var x = randn(1, 4, 32, 32);
        using var e = randn(1, 77, 8);
        var g = new GuidanceSettings { GuidanceScale = 1, PagScale = SdFixtures.Pag(0) };
        Tensor Run(Tensor img) => StableDiffusionPipeline.Denoise(unet, new PagSharp.Diffusion.Schedulers.DdimScheduler(ControlNetParityTests.Scheduler(), 1), x, e, null, g,
            control: new SdControl(cn, img));
        using var small = rand(1, 3, 32, 32);
        var ex = Assert.Throws<PagSharpException>(() => Run(small));
        Assert.Contains("64×64", ex.Message);
        using var gray = rand(1, 1, 64, 64);
        ex = Assert.Throws<PagSharpException>(() => Run(gray));
        Assert.Contains("conditioning_channels 3", ex.Message);
        using var two = rand(2, 3, 64, 64);
        ex = Assert.Throws<PagSharpException>(() => Run(two));
        Assert.Contains("2 control images for 1 latents", ex.Message);
    }
}
