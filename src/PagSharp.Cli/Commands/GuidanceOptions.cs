using Spectre.Console;
using PagSharp.Pipelines;
using System.ComponentModel;
using System.Globalization;
using PagSharp.Attention;
using PagSharp.Guidance;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary>Sampler and guidance options shared by <c>sample</c> and <c>compare</c> (diffusers names in kebab-case).</summary>
public class GuidanceOptionSettings : ModelSettings, IPerturbedBranchOptions
{
    [CommandOption("--scheduler|--sampler <NAME>")][Description("ddpm or ddim (guided-diffusion's samplers on the respaced process), or euler, euler-a, dpmpp-2m, unipc (diffusers' schedulers over the model's noise schedule). Default: the model's recommended sampler (sampling_defaults in its config; built-in model: ddpm, 100 steps), else ddim.")]
    public string? Sampler { get; init; }
    [CommandOption("--steps|--num-inference-steps <N>")][Description("Sampling steps (ddpm/ddim: respaced from the model's diffusion steps). Default: the model's recommended steps when --scheduler is not given (built-in model: 100), else 50.")]
    public int? Steps { get; init; }
    [CommandOption("--timestep-respacing <SPEC>")][Description("guided-diffusion respacing: ddimN, N, or \"10,10,10\" (overrides --steps).")]
    public string? TimestepRespacing { get; init; }
    [CommandOption("--karras-sigmas")][Description("Karras noise levels for euler, dpmpp-2m and unipc (\"DPM++ 2M Karras\").")]
    public bool KarrasSigmas { get; init; }
    [CommandOption("--eta <ETA>")][Description("DDIM eta (0 = deterministic).")]
    public double Eta { get; init; }
    [CommandOption("--no-clip")][Description("Do not clip the predicted x0 to [[-1, 1]].")]
    public bool NoClip { get; init; }
    [CommandOption("--guidance-scale <W>")][Description("Classifier-free guidance scale w (active when > 1; needs a model with a null class).")]
    public double GuidanceScale { get; init; } = 1;
    [CommandOption("--pag-scale <S>")][Description("PAG scale s, paper/diffusers convention: eps + s*(eps - eps_perturbed). 0 = off.")]
    public double? PagScale { get; init; }
    [CommandOption("--pag-scale-official <G>")][Description("PAG scale in the official ADM scripts' convention (--guide_scale g): eps_perturbed + g*(eps - eps_perturbed), i.e. s = g - 1.")]
    public double? PagScaleOfficial { get; init; }
    [CommandOption("--pag-adaptive-scale <A>")][Description("diffusers' adaptive PAG scale: s(t) = max(s - A*(1000 - t), 0).")]
    public double PagAdaptiveScale { get; init; }
    [CommandOption("--pag-scale-end <S>")][Description("Linear ramp of the PAG scale from --pag-scale at the first step to this value at the last.")]
    public double? PagScaleEnd { get; init; }
    [CommandOption("--pag-layers <SPEC>")][Description("Layers to perturb: names, groups input/middle/output/all, @RES filters, globs. Default: the model's recommended layers (guidance_defaults in its config), else middle.")]
    public string? PagLayers { get; init; }
    [CommandOption("--pag")][Description("PAG with the model's recommended scale and layers (guidance_defaults in its config); --pag-scale / --pag-layers override either.")]
    public bool Pag { get; init; }
    [CommandOption("--pag-interval <HI:LO>")][Description("Apply PAG only for model timesteps LO <= t <= HI, e.g. 999:500.")]
    public string? PagInterval { get; init; }
    [CommandOption("--pag-cache-interval <N>")][Description("Approximation for speed: run the perturbed branch at one PAG step in N and reuse its direction eps - eps_perturbed at the others (DeepCache-style). Default 1 = exact PAG at every step.")]
    public int PagCacheInterval { get; init; } = 1;
    [CommandOption("--perturbation <POLICY>")][Description("Attention perturbation for PAG: identity (PAG), mask:R, mask-nodiag:R, noise:S, noise-logits:S, blur:S, soft:L.")]
    public string Perturbation { get; init; } = "identity";
    [CommandOption("--guidance-scale-end <W>")][Description("Linear ramp of the CFG scale from --guidance-scale at the first step to this value at the last.")]
    public double? GuidanceScaleEnd { get; init; }
    [CommandOption("--guidance-interval <HI:LO>")][Description("Apply CFG only for model timesteps LO <= t <= HI, e.g. 999:500.")]
    public string? GuidanceInterval { get; init; }
    [CommandOption("--method <NAME>")][Description("Attention-based guidance: pag (default; --pag-* options) or sag (Self-Attention Guidance; --sag-* options). Either combines with CFG.")]
    public string Method { get; init; } = "pag";
    [CommandOption("--sag-scale <S>")][Description("SAG scale s, paper/diffusers convention: eps + s*(eps - eps_degraded). Needs --method sag.")]
    public double? SagScale { get; init; }
    [CommandOption("--sag-scale-official <G>")][Description("SAG scale in the official ADM scripts' convention (--guide_scale g): eps_degraded + g*(eps - eps_degraded), i.e. s = g - 1.")]
    public double? SagScaleOfficial { get; init; }
    [CommandOption("--sag-scale-end <S>")][Description("Linear ramp of the SAG scale from --sag-scale at the first step to this value at the last.")]
    public double? SagScaleEnd { get; init; }
    [CommandOption("--sag-interval <HI:LO>")][Description("Apply SAG only for model timesteps LO <= t <= HI.")]
    public string? SagInterval { get; init; }
    [CommandOption("--sag-layer <NAME>")][Description("Attention layer whose map gives SAG's mask (one layer). Default: output_blocks.2.1 if at the lowest resolution (official ADM), else the first output layer there.")]
    public string? SagLayer { get; init; }
    [CommandOption("--sag-blur-sigma <SIGMA>")][Description("Sigma of SAG's Gaussian blur of the predicted x0, in pixels. Default 9 (official ADM).")]
    public double? SagBlurSigma { get; init; }
    [CommandOption("--sag-kernel <K>")][Description("Odd kernel size of SAG's Gaussian blur. Default 31 (official ADM); must be < 2 x image size.")]
    public int? SagKernel { get; init; }
    [CommandOption("--guidance-start <F>")][Description("Apply CFG from this fraction of the steps on (diffusers' guider start; default 0).")]
    public double? GuidanceStart { get; init; }
    [CommandOption("--guidance-stop <F>")][Description("Apply CFG until this fraction of the steps (diffusers' guider stop; default 1).")]
    public double? GuidanceStop { get; init; }
    [CommandOption("--pag-start <F>")][Description("Apply PAG from this fraction of the steps on (default 0).")]
    public double? PagStart { get; init; }
    [CommandOption("--pag-stop <F>")][Description("Apply PAG until this fraction of the steps (default 1).")]
    public double? PagStop { get; init; }

