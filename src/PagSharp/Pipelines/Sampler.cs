using PagSharp.Sampling;
using System.Diagnostics;
using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Models.Adm;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>The diffusion settings a model was trained with.</summary>
public sealed record DiffusionSpec(string NoiseSchedule, int DiffusionSteps, VarianceType Variance)
{
    /// <summary>The process of a guided-diffusion config.</summary>
    public static DiffusionSpec Of(AdmConfig c) => new(c.NoiseSchedule, c.DiffusionSteps, c.LearnSigma ? VarianceType.LearnedRange : VarianceType.FixedSmall);
}

/// <summary>The one-call sampling API for guided-diffusion (ADM) models.</summary>
public static class Sampler
{
    /// <summary>
    /// Generates the samples with the given indices (their seeds are <c>options.Seed + index</c>) and returns them as
    /// float32 [N,C,H,W] in model space (≈ [−1, 1]). Runs in batches of <c>options.BatchSize</c>: per batch an
    /// <see cref="AdmDenoiser"/> with the batch's labels, the guidance engine, and the shared
    /// <see cref="SamplingLoop"/> over the chosen scheduler.
    /// </summary>
    /// <param name="net">The network.</param>
    /// <param name="options">Scheduler, steps, guidance, labels, seed.</param>
    /// <param name="indices">Which samples of the run to produce.</param>
    /// <param name="initNoise">Optional x_T for these samples ([N,C,H,W]); otherwise drawn from each sample's seed.</param>
    /// <param name="progress">Step progress.</param>
    /// <param name="cancellation">Stops between steps.</param>
    /// <param name="guide">The weaker model of autoguidance (same config), when <c>options.Guidance.AutoguidanceScale</c> is set.</param>
    public static Tensor Sample(AdmUNet net, SamplingOptions options, IReadOnlyList<long> indices, Tensor? initNoise = null,
                                IProgress<SamplingProgress>? progress = null, CancellationToken cancellation = default, AdmUNet? guide = null)
    {
        options.Validate();
        var cfg = net.Config;
        var spec = DiffusionSpec.Of(cfg);
        long[] sampleShape = [cfg.InChannels, cfg.ImageSize, cfg.ImageSize];
        if (initNoise is not null && (initNoise.shape[0] != indices.Count || !initNoise.shape[1..].SequenceEqual(sampleShape)))
            throw new PagSharpException($"initial noise has shape [{string.Join(",", initNoise.shape)}]; expected [{indices.Count},{string.Join(",", sampleShape)}]");
        Validate(net, options, guide);
        int forward = PlanMemory(net, options).ForwardBatch;
        if (forward < options.BatchSize) options = options with { BatchSize = forward };
        var diffusion = GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, options.ResolvedRespacing(spec.DiffusionSteps), spec.Variance);
        var device = net.parameters().First().device;

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
                using var noise = new NoiseSource(batch.Select(options.SampleSeed)) { Device = device };
                var xT = initNoise is not null
                    ? initNoise.narrow(0, bi * options.BatchSize, batch.Length).to_type(ScalarType.Float32).to(device)
                    : noise.Randn(sampleShape);
                Tensor? labels = null;
                if (net.IsClassConditional)
                    labels = tensor(batch.Select(i => (long)(options.Labels is { } l ? l[(int)(i % l.Count)] : cfg.NullClass!.Value)).ToArray(), device: device);
                using var policyGen = new Generator((ulong)options.SampleSeed(batch[0]) ^ 0x5bd1e995UL);
                var model = new AdmDenoiser(net, labels, batch.Length);
                var denoiser = CreateDenoiser(model, spec, options, policyGen, null, guide is null ? null : new AdmDenoiser(guide, labels, batch.Length));
                var scheduler = CreateScheduler(options, spec, diffusion);
                var sw = Stopwatch.StartNew();
                void Report(LoopStep s) => progress?.Report(new SamplingProgress(s.Index + 1, s.Count, bi, batches, (s.Index + 1) / Math.Max(sw.Elapsed.TotalSeconds, 1e-9)));
                try
                {
                    var x = SamplingLoop.Run(scheduler, denoiser, xT, noise, Report, cancellation);
                    // Samples are returned on the CPU, whatever device the network is on.
                    results.Add((x.device.type == TorchSharp.DeviceType.CPU ? x : x.cpu()).MoveToOuterDisposeScope());
                }
                finally
                {
                    (denoiser as IDisposable)?.Dispose();
                    (scheduler as IDisposable)?.Dispose();
                }
            }
        }
        var all = results.Count == 1 ? results[0].clone() : cat(results.ToArray(), 0);
        foreach (var r in results) r.Dispose();
        return all;
    }

    /// <summary>
    /// Throws a <see cref="PagSharpException"/> for every problem <see cref="Sample"/> would meet (labels, guidance
    /// against the model's layers and null class, scheduler, steps, SAG kernel against the image size) without
    /// sampling, and runs whose single sample would not fit in memory (<see cref="PlanMemory"/>): callers check a run
    /// before they write anything.
    /// </summary>
    public static void Validate(AdmUNet net, SamplingOptions options, AdmUNet? guide = null)
    {
        if (options.Guidance.UsesAutoguidance && guide is null)
            throw new PagSharpException("autoguidance (AutoguidanceScale) needs a guide model: a weaker version of the same model");
        if (guide is not null && guide.Config.WithoutRecommendations() != net.Config.WithoutRecommendations())
            throw new PagSharpException("the guide model of autoguidance must have the same config as the model");
        options.Validate();
        var cfg = net.Config;
        CheckLabels(net, options.Labels);
        var spec = DiffusionSpec.Of(cfg);
        (CreateScheduler(options, spec) as IDisposable)?.Dispose();
        using var probe = new AdmDenoiserProbe(net);
        (CreateDenoiser(probe.Model, spec, options, null, [cfg.InChannels, cfg.ImageSize, cfg.ImageSize], guide is null ? null : probe.Model) as IDisposable)?.Dispose();
        PlanMemory(net, options);
    }

    /// <summary>Multiplier on the activation estimate for allocator slack and per-step temporaries (measured peaks run up to ~1.5× the live tensors).</summary>
    public const double MemorySlack = 1.5;

    /// <summary>
    /// The forward batch a run can afford: <c>options.BatchSize</c> when its estimated activations
    /// (<see cref="AdmMemory.ActivationBytes"/> for all the step's branches, × <see cref="MemorySlack"/>) fit the
    /// budget (<see cref="SamplingOptions.MemoryLimitBytes"/>, else the machine's available memory), otherwise the
    /// largest batch that fits. Throws, with the estimate and the budget, when not even one sample fits.
    /// </summary>
    public static (int ForwardBatch, double EstimateBytes, double? BudgetBytes) PlanMemory(AdmUNet net, SamplingOptions options)
    {
        var g = options.Guidance;
        int branches = 1 + (g.UsesCfg ? 1 : 0) + (g.UsesPag || g.UsesSag ? 1 : 0);
        bool maps = g.UsesSag || (g.UsesPag && g.Perturbation is not Attention.IdentityPerturbation) || !net.FusedAttention;
        double perSample = MemorySlack * AdmMemory.ActivationBytes(net.Config, branches, maps);
        double? budget = options.MemoryLimitBytes ?? Runtime.MemoryBudget.AvailableBytes();
        if (budget is not { } b) return (options.BatchSize, perSample * options.BatchSize, null);
        if (perSample > b)
            throw new PagSharpException($"this run needs about {Runtime.MemoryBudget.Format(perSample)} of activations for a single sample " +
                $"({branches} branch{(branches > 1 ? "es" : "")}, image_size {net.Config.ImageSize}), but only {Runtime.MemoryBudget.Format(b)} is available; " +
                "use a smaller image size or fewer guidance branches");
        int fit = (int)Math.Max(1, Math.Min(options.BatchSize, Math.Floor(b / perSample)));
        return (fit, perSample * options.BatchSize, b);
    }

    /// <summary>Number of sampling steps the options give for this model (respaced steps for ddpm/ddim).</summary>
    public static int StepCount(SamplingOptions options, AdmConfig cfg) =>
        options.UsesRespacing ? Respacing.SpaceTimesteps(cfg.DiffusionSteps, options.ResolvedRespacing(cfg.DiffusionSteps)).Length : options.Steps;

    /// <summary>The scheduler of <paramref name="options"/> for a model with process <paramref name="spec"/>.</summary>
    public static IScheduler CreateScheduler(SamplingOptions options, DiffusionSpec spec, GaussianDiffusion? respaced = null)
    {
        respaced ??= GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, options.ResolvedRespacing(spec.DiffusionSteps), spec.Variance);
        return Schedulers.ForGaussianDiffusion(options.Scheduler, respaced, spec.NoiseSchedule, options.Steps, options.Eta, options.ClipDenoised, options.KarrasSigmas);
    }

    /// <summary>Throws when <paramref name="labels"/> do not fit <paramref name="net"/>.</summary>
    public static void CheckLabels(AdmUNet net, IReadOnlyList<int>? labels)
    {
        var cfg = net.Config;
        if (labels is not null && !net.IsClassConditional)
            throw new PagSharpException("this model is unconditional: it takes no labels");
        if (labels is not null && cfg.ResolvedNumClasses is int nc)
            foreach (var l in labels)
                if (l < 0 || l >= nc) throw new PagSharpException($"label {l} is out of range; valid labels are 0..{nc - 1}" + (cfg.NullClass is int nul ? $" ({nul} = no class)" : ""));
        if (net.IsClassConditional && labels is null && cfg.NullClass is null)
            throw new PagSharpException($"this model is class-conditional without a null class: give labels 0..{cfg.ResolvedNumClasses - 1}");
    }

    /// <summary>
    /// The guided denoiser for <paramref name="options"/>' guidance: a <see cref="SagDenoiser"/> when SAG is on (on the
    /// model's original, non-respaced process, clipping x̂0 as the sampler does), otherwise the
    /// <see cref="GuidedDenoiser"/> (none / CFG / PAG / CFG+PAG with any perturbation policy). Constructing it
    /// validates the settings against the model; <paramref name="sampleShape"/> [C,H,W], when given, is checked too.
    /// </summary>
    public static IGuidedDenoiser CreateDenoiser(IDenoiserModel model, DiffusionSpec spec, SamplingOptions options,
                                                 Generator? policyGenerator = null, long[]? sampleShape = null, IDenoiserModel? guide = null)
    {
        if (options.Guidance.UsesSag)
        {
            var original = GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, "", spec.Variance);
            var sag = new SagDenoiser(model, options.Guidance, original, options.ClipDenoised);
            if (sampleShape is { Length: >= 2 }) sag.CheckImageSize(sampleShape[^2], sampleShape[^1]);
            return sag;
        }
        return new GuidedDenoiser(model, options.Guidance, spec.DiffusionSteps, policyGenerator, guide);
    }

    /// <summary>An adapter of the network with one sample's labels (the null class, or 0), for validation only.</summary>
    private sealed class AdmDenoiserProbe : IDisposable
    {
        private readonly Tensor? _labels;
        public AdmDenoiserProbe(AdmUNet net)
        {
            _labels = net.IsClassConditional ? full(1, (long)(net.Config.NullClass ?? 0), dtype: ScalarType.Int64) : null;
            Model = new AdmDenoiser(net, _labels, 1);
        }
        public AdmDenoiser Model { get; }
        public void Dispose() => _labels?.Dispose();
    }
}
