using System.ComponentModel;
using System.Globalization;
using PagSharp.Attention;
using PagSharp.Guidance;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary>Sampler and guidance options shared by <c>sample</c> and <c>compare</c> (diffusers names in kebab-case).</summary>
public class GuidanceOptionSettings : ModelSettings
{
    [CommandOption("--sampler <NAME>")][Description("ddim (default) or ddpm.")]
    public string Sampler { get; init; } = "ddim";
    [CommandOption("--steps|--num-inference-steps <N>")][Description("Sampling steps (respaced from the model's diffusion steps). Default 50.")]
    public int Steps { get; init; } = 50;
    [CommandOption("--timestep-respacing <SPEC>")][Description("guided-diffusion respacing: ddimN, N, or \"10,10,10\" (overrides --steps).")]
    public string? TimestepRespacing { get; init; }
    [CommandOption("--eta <ETA>")][Description("DDIM eta (0 = deterministic).")]
    public double Eta { get; init; }
    [CommandOption("--no-clip")][Description("Do not clip the predicted x0 to [-1, 1].")]
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
    [CommandOption("--pag-layers <SPEC>")][Description("Layers to perturb: names, groups input/middle/output/all, @RES filters, globs. Default: middle.")]
    public string PagLayers { get; init; } = "middle";
    [CommandOption("--pag-interval <HI:LO>")][Description("Apply PAG only for model timesteps LO <= t <= HI, e.g. 999:500.")]
    public string? PagInterval { get; init; }
    [CommandOption("--perturbation <POLICY>")][Description("Attention perturbation: identity (PAG).")]
    public string Perturbation { get; init; } = "identity";
    [CommandOption("--split-batch")][Description("Run guidance branches as separate forward calls (less memory) instead of one batched call.")]
    public bool SplitBatch { get; init; }
    [CommandOption("--label <N>")][Description("Class label for every sample.")]
    public int? Label { get; init; }
    [CommandOption("--labels <LIST>")][Description("Comma-separated class labels, cycled over samples (e.g. 0,1,2).")]
    public string? Labels { get; init; }
    [CommandOption("--batch-size <N>")] public int BatchSize { get; init; } = 16;
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

    public static IAttentionPerturbation ParsePerturbation(string spec) => spec switch
    {
        "identity" => IdentityPerturbation.Instance,
        _ => throw new PagSharpException($"unknown perturbation '{spec}'; valid: identity"),
    };

    /// <summary>The guidance settings these options mean for a model with the given attention layers.</summary>
    public GuidanceSettings BuildGuidance(IReadOnlyList<AttentionLayerInfo> layers, double? pagScaleOverride = null, double? cfgOverride = null)
    {
        if (PagScale is not null && PagScaleOfficial is not null) throw new PagSharpException("give --pag-scale or --pag-scale-official, not both");
        double? s = pagScaleOverride ?? PagScale;
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
        (int, int)? interval = null;
        if (PagInterval is not null)
        {
            var parts = PagInterval.Split(':');
            if (parts.Length != 2 || !int.TryParse(parts[0], out int hi) || !int.TryParse(parts[1], out int lo))
                throw new PagSharpException($"--pag-interval '{PagInterval}' must be HI:LO model timesteps, e.g. 999:500");
            interval = (hi, lo);
        }
        return new GuidanceSettings
        {
            GuidanceScale = cfgOverride ?? GuidanceScale,
            PagScale = schedule,
            PagLayers = schedule is null ? Array.Empty<string>() : LayerSpec.Resolve(PagLayers, layers),
            Perturbation = ParsePerturbation(Perturbation),
            PagInterval = interval,
            Formula = formula,
            SplitBatch = SplitBatch,
        };
    }

    public SamplingOptions BuildSampling(GuidanceSettings guidance) => new()
    {
        Sampler = Sampler switch
        {
            "ddim" => SamplerKind.Ddim,
            "ddpm" => SamplerKind.Ddpm,
            _ => throw new PagSharpException($"unknown sampler '{Sampler}'; valid: ddim, ddpm"),
        },
        Steps = Steps,
        TimestepRespacing = TimestepRespacing,
        Eta = Eta,
        ClipDenoised = !NoClip,
        Guidance = guidance,
        Labels = ParseLabels(),
        Seed = Seed,
        BatchSize = BatchSize,
    };
}