    /// <summary>A [start, stop) step window from the two options, or null when neither is given.</summary>
    internal static (double Start, double Stop)? StepWindow(double? start, double? stop) =>
        start is null && stop is null ? null : (start ?? 0, stop ?? 1);
    [CommandOption("--autoguidance-start <F>")][Description("Apply autoguidance from this fraction of the steps on (default 0).")]
    public double? AutoguidanceStart { get; init; }
    [CommandOption("--autoguidance-stop <F>")][Description("Apply autoguidance until this fraction of the steps (default 1).")]
    public double? AutoguidanceStop { get; init; }
    [CommandOption("--guidance-model <CHECKPOINT>")][Description("Autoguidance: the weaker version of the same model (same config; e.g. an early EMA snapshot) to guide with.")]
    public string? GuidanceModel { get; init; }
    [CommandOption("--autoguidance-scale <S>")][Description("Autoguidance scale s (Karras et al. 2024): eps + s*(eps - eps_guide); needs --guidance-model. Combines with CFG and PAG.")]
    public double? AutoguidanceScale { get; init; }
    [CommandOption("--seg-scale <S>")][Description("Smoothed Energy Guidance (Hong 2024) as its own branch: eps + s*(eps - eps_seg), queries blurred at --seg-layers. Combines with CFG and PAG.")]
    public double? SegScale { get; init; }
    [CommandOption("--seg-blur-sigma <SIGMA>")][Description("SEG: Gaussian blur sigma of the queries in latent/pixel cells; 'inf' = the mean query (default 10, the paper's SDXL setting).")]
    public string? SegBlurSigma { get; init; }
    [CommandOption("--seg-layers <SPEC>")][Description("SEG: layers whose queries are blurred (same syntax as --pag-layers; default: the middle block).")]
    public string? SegLayers { get; init; }
    [CommandOption("--slg-scale <S>")][Description("Skip-layer guidance as its own branch: eps + s*(eps - eps_skip), with --slg-layers skipped (SD 3.5's recipe). Combines with CFG and PAG.")]
    public double? SlgScale { get; init; }
    [CommandOption("--slg-layers <SPEC>")][Description("SLG: attention layers to skip (same syntax as --pag-layers; default: the middle block).")]
    public string? SlgLayers { get; init; }
    [CommandOption("--slg-skip <WHAT>")][Description("SLG: what is skipped at each layer: attention (the self-attention, default), block (the whole transformer block: self-attention, cross-attention, feed-forward; the same on ADM) or resblock (the ResBlock feeding the layer in its block, which then outputs its skip connection; the attention runs normally).")]
    public string? SlgSkip { get; init; }
    [CommandOption("--slg-start <F>")][Description("Apply SLG from this fraction of the steps on (default 0.01, SD 3.5).")]
    public double? SlgStart { get; init; }
    [CommandOption("--slg-stop <F>")][Description("Apply SLG until this fraction of the steps (default 0.2, SD 3.5).")]
    public double? SlgStop { get; init; }
    [CommandOption("--apg")][Description("Adaptive Projected Guidance instead of the plain CFG combination (Sadat et al. 2024; diffusers' AdaptiveProjectedGuidance); scale from --guidance-scale.")]
    public bool Apg { get; init; }
    [CommandOption("--apg-eta <E>")][Description("APG: weight of the update's component parallel to the conditional prediction (default 1, as diffusers; the paper uses 0).")]
    public double ApgEta { get; init; } = 1.0;
    [CommandOption("--apg-norm-threshold <R>")][Description("APG: cap on the norm of the update (default 15, as diffusers; 0 = no cap).")]
    public double ApgNormThreshold { get; init; } = 15.0;
    [CommandOption("--apg-momentum <B>")][Description("APG: momentum of the update (default none; the paper uses -0.5).")]
    public double? ApgMomentum { get; init; }
    [CommandOption("--cfg-zero-star")][Description("CFG-Zero* (Fan et al. 2025; diffusers' ClassifierFreeZeroStarGuidance): optimised scale of the unconditional prediction, and the first --zero-init-steps steps predict zero.")]
    public bool CfgZeroStar { get; init; }
    [CommandOption("--zero-init-steps <N>")][Description("CFG-Zero*: steps whose prediction is zeroed (default 1).")]
    public int ZeroInitSteps { get; init; } = 1;

