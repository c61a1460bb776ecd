using PagSharp.Guidance;
using PagSharp.Pipelines;
using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary><c>pag txt2img</c>, <c>pag forward --model</c> and <c>pag layers --model</c> on a complete tiny diffusers folder.</summary>
[Collection(CliCollection.Name)]
public sealed class Txt2ImgCliTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    private static string Sampling => SdFixtures.Unet("sampling.safetensors");
    private static string Cases => SdFixtures.Unet("cases.safetensors");

    public void Dispose() => _sd.Dispose();

    [Theory]
    [InlineData("final_cfg5_pag3_mid", "5", "3", "mid")]
    [InlineData("final_cfg5_pag3_down_blocks_1", "5", "3", "down_blocks.1")]
    [InlineData("final_pag3_mid", "1", "3", "mid")]
    [InlineData("final_none", "1", "0", "mid")]
    public void Txt2Img_WithGivenEmbeddings_ReproducesDiffusers(string key, string g, string s, string layers)
    {
        string outDir = _sd.Dir.File("out_" + key), tensor = _sd.Dir.File(key + ".npy");
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds",
            "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds", "--init-noise", Sampling + ":latents_T",
            "--guidance-scale", g, "--pag-scale", s, "--pag-layers", layers, "--steps", "5", "--scheduler", "ddim",
            "--output-type", "latent", "--save-tensor", tensor, "--output", outDir);
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(tensor);
        using var expected = SafeTensors.LoadTensor(Sampling, key);
        SdFixtures.AssertRelative(expected, actual, 1e-4, "pag txt2img " + key);
        Assert.True(File.Exists(Path.Combine(outDir, "run.json")));
    }

    [Theory]
    [InlineData("mid", "out_pag_mid")]
    [InlineData("down_blocks.1", "out_pag_down_blocks_1")]
    [InlineData("down,mid,up", "out_pag_all")]
    [InlineData(null, "out_none")]
    public void Forward_WithModelFolder_ReproducesDiffusers(string? perturb, string key)
    {
        string output = _sd.Dir.File(key + ".npy");
        var args = new List<string> { "forward", "--model", _sd.Root, "--input", Cases + ":x", "--timesteps", "500",
            "--encoder-hidden-states", Cases + ":encoder_hidden_states", "--output", output };
        if (perturb is not null) args.AddRange(new[] { "--perturb", perturb });
        var (exit, log) = Pag.Run(args.ToArray());
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(output);
        using var expected = SafeTensors.LoadTensor(Cases, key);
        Close.Assert(expected, actual, 1e-4, "pag forward --model " + key);
    }

    [Fact]
    public void Layers_ListsTheSelfAttentionLayers()
    {
        var (exit, log) = Pag.Run("layers", "--model", _sd.Root);
        Assert.True(exit == 0, log);
        Assert.Contains("mid_block.attentions.0.transformer_blocks.0.attn1", log);
        Assert.Contains("up_blocks.0.attentions.2.transformer_blocks.0.attn1", log);
        Assert.Contains("6 self-attention layers", log);
        Assert.DoesNotContain("attn2", log);
        // Each row ends with the layer's PAG cost (multiply-adds ÷ an unguided step) and the same with CFG.
        using var unet = new PagSharp.Models.Sd.SdUNet(PagSharp.Models.Sd.DiffusersFolder.Open(_sd.Root).UnetConfig());
        double none = PagSharp.Models.Sd.SdCost.Forward(unet, new PagSharp.Models.MacCall(1));
        static string F(double v) => v.ToString("F2", System.Globalization.CultureInfo.InvariantCulture);
        foreach (var l in unet.AttentionLayers)
        {
            string pag = F(PagSharp.Models.Sd.SdCost.Forward(unet, PagSharp.Models.MacCall.GuidedStep(1, false, new[] { l.Name })) / none);
            string cfg = F(PagSharp.Models.Sd.SdCost.Forward(unet, PagSharp.Models.MacCall.GuidedStep(1, true, new[] { l.Name })) / (2 * none));
            Assert.Contains(log.Split('\n'), line => line.Contains(l.Name + " ", StringComparison.Ordinal) && line.Contains($" {pag} ", StringComparison.Ordinal)
                                                         && line.Contains($" {cfg} ", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void Txt2Img_Prompt_EndToEnd_PngsGridRunJsonAndResume()
    {
        string outDir = _sd.Dir.File("e2e"), tensor = _sd.Dir.File("images.npy");
        string[] Args(string steps) => new[] { "txt2img", "--model", _sd.Root, "--prompt", "A cat and a dog", "--negative-prompt", "hello",
            "--guidance-scale", "7.5", "--pag-scale", "3", "--pag-layers", "mid", "--steps", steps, "--width", "64", "--height", "64",
            "--count", "3", "--batch-size", "2", "--seed", "42", "--output", outDir, "--save-tensor", tensor };
        var (exit, log) = Pag.Run(Args("3"));
        Assert.True(exit == 0, log);
        Assert.Contains("3 images written", log);
        foreach (var f in new[] { "00000.png", "00001.png", "00002.png", "grid.png", "run.json" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        using (var img = Png.Load(Path.Combine(outDir, "00000.png")))
            Assert.Equal(new long[] { 3, 64, 64 }, img.shape);
        using (var t = Npy.Load(tensor))
        {
            Assert.Equal(new long[] { 3, 3, 64, 64 }, t.shape);
            Assert.True(t.min().item<float>() >= 0 && t.max().item<float>() <= 1);
            // Different seeds give different images.
            Close.AssertDiffer(t[0], t[1], 1e-3, "images of seeds 42 and 43");
        }
        var run = File.ReadAllText(Path.Combine(outDir, "run.json"));
        Assert.Contains("\"pag_layers\"", run);
        Assert.Contains("mid_block.attentions.0.transformer_blocks.0.attn1", run);
        Assert.Contains("\"seed\": 44", run);
        // Resume: nothing left to do.
        (exit, log) = Pag.Run(Args("3"));
        Assert.True(exit == 0, log);
        Assert.Contains("0 images written, 3 already present", log);
        var before = FolderSnapshot.Of(outDir);
        // A different run into the same folder is refused and lists the difference.
        (exit, log) = Pag.Run(Args("4"));
        Assert.True(exit == 2, log);
        Assert.Contains("num_inference_steps", log);
        before.AssertUnchanged(outDir, "refused run");
    }

    [Theory]
    [InlineData("euler")]
    [InlineData("euler-a")]
    [InlineData("dpmpp-2m")]
    [InlineData("ddim")]
    public void Txt2Img_EverySchedulerRuns_AndIsDeterministicPerSeed(string scheduler)
    {
        string Run(string name, string count)
        {
            string t = _sd.Dir.File($"{scheduler}_{name}.npy");
            var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello", "--steps", "4", "--scheduler", scheduler,
                "--count", count, "--seed", "7", "--output-type", "latent", "--save-tensor", t, "--output", _sd.Dir.File($"{scheduler}_{name}"));
            Assert.True(exit == 0, log);
            return t;
        }
        using var one = Npy.Load(Run("one", "1"));
        using var two = Npy.Load(Run("two", "2"));
        Assert.Equal(new long[] { 2, 4, 32, 32 }, two.shape);
        Assert.False(two.isnan().any().item<bool>());
        // Sample 0 depends only on its seed, not on the batch it ran in.
        SdFixtures.AssertRelative(one[0], two[0], 1e-5, scheduler + " sample 0 alone vs in a batch of 2 (batch-size dependent float rounding only)");
    }

    [Fact]
    public void Txt2Img_LongPrompt_IsTruncatedWithAWarning()
    {
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", string.Join(" ", Enumerable.Repeat("cat", 80)) + " dog",
            "--steps", "1", "--count", "1", "--output-type", "latent", "--output", _sd.Dir.File("long"));
        Assert.True(exit == 0, log);
        Assert.Contains("truncated", log);
        Assert.Contains("cat cat cat cat cat dog", log);
    }

    [Fact]
    public void Txt2Img_LatentOutput_UsesTheFolderVaeScaleFactor()
    {
        // The tiny VAE has two levels (factor 2), so 64×32 pixels are 32×16 latents, with or without decoding.
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "cat", "--steps", "1", "--count", "1", "--width", "32",
            "--height", "64", "--output-type", "latent", "--output", _sd.Dir.File("lat"));
        Assert.True(exit == 0, log);
        using var t = Npy.Load(Path.Combine(_sd.Dir.File("lat"), "latents.npy"));
        Assert.Equal(new long[] { 1, 4, 32, 16 }, t.shape);
    }

    [Fact]
    public void LibraryGenerate_EqualsTheCommand()
    {
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--negative-prompt", "dog", "--steps", "3",
            "--count", "2", "--seed", "11", "--scheduler", "euler-a", "--pag-layers", "up", "--output", _sd.Dir.File("cmd"), "--save-tensor", _sd.Dir.File("cmd.npy"));
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var g = new GuidanceSettings { GuidanceScale = 7.5, PagScale = SdFixtures.Pag(3), PagLayers = PagSharp.Attention.DiffusersLayerSpec.Resolve("up", sd.Unet.AttentionLayers) };
        using var images = sd.Generate("hello cat", new long[] { 11, 12 }, g, negativePrompt: "dog", scheduler: "euler-a", steps: 3);
        using var expected = Npy.Load(_sd.Dir.File("cmd.npy"));
        Close.Assert(expected, images, 1e-6, "Generate vs pag txt2img");
    }

    [Fact]
    public void IntervalAndRampFlags_ReachTheLibrary()
    {
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "4", "--count", "1", "--seed", "3",
            "--scheduler", "ddim", "--pag-interval", "700:200", "--pag-scale-end", "1", "--guidance-scale-end", "2", "--guidance-interval", "999:300",
            "--output", _sd.Dir.File("iv"), "--save-tensor", _sd.Dir.File("iv.npy"));
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var layers = PagSharp.Attention.DiffusersLayerSpec.Resolve("mid", sd.Unet.AttentionLayers);
        var g = new GuidanceSettings
        {
            GuidanceScale = 7.5, GuidanceSchedule = new ScaleSchedule.Linear(7.5, 2), GuidanceInterval = (999, 300),
            PagScale = new ScaleSchedule.Linear(3, 1), PagInterval = (700, 200), PagLayers = layers,
        };
        using var images = sd.Generate("hello cat", new long[] { 3 }, g, scheduler: "ddim", steps: 4);
        using var expected = Npy.Load(_sd.Dir.File("iv.npy"));
        Close.Assert(expected, images, 1e-6, "Generate vs pag txt2img with intervals and ramps");
        using var plain = sd.Generate("hello cat", new long[] { 3 }, g with { PagInterval = null, GuidanceInterval = null }, scheduler: "ddim", steps: 4);
        Close.AssertDiffer(plain, images, 1e-4, "the intervals changed nothing");
        var run = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_sd.Dir.File("iv"), "run.json")))!["settings"]!;
        Assert.Equal("linear", (string?)run["pag_schedule"]!["type"]);
        Assert.Equal(700, (int?)run["pag_interval"]![0]);
    }

    [Fact]
    public void SagScale_ReachesTheLibrary_InsteadOfPag()
    {
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "3", "--count", "1", "--seed", "5",
            "--scheduler", "ddim", "--sag-scale", "0.75", "--output", _sd.Dir.File("sag"), "--save-tensor", _sd.Dir.File("sag.npy"));
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var g = new GuidanceSettings { GuidanceScale = 7.5, Sag = new SagSettings { Scale = new ScaleSchedule.Constant(0.75), BlurSigma = 1, KernelSize = 9 } };
        using var images = sd.Generate("hello cat", new long[] { 5 }, g, scheduler: "ddim", steps: 3);
        using var expected = Npy.Load(_sd.Dir.File("sag.npy"));
        Close.Assert(expected, images, 1e-6, "Generate vs pag txt2img --sag-scale");
        var run = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_sd.Dir.File("sag"), "run.json")))!["settings"]!;
        Assert.Equal(0.0, (double?)run["pag_scale"]); // SAG instead of diffusers' default PAG scale 3
        Assert.NotNull(run["sag"]);
        var (bad, badLog) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "x", "--sag-scale", "0.75", "--pag-scale", "3", "--output", _sd.Dir.File("bad"));
        Assert.Equal(2, bad);
        Assert.Contains("alternatives", badLog);
    }

    [Theory]
    [InlineData("apg")]
    [InlineData("cfgzero")]
    public void ApgAndCfgZeroStar_ReachTheLibrary(string method)
    {
        string[] flags = method == "apg" ? ["--apg", "--apg-eta", "0", "--apg-momentum", "-0.5"] : ["--cfg-zero-star"];
        var (exit, log) = Pag.Run(new[] { "txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "3", "--count", "1", "--seed", "9",
            "--scheduler", "ddim", "--output", _sd.Dir.File(method), "--save-tensor", _sd.Dir.File(method + ".npy") }.Concat(flags).ToArray());
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var layers = PagSharp.Attention.DiffusersLayerSpec.Resolve("mid", sd.Unet.AttentionLayers);
        var g = new GuidanceSettings { GuidanceScale = 7.5, PagScale = new ScaleSchedule.Constant(3), PagLayers = layers };
        g = method == "apg" ? g with { Apg = new ApgSettings { Eta = 0, Momentum = -0.5 } } : g with { CfgZeroStar = true };
        using var images = sd.Generate("hello cat", new long[] { 9 }, g, scheduler: "ddim", steps: 3);
        using var expected = Npy.Load(_sd.Dir.File(method + ".npy"));
        Close.Assert(expected, images, 1e-6, $"Generate vs pag txt2img ({method})");
        using var plain = sd.Generate("hello cat", new long[] { 9 }, g with { Apg = null, CfgZeroStar = false }, scheduler: "ddim", steps: 3);
        Close.AssertDiffer(plain, images, 1e-4, $"{method} changed nothing");
    }

    [Fact]
    public void SegAndSlgBranches_ReachTheLibrary_NextToPag()
    {
        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "5", "--count", "1", "--seed", "4",
            "--scheduler", "ddim", "--seg-scale", "2", "--seg-blur-sigma", "inf", "--slg-scale", "1.5", "--slg-start", "0", "--slg-stop", "0.5",
            "--output", _sd.Dir.File("segslg"), "--save-tensor", _sd.Dir.File("segslg.npy"));
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var pagLayers = PagSharp.Attention.DiffusersLayerSpec.Resolve("mid", sd.Unet.AttentionLayers);
        var middle = pagLayers;
        var g = new GuidanceSettings
        {
            GuidanceScale = 7.5, PagScale = new ScaleSchedule.Constant(3), PagLayers = pagLayers,
            Perturbed = [PerturbedGuidance.Seg(2, double.PositiveInfinity, middle), PerturbedGuidance.Slg(1.5, middle, 0, 0.5)],
        };
        using var images = sd.Generate("hello cat", new long[] { 4 }, g, scheduler: "ddim", steps: 5);
        using var expected = Npy.Load(_sd.Dir.File("segslg.npy"));
        Close.Assert(expected, images, 1e-6, "Generate vs pag txt2img --seg-scale --slg-scale");
        // The same branches run one by one (split batch) give the same images.
        using var split = sd.Generate("hello cat", new long[] { 4 }, g with { SplitBatch = true }, scheduler: "ddim", steps: 5);
        Close.Assert(images, split, 1e-4, "one batch vs split branches");
        using var plain = sd.Generate("hello cat", new long[] { 4 }, g with { Perturbed = [] }, scheduler: "ddim", steps: 5);
        Close.AssertDiffer(plain, images, 1e-4, "SEG + SLG changed nothing");
        var run = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(_sd.Dir.File("segslg"), "run.json")))!["settings"]!;
        Assert.Equal("seg:inf", (string?)run["seg"]!["perturbation"]);
        Assert.Equal(0.5, (double?)run["slg"]!["steps"]![1]);
        // A --compare column seg:2+slg:1.5 (with the --seg-*/--slg-* options of the command line) equals the single run.
        (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "5", "--count", "1", "--seed", "4",
            "--scheduler", "ddim", "--seg-blur-sigma", "inf", "--slg-start", "0", "--slg-stop", "0.5", "--compare", "none,cfg:7.5+pag:3+seg:2+slg:1.5",
            "--output", _sd.Dir.File("segslg-cmp"), "--save-tensor", _sd.Dir.File("segslg-cmp.npy"));
        Assert.True(exit == 0, log);
        using var grid = Npy.Load(_sd.Dir.File("segslg-cmp.npy"));
        Close.Assert(images[0], grid[1], 1e-6, "compare column vs single run");
        var (bad, badLog) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "x", "--seg-layers", "middle", "--output", _sd.Dir.File("bad2"));
        Assert.Equal(2, bad);
        Assert.Contains("need --seg-scale", badLog);
    }

    [Fact]
    public void Autoguidance_WithAWeakerUNetFolder_ReachesTheLibrary()
    {
        // The guide: the same U-Net with its weights scaled by 0.9, as a U-Net folder (config.json and weights).
        using var guideDir = new TempDir();
        File.Copy(_sd.Path("unet/config.json"), Path.Combine(guideDir.Path, "config.json"));
        var weights = SafeTensors.Load(_sd.Path("unet/diffusion_pytorch_model.safetensors"));
        SafeTensors.Save(Path.Combine(guideDir.Path, "diffusion_pytorch_model.safetensors"), weights.ToDictionary(kv => kv.Key, kv => kv.Value * 0.9));

        var (exit, log) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "3", "--count", "1", "--seed", "8",
            "--scheduler", "ddim", "--guidance-model", guideDir.Path, "--autoguidance-scale", "2",
            "--output", _sd.Dir.File("auto"), "--save-tensor", _sd.Dir.File("auto.npy"));
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var layers = PagSharp.Attention.DiffusersLayerSpec.Resolve("mid", sd.Unet.AttentionLayers);
        var g = new GuidanceSettings { GuidanceScale = 7.5, PagScale = new ScaleSchedule.Constant(3), PagLayers = layers, AutoguidanceScale = new ScaleSchedule.Constant(2) };
        Assert.Contains("guide model", Assert.Throws<PagSharpException>(() => sd.Generate("hello cat", new long[] { 8 }, g, scheduler: "ddim", steps: 3)).Message);
        // The model as its own guide changes nothing: the guide gets the same conditioning.
        sd.LoadGuide(_sd.Root);
        using var self = sd.Generate("hello cat", new long[] { 8 }, g, scheduler: "ddim", steps: 3);
        using var none = sd.Generate("hello cat", new long[] { 8 }, g with { AutoguidanceScale = null }, scheduler: "ddim", steps: 3);
        Close.Assert(none, self, 1e-5, "guide = model");
        sd.LoadGuide(guideDir.Path);
        using var images = sd.Generate("hello cat", new long[] { 8 }, g, scheduler: "ddim", steps: 3);
        using var expected = Npy.Load(_sd.Dir.File("auto.npy"));
        Close.Assert(expected, images, 1e-6, "Generate vs pag txt2img --guidance-model --autoguidance-scale");
        Close.AssertDiffer(none, images, 1e-4, "a weaker guide changed nothing");

        var (bad, badLog) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt", "x", "--autoguidance-scale", "2", "--output", _sd.Dir.File("bad3"));
        Assert.Equal(2, bad);
        Assert.Contains("needs --guidance-model", badLog);
    }

    [Fact]
    public void CompareColumns_ApgAndCfgZero_AreTheirOwnCombinations()
    {
        string[] common = ["txt2img", "--model", _sd.Root, "--prompt", "hello cat", "--steps", "3", "--count", "1", "--seed", "3", "--scheduler", "ddim", "--apg-eta", "0", "--apg-norm-threshold", "0.01"];
        var (exit, log) = Pag.Run([.. common, "--compare", "cfg:7.5,apg:7.5,cfgzero:7.5", "--output", _sd.Dir.File("cmp-apg"), "--save-tensor", _sd.Dir.File("cmp-apg.npy")]);
        Assert.True(exit == 0, log);
        (exit, log) = Pag.Run([.. common, "--pag-scale", "0", "--apg", "--output", _sd.Dir.File("one-apg"), "--save-tensor", _sd.Dir.File("one-apg.npy")]);
        Assert.True(exit == 0, log);
        using var grid = Npy.Load(_sd.Dir.File("cmp-apg.npy"));
        using var one = Npy.Load(_sd.Dir.File("one-apg.npy"));
        Close.Assert(one[0], grid[1], 1e-6, "apg:7.5 column vs txt2img --apg");
        Close.AssertDiffer(grid[0], grid[1], 1e-4, "apg column = plain CFG");
        Close.AssertDiffer(grid[0], grid[2], 1e-4, "cfgzero column = plain CFG");
    }

    [Fact]
    public void SplitBatch_GivesTheBatchedResult()
    {
        Tensor Run(string name, params string[] extra)
        {
            string t = _sd.Dir.File(name + ".npy");
            var (exit, log) = Pag.Run([.. new[] { "txt2img", "--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds",
                "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds", "--init-noise", Sampling + ":latents_T",
                "--guidance-scale", "5", "--pag-scale", "3", "--steps", "5", "--scheduler", "ddim", "--output-type", "latent",
                "--save-tensor", t, "--output", _sd.Dir.File("o_" + name) }, .. extra]);
            Assert.True(exit == 0, log);
            return Npy.Load(t);
        }
        using var batched = Run("batched");
        using var split = Run("split", "--split-batch");
        SdFixtures.AssertRelative(batched, split, 1e-5, "--split-batch");
        using var expected = SafeTensors.LoadTensor(Sampling, "final_cfg5_pag3_mid");
        SdFixtures.AssertRelative(expected, split, 1e-4, "--split-batch against diffusers");
    }
}
