using System.Diagnostics;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Sampling;

/// <summary>The diffusion settings a model was trained with.</summary>
public sealed record DiffusionSpec(string NoiseSchedule, int DiffusionSteps, VarianceType Variance);

/// <summary>The one-call sampling API.</summary>
public static class Sampler
{
    /// <summary>
    /// Generates the samples with the given indices (their seeds are <c>options.Seed + index</c>) and returns them as
    /// float32 [N,C,H,W] in model space (≈ [−1, 1]). Runs in batches of <c>options.BatchSize</c>.
    /// </summary>
    /// <param name="model">The network.</param>
    /// <param name="spec">Its diffusion process.</param>
    /// <param name="options">Sampler, steps, guidance, labels, seed.</param>
    /// <param name="sampleShape">[C,H,W] of one sample.</param>
    /// <param name="indices">Which samples of the run to produce.</param>
    /// <param name="initNoise">Optional x_T for these samples ([N,C,H,W]); otherwise drawn from each sample's seed.</param>
    /// <param name="progress">Step progress.</param>
    /// <param name="cancellation">Stops between steps.</param>
    public static Tensor Sample(IDiffusionModel model, DiffusionSpec spec, SamplingOptions options, long[] sampleShape,
                                IReadOnlyList<long> indices, Tensor? initNoise = null,
                                IProgress<SamplingProgress>? progress = null, CancellationToken cancellation = default)
    {
        options.Validate();
        var diffusion = GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, options.ResolvedRespacing(spec.DiffusionSteps), spec.Variance);
        if (initNoise is not null && (initNoise.shape[0] != indices.Count || !initNoise.shape[1..].SequenceEqual(sampleShape)))
            throw new PagSharpException($"initial noise has shape [{string.Join(",", initNoise.shape)}]; expected [{indices.Count},{string.Join(",", sampleShape)}]");
        if (options.Labels is { } ls && model.NumClasses is int nc)
            foreach (var l in ls)
                if (l < 0 || l >= nc) throw new PagSharpException($"label {l} is out of range; valid labels are 0..{nc - 1}" + (model.NullClass is int nul ? $" ({nul} = no class)" : ""));
        if (options.Labels is not null && !model.IsClassConditional)
            throw new PagSharpException("this model is unconditional: it takes no labels");
        if (model.IsClassConditional && options.Labels is null && model.NullClass is null)
            throw new PagSharpException($"this model is class-conditional without a null class: give labels 0..{model.NumClasses - 1}");

        if (options.Guidance.UsesSag)
        {
            using var probeLabels = model.IsClassConditional ? zeros(1, dtype: ScalarType.Int64) : null;
            CreateDenoiser(model, spec, options, probeLabels, null, sampleShape); // fail before any sampling
        }

        // Inference mode: no autograd bookkeeping at all (cheaper than no_grad). The concatenation (or copy) below
        // runs outside it, so the caller gets an ordinary tensor (in-place ops on it stay allowed); cat of a single
        // tensor would hand back an inference tensor, hence the clone.
        var results = new List<Tensor>();
        using (inference_mode())
        {
            int batches = (indices.Count + options.BatchSize - 1) / options.BatchSize;
            for (int bi = 0; bi < batches; bi++)
            {
                var batch = indices.Skip(bi * options.BatchSize).Take(options.BatchSize).ToArray();
                using var scope = NewDisposeScope();
                using var noise = new NoiseSource(batch.Select(options.SampleSeed));
                var xT = initNoise is not null
                    ? initNoise.narrow(0, bi * options.BatchSize, batch.Length).to_type(ScalarType.Float32)
                    : noise.Randn(sampleShape);
                Tensor? labels = null;
                if (model.IsClassConditional)
                    labels = tensor(batch.Select(i => (long)(options.Labels is { } l ? l[(int)(i % l.Count)] : model.NullClass!.Value)).ToArray());
                using var policyGen = new Generator((ulong)options.SampleSeed(batch[0]) ^ 0x5bd1e995UL);
                var denoiser = CreateDenoiser(model, spec, options, labels, policyGen);
                var sw = Stopwatch.StartNew();
                void Report(StepInfo s) => progress?.Report(new SamplingProgress(s.Step, s.Total, bi, batches, s.Step / Math.Max(sw.Elapsed.TotalSeconds, 1e-9)));
                var x = options.Sampler == SamplerKind.Ddim
                    ? Samplers.Ddim(denoiser, xT, diffusion, options.Eta, options.ClipDenoised, noise, Report, cancellation)
                    : Samplers.Ddpm(denoiser, xT, diffusion, options.ClipDenoised, noise, Report, cancellation);
                results.Add(x.MoveToOuterDisposeScope());
            }
        }
        var all = results.Count == 1 ? results[0].clone() : cat(results.ToArray(), 0);
        foreach (var r in results) r.Dispose();
        return all;
    }

    /// <summary>
    /// The denoiser for <paramref name="options"/>' guidance: a <see cref="SagDenoiser"/> when SAG is on (on the
    /// model's original, non-respaced process, clipping x̂0 as the sampler does), otherwise a
    /// <see cref="GuidedDenoiser"/> (none / CFG / PAG / CFG+PAG with any perturbation policy). Constructing it
    /// validates the settings against the model; <paramref name="sampleShape"/> [C,H,W], when given, is checked too.
    /// </summary>
    public static IDenoiser CreateDenoiser(IDiffusionModel model, DiffusionSpec spec, SamplingOptions options, Tensor? labels,
                                           Generator? policyGenerator = null, long[]? sampleShape = null)
    {
        if (options.Guidance.UsesSag)
        {
            var original = GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, "", spec.Variance);
            var sag = new SagDenoiser(model, options.Guidance, labels, original, options.ClipDenoised);
            if (sampleShape is { Length: >= 2 }) sag.CheckImageSize(sampleShape[^2], sampleShape[^1]);
            return sag;
        }
        return new GuidedDenoiser(model, options.Guidance, labels, spec.DiffusionSteps, policyGenerator);
    }
}