    /// <summary>The APG settings these options mean, or null.</summary>
    public ApgSettings? BuildApg() => Apg ? ApgFromOptions() : null;
    /// <summary>APG settings from --apg-eta/--apg-norm-threshold/--apg-momentum (for --apg, and apg:W comparison columns).</summary>
    public ApgSettings ApgFromOptions() => new() { Eta = ApgEta, NormThreshold = ApgNormThreshold, Momentum = ApgMomentum };
    [CommandOption("--split-batch")][Description("Run guidance branches as separate forward calls (less memory) instead of one batched call.")]
    public bool SplitBatch { get; init; }
    [CommandOption("--no-shared-prefix")][Description("Run the PAG branch as a full extra pass instead of forking it from the conditional branch at the first perturbed layer (slower; same result within float rounding).")]
    public bool NoSharedPrefix { get; init; }
    [CommandOption("--label <N>")][Description("Class label for every sample.")]
    public int? Label { get; init; }
    [CommandOption("--labels <LIST>")][Description("Comma-separated class labels, cycled over samples (e.g. 0,1,2).")]
    public string? Labels { get; init; }
    [CommandOption("--batch-size <N>")][Description("Samples per forward batch (default 16); it changes memory and speed, not the samples.")]
    public int BatchSize { get; init; } = 16;
    [CommandOption("--memory-limit <MB>")][Description("Memory the activations may use, in MB (default: the machine's available memory). A batch that would not fit runs in smaller forward batches; a run whose single sample would not fit is refused.")]
    public long? MemoryLimitMb { get; init; }
    [CommandOption("--seed <N>")][Description("Run seed; sample i uses seed + i.")]
    public long Seed { get; init; }

