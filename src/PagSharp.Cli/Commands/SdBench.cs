using PagSharp.Guidance;
using PagSharp.Pipelines;
using System.Diagnostics;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Sampling;
using static TorchSharp.torch;

namespace PagSharp.Cli.Commands;

/// <summary>
/// The Stable Diffusion part of <c>pag bench</c>: an SD 1.5 UNet (the runwayml/stable-diffusion-v1-5 unet config:
/// diffusers' UNet2DConditionModel defaults with cross_attention_dim 768; random weights) on 64×64 latents (512×512 images) with 77 text tokens, driven by the SD pipeline's denoising loop
/// with DDIM; and the SDXL base UNet (stabilityai/stable-diffusion-xl-base-1.0's unet config, 2.57 B parameters, random
/// weights) on 128×128 latents (1024×1024 images) with its added conditioning. "mid" is diffusers' <c>mid</c>: every
/// self-attention of the mid block (1 for SD 1.5, 10 for SDXL). Text encoders and VAE run once per image and are not timed.
/// </summary>
internal static class SdBench
{
    public const string Model = "sd-1.5";
    public const string XlModel = "sdxl";

    public static readonly string[] Methods = { "none", "pag-mid", "cfg", "cfg+pag-mid", "naive-cfg+pag-mid", "cfg+pag-mid+cache2" };

    /// <summary>The SDXL rows (timed only with <c>pag bench --sdxl</c>: about a minute per UNet pass on two cores).</summary>
    public static readonly string[] XlMethods = { "none", "pag-mid", "cfg", "cfg+pag-mid", "naive-cfg+pag-mid" };

    /// <summary>Guidance branches as separate UNet calls (GuidanceSettings.SplitBatch): the methods' names with this prefix.</summary>
    public const string SplitPrefix = "split-";

    public static SdUNet CreateUNet() => new(new SdUNetConfig { SampleSize = 64, CrossAttentionDim = new[] { 768, 768, 768, 768 } });

    /// <summary>stabilityai/stable-diffusion-xl-base-1.0's unet/config.json.</summary>
    public static SdUNetConfig XlConfig => new()
    {
        SampleSize = 128, BlockOutChannels = new[] { 320, 640, 1280 }, LayersPerBlock = new[] { 2, 2, 2 },
        DownBlockTypes = new[] { "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D" },
        UpBlockTypes = new[] { "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D" },
        AttentionHeads = new[] { 5, 10, 20 }, TransformerLayersPerBlock = new[] { 1, 2, 10 }, CrossAttentionDim = new[] { 2048, 2048, 2048 },
        UseLinearProjection = true, AdditionEmbedType = "text_time", AdditionTimeEmbedDim = 256, ProjectionClassEmbeddingsInputDim = 2816,
    };

    /// <summary>
    /// The UNet of a benchmark model; with <paramref name="structureOnly"/> its parameters live on the meta device
    /// (shapes without storage: enough for <see cref="SdCost"/>, and instant even for SDXL's 10 GB of float32 weights).
    /// </summary>
    public static SdUNet Create(string model, bool structureOnly = false, ScalarType dtype = ScalarType.Float32)
    {
        if (!structureOnly) return SdLoader.Create(() => model == XlModel ? new SdUNet(XlConfig) : CreateUNet(), dtype);
        set_default_device(new Device("meta"));
        try { return model == XlModel ? new SdUNet(XlConfig) : CreateUNet(); }
        finally { set_default_device(CPU); }
    }

    private static (bool Cfg, string[]? Pag, bool Shared) Branches(SdUNet unet, string method)
    {
        var mid = unet.AttentionLayers.Where(l => l.Group == "middle").Select(l => l.Name).ToArray();
        return method switch
        {
            "none" => (false, null, true),
            "pag-mid" => (false, mid, true),
            "cfg" => (true, null, true),
            "cfg+pag-mid" => (true, mid, true),
            "naive-cfg+pag-mid" => (true, mid, false),
            _ => throw new PagSharpException($"unknown Stable Diffusion benchmark method {method}; valid: {string.Join(", ", Methods)}"),
        };
    }

    /// <summary>Multiply-adds of one UNet step (<see cref="SdCost"/>); a <c>+cache2</c> step is the mean of a step with and one without the perturbed branch.</summary>
    public static double StepMacs(SdUNet unet, BenchCommand.Case c, string method, bool cache)
    {
        var (cfg, pag, shared) = Branches(unet, method);
        double macs = SdCost.Forward(unet, MacCall.GuidedStep(c.Batch, cfg, pag, shared));
        return cache ? (macs + SdCost.Forward(unet, MacCall.GuidedStep(c.Batch, cfg, null))) / 2 : macs;
    }

    /// <summary>Seconds per step of each timed run (after one warm-up run).</summary>
    public static List<double> Time(BenchCommand.Case c, string method, bool cache, int runs)
    {
        bool xl = c.Model == XlModel;
        using var unet = Create(c.Model, dtype: PagSharp.Runtime.ComputeType.Parse(c.Dtype));
        unet.eval();
        bool split = method.StartsWith(SplitPrefix, StringComparison.Ordinal);
        if (split) method = method[SplitPrefix.Length..];
        var (cfg, pag, shared) = Branches(unet, method);
        var guidance = new GuidanceSettings
        {
            SplitBatch = split,
            GuidanceScale = cfg ? 7.5 : 1, PagScale = pag is null ? null : new ScaleSchedule.Constant(3), PagLayers = pag ?? Array.Empty<string>(),
            SharedPrefix = shared, PagCacheInterval = cache ? 2 : 1,
        };
        using var gen = new Generator(0);
        long side = xl ? 128 : 64, width = xl ? 2048 : 768;
        using var noise = randn(new long[] { c.Batch, 4, side, side }, generator: gen);
        using var prompt = randn(new long[] { c.Batch, 77, width }, generator: gen);
        using var negative = randn(new long[] { c.Batch, 77, width }, generator: gen);
        using var pooled = randn(new long[] { c.Batch, 1280 }, generator: gen);
        using var ids = tensor(new float[] { 1024, 1024, 0, 0, 1024, 1024 }).unsqueeze(0);
        var added = xl ? new Denoisers.SdXlConditioning(pooled, pooled, ids, ids) : null;
        var times = new List<double>();
        using var _ = inference_mode();
        for (int r = 0; r <= runs; r++)
        {
            var scheduler = Schedulers.Create("ddim", new SchedulerConfig(), c.Steps);
            var sw = Stopwatch.StartNew();
            StableDiffusionPipeline.Denoise(unet, scheduler, noise, prompt, cfg ? negative : null, guidance, xl: added).Dispose();
            if (r > 0) times.Add(sw.Elapsed.TotalSeconds / c.Steps);
        }
        return times;
    }
}
