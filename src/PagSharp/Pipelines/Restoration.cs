using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Inverse;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>
/// The one-call inverse-problem run: Diffusion Posterior Sampling (<see cref="Dps"/>) with any guidance on a
/// guided-diffusion model. Restoration i of input n = i / <c>countPerInput</c> starts from the noise of seed
/// <c>options.Seed + i</c>; labels cycle over restorations as in sampling (the null class when none are given).
/// </summary>
public static class Restoration
{
    /// <param name="net">The network.</param>
    /// <param name="op">The measurement operator A.</param>
    /// <param name="y">Measurements [N, …] (one per input).</param>
    /// <param name="options">Guidance, steps (ancestral DDPM: <c>Scheduler</c> must be ddpm), labels, seed.</param>
    /// <param name="dps">ζ, gradient source, clipping.</param>
    /// <param name="countPerInput">Restorations per input.</param>
    /// <param name="onStep">Called after every step.</param>
    /// <param name="cancellation">Checked between steps.</param>
    /// <returns>[N·countPerInput, C, H, W] in model space.</returns>
    public static Tensor Run(AdmUNet net, IMeasurementOperator op, Tensor y, SamplingOptions options, DpsOptions dps, int countPerInput = 1,
                             Action<LoopStep>? onStep = null, CancellationToken cancellation = default)
    {
        if (options.Scheduler != "ddpm")
            throw new PagSharpException($"DPS runs on the ancestral DDPM chain: Scheduler must be ddpm (got {options.Scheduler})");
        if (options.Guidance.PagCacheInterval != 1)
            throw new PagSharpException($"PagCacheInterval {options.Guidance.PagCacheInterval} is not valid for DPS: it differentiates the guided prediction at every step, so the perturbed branch runs at every step (use 1)");
        if (countPerInput < 1) throw new PagSharpException($"countPerInput must be ≥ 1 (got {countPerInput})");
        Sampler.Validate(net, options);
        var cfg = net.Config;
        long inputs = y.shape[0], n = inputs * countPerInput;
        using var labels = !net.IsClassConditional ? null
            : tensor(Enumerable.Range(0, (int)n).Select(i => (long)(options.Labels is { } l ? l[i % l.Count] : cfg.NullClass ?? 0)).ToArray());
        var model = new AdmDenoiser(net, labels, n);
        var spec = DiffusionSpec.Of(cfg);
        var denoiser = Sampler.CreateDenoiser(model, spec, options);
        try
        {
            var diffusion = GaussianDiffusion.Create(cfg.NoiseSchedule, cfg.DiffusionSteps, options.ResolvedRespacing(cfg.DiffusionSteps), spec.Variance);
            using var yAll = y.repeat_interleave(countPerInput, 0);
            using var noise = new NoiseSource(Enumerable.Range(0, (int)n).Select(i => options.SampleSeed(i)));
            using var xT = noise.Randn(cfg.InChannels, cfg.ImageSize, cfg.ImageSize);
            return Dps.Sample(model, denoiser, diffusion, op, yAll, xT, noise, dps, onStep, cancellation);
        }
        finally { (denoiser as IDisposable)?.Dispose(); }
    }
}