    public IReadOnlyList<int>? ParseLabels()
    {
        if (Label is not null && Labels is not null) throw new PagSharpException("give --label or --labels, not both");
        if (Label is int l) return new[] { l };
        if (Labels is null) return null;
        return Labels.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
            .Select(x => int.TryParse(x, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v
                : throw new PagSharpException($"--labels '{Labels}': '{x}' is not an integer label")).ToArray();
    }

    /// <summary>
    /// The guidance settings these options mean for a model with the given attention layers. The overrides (used by
    /// <c>pag compare</c> per column) replace --pag-scale, --guidance-scale and --sag-scale (paper convention; 0 = off).
    /// </summary>
    public GuidanceSettings BuildGuidance(IReadOnlyList<AttentionLayerInfo> layers, GuidanceDefaults? defaults = null, double? pagScaleOverride = null,
                                          double? cfgOverride = null, double? sagScaleOverride = null, double? segScaleOverride = null,
                                          double? slgScaleOverride = null)
    {
        if (Pag && defaults is null && PagScale is null && PagScaleOfficial is null)
            throw new PagSharpException("--pag uses the model's recommended PAG scale, but this model's config has no guidance_defaults; give --pag-scale S");
        string method = Method.Trim().ToLowerInvariant();
        if (method is not ("pag" or "sag"))
            throw new PagSharpException($"unknown --method '{Method}'; valid: pag, sag");
        bool sagOptionsGiven = SagScale is not null || SagScaleOfficial is not null || SagScaleEnd is not null || SagInterval is not null
                               || SagLayer is not null || SagBlurSigma is not null || SagKernel is not null;
        if (sagScaleOverride is null && method == "pag" && sagOptionsGiven)
            throw new PagSharpException("--sag-* options need --method sag");
        bool pagOptionsGiven = PagScale is not null || PagScaleOfficial is not null;
        if (pagScaleOverride is null && method == "sag" && pagOptionsGiven)
            throw new PagSharpException("--method sag cannot be combined with --pag-scale/--pag-scale-official: SAG and PAG are alternatives");

        if (PagScale is not null && PagScaleOfficial is not null) throw new PagSharpException("give --pag-scale or --pag-scale-official, not both");
        double? s = pagScaleOverride ?? PagScale ?? (Pag && PagScaleOfficial is null ? defaults!.PagScale : null);
        var (layerSpec, headsByItem) = HeadSpec.Split(PagLayers ?? defaults?.PagLayers ?? "middle");
        if (PagLayers is not null && s is null && PagScaleOfficial is null && !Pag && method == "pag")
            AnsiConsole.MarkupLine("[yellow]warning:[/] --pag-layers has no effect without --pag-scale (or --pag); sampling without PAG");
        var formula = PagFormula.Paper;
        if (pagScaleOverride is null && PagScaleOfficial is double g) { s = g; formula = PagFormula.Official; }
        ScaleSchedule? schedule = null;
        if (s is double sv && sv != 0)
        {
            if (formula == PagFormula.Official && (PagScaleEnd is not null || PagAdaptiveScale != 0))
                throw new PagSharpException("--pag-scale-end and --pag-adaptive-scale use the paper convention; combine them with --pag-scale");
            schedule = PagScaleEnd is double e ? new ScaleSchedule.Linear(sv, e)
                : PagAdaptiveScale != 0 ? new ScaleSchedule.Adaptive(sv, PagAdaptiveScale)
                : new ScaleSchedule.Constant(sv);
        }
        else if (s is double neg && (double.IsNaN(neg) || neg < 0)) throw new PagSharpException($"PAG scale must be ≥ 0 (got {neg})");

        double w = cfgOverride ?? GuidanceScale;
        ScaleSchedule? cfgSchedule = GuidanceScaleEnd is double we ? new ScaleSchedule.Linear(w, we) : null;

        return new GuidanceSettings
        {
            GuidanceScale = w,
            GuidanceSchedule = cfgSchedule,
            GuidanceInterval = ParseInterval(GuidanceInterval, "--guidance-interval"),
            PagScale = schedule,
            PagLayers = schedule is null ? Array.Empty<string>() : LayerSpec.Resolve(layerSpec, layers),
            PagHeads = headsByItem.SelectMany(kv => LayerSpec.Resolve(kv.Key, layers).Select(l => (l, kv.Value))).ToDictionary(p => p.l, p => p.Value),
            Perturbation = PerturbationSpec.Parse(Perturbation),
            PagInterval = ParseInterval(PagInterval, "--pag-interval"),
            Formula = formula,
            PagCacheInterval = PagCacheInterval,
            Sag = BuildSag(layers, method, sagScaleOverride),
            SplitBatch = SplitBatch,
            SharedPrefix = !NoSharedPrefix,
            Apg = BuildApg(),
            CfgZeroStar = CfgZeroStar,
            ZeroInitSteps = ZeroInitSteps,
            AutoguidanceScale = AutoguidanceScale is double a && a != 0 ? new ScaleSchedule.Constant(a) : null,
            GuidanceSteps = StepWindow(GuidanceStart, GuidanceStop),
            PagSteps = StepWindow(PagStart, PagStop),
            AutoguidanceSteps = StepWindow(AutoguidanceStart, AutoguidanceStop),
            Perturbed = this.BuildPerturbed(spec => LayerSpec.Resolve(spec, layers), "middle", segScaleOverride, slgScaleOverride),
        };
    }


    private SagSettings? BuildSag(IReadOnlyList<AttentionLayerInfo> layers, string method, double? sagScaleOverride)
    {
        double scale;
        var formula = SagFormula.Paper;
        if (sagScaleOverride is double so)
        {
            if (double.IsNaN(so) || so < 0) throw new PagSharpException($"SAG scale must be ≥ 0 (got {so})");
            if (so == 0) return null;
            scale = so;
        }
        else
        {
            if (method != "sag") return null;
            if (SagScale is not null && SagScaleOfficial is not null) throw new PagSharpException("give --sag-scale or --sag-scale-official, not both");
            if (SagScale is double ss) scale = ss;
            else if (SagScaleOfficial is double sg) { scale = sg; formula = SagFormula.Official; }
            else throw new PagSharpException("--method sag needs a scale: --sag-scale S (paper convention, e.g. 0.75) or --sag-scale-official G (official ADM --guide_scale, e.g. 1.5)");
            if (formula == SagFormula.Official && SagScaleEnd is not null)
                throw new PagSharpException("--sag-scale-end uses the paper convention; combine it with --sag-scale");
        }
        string? layer = null;
        if (SagLayer is not null)
        {
            var matched = LayerSpec.Resolve(SagLayer, layers);
            if (matched.Count != 1)
                throw new PagSharpException($"--sag-layer '{SagLayer}' must name exactly one attention layer; it matches {matched.Count}: {string.Join(", ", matched)}");
            layer = matched[0];
        }
        var defaults = new SagSettings { Scale = new ScaleSchedule.Constant(scale) };
        return defaults with
        {
            Scale = SagScaleEnd is double e && sagScaleOverride is null ? new ScaleSchedule.Linear(scale, e) : new ScaleSchedule.Constant(scale),
            Formula = formula,
            Layer = layer,
            BlurSigma = SagBlurSigma ?? defaults.BlurSigma,
            KernelSize = SagKernel ?? defaults.KernelSize,
            Interval = ParseInterval(SagInterval, "--sag-interval"),
        };
    }

    internal static (int Hi, int Lo)? ParseInterval(string? spec, string option)
    {
        if (spec is null) return null;
        var parts = spec.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out int hi)
            || !int.TryParse(parts[1], NumberStyles.Integer, CultureInfo.InvariantCulture, out int lo))
            throw new PagSharpException($"{option} '{spec}' must be HI:LO model timesteps, e.g. 999:500");
        return (hi, lo);
    }

    /// <summary>The guide network of autoguidance (--guidance-model, same preset/config as the model), or null.</summary>
    public LoadedAdm? LoadGuide()
    {
        if (GuidanceModel is null)
        {
            if (AutoguidanceScale is double a && a != 0) throw new PagSharpException("--autoguidance-scale needs --guidance-model CHECKPOINT (a weaker version of the same model)");
            return null;
        }
        if (!File.Exists(GuidanceModel)) throw new PagSharpException($"--guidance-model '{GuidanceModel}' does not exist");
        var loaded = ModelStore.Load(Preset, Config, GuidanceModel, false);
        PagSharp.Runtime.ComputeType.Apply(loaded.Net, PagSharp.Runtime.ComputeType.Parse(Dtype));
        return loaded;
    }

    /// <summary>
    /// The sampling options of the command line. Without --scheduler, the model's recommended sampler
    /// (<paramref name="defaults"/>) and, without --steps, its step count; else DDIM and 50 steps.
    /// </summary>
    public SamplingOptions BuildSampling(GuidanceSettings guidance, SamplingDefaults? defaults = null) => new()
    {
        Scheduler = Diffusion.Schedulers.Schedulers.Check(Sampler ?? (defaults ?? SamplingDefaults.Fallback).Scheduler),
        KarrasSigmas = KarrasSigmas,
        MemoryLimitBytes = MemoryLimitMb is long mb ? (mb >= 1 ? mb * 1_000_000 : throw new PagSharpException($"--memory-limit must be ≥ 1 MB (got {mb})")) : null,
        Steps = Steps ?? (Sampler is null ? defaults ?? SamplingDefaults.Fallback : SamplingDefaults.Fallback).Steps,
        TimestepRespacing = TimestepRespacing,
        Eta = Eta,
        ClipDenoised = !NoClip,
        Guidance = guidance,
        Labels = ParseLabels(),
        Seed = Seed,
        BatchSize = BatchSize,
    };
}
