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
/// with DDIM. Text encoder and VAE run once per image and are not timed.
/// </summary>
internal static class SdBench
{
    public const string Model = "sd-1.5";

    public static readonly string[] Methods = { "none", "pag-mid", "cfg", "cfg+pag-mid", "naive-cfg+pag-mid", "cfg+pag-mid+cache2" };

    private static readonly string[] Mid = { "mid_block.attentions.0.transformer_blocks.0.attn1" };

    public static SdUNet CreateUNet() => new(new SdUNetConfig { SampleSize = 64, CrossAttentionDim = new[] { 768, 768, 768, 768 } });

    private static (bool Cfg, string[]? Pag, bool Shared) Branches(string method) => method switch
    {
        "none" => (false, null, true),
        "pag-mid" => (false, Mid, true),
        "cfg" => (true, null, true),
        "cfg+pag-mid" => (true, Mid, true),
        "naive-cfg+pag-mid" => (true, Mid, false),
        _ => throw new PagSharpException($"unknown Stable Diffusion benchmark method {method}; valid: {string.Join(", ", Methods)}"),
    };

    /// <summary>Multiply-adds of one UNet step (<see cref="SdCost"/>); a <c>+cache2</c> step is the mean of a step with and one without the perturbed branch.</summary>
    public static double StepMacs(SdUNet unet, BenchCommand.Case c, string method, bool cache)
    {
        var (cfg, pag, shared) = Branches(method);
        double macs = SdCost.Forward(unet, MacCall.GuidedStep(c.Batch, cfg, pag, shared));
        return cache ? (macs + SdCost.Forward(unet, MacCall.GuidedStep(c.Batch, cfg, null))) / 2 : macs;
    }

    /// <summary>Seconds per step of each timed run (after one warm-up run).</summary>
    public static List<double> Time(BenchCommand.Case c, string method, bool cache, int runs)
    {
        using var unet = CreateUNet();
        unet.eval();
        var (cfg, pag, shared) = Branches(method);
        var guidance = new GuidanceSettings
        {
            GuidanceScale = cfg ? 7.5 : 1, PagScale = pag is null ? null : new ScaleSchedule.Constant(3), PagLayers = pag ?? Array.Empty<string>(),
            SharedPrefix = shared, PagCacheInterval = cache ? 2 : 1,
        };
        using var gen = new Generator(0);
        using var noise = randn(new long[] { c.Batch, 4, 64, 64 }, generator: gen);
        using var prompt = randn(new long[] { c.Batch, 77, 768 }, generator: gen);
        using var negative = randn(new long[] { c.Batch, 77, 768 }, generator: gen);
        var times = new List<double>();
        using var _ = inference_mode();
        for (int r = 0; r <= runs; r++)
        {
            var scheduler = Schedulers.Create("ddim", new SchedulerConfig(), c.Steps);
            var sw = Stopwatch.StartNew();
            StableDiffusionPipeline.Denoise(unet, scheduler, noise, prompt, cfg ? negative : null, guidance).Dispose();
            if (r > 0) times.Add(sw.Elapsed.TotalSeconds / c.Steps);
        }
        return times;
    }
}
