using PagSharp.Attention;

namespace PagSharp.Guidance;

/// <summary>Which PAG formula to use for PAG without CFG.</summary>
public enum PagFormula
{
    /// <summary>Paper / diffusers: ε + s·(ε − ε̂).</summary>
    Paper,
    /// <summary>The official ADM code's <c>guide_scale g</c>: ε̂ + g·(ε − ε̂), equal to the paper form with s = g − 1.</summary>
    Official,
}

/// <summary>
/// Guidance for one sampling run of any model family (one settings type for ADM and Stable Diffusion): CFG, and either PAG (with any <see cref="IAttentionPerturbation"/>) or SAG.
/// Every scale is a <see cref="ScaleSchedule"/> of the model timestep with an optional interval:
/// <list type="bullet">
/// <item>CFG is active at a step when its scale w there is &gt; 1 (diffusers' convention) and the step lies in
/// <see cref="GuidanceInterval"/>; the scale is <see cref="GuidanceSchedule"/> when set, otherwise the constant
/// <see cref="GuidanceScale"/>.</item>
/// <item>PAG is active at a step when its scale there is non-zero, the step lies in <see cref="PagInterval"/>, and
/// layers are given.</item>
/// <item>SAG is on when <see cref="Sag"/> is set, and active at a step when its scale there is non-zero and the step
/// lies in <see cref="SagSettings.Interval"/>.</item>
/// </list>
/// Outside its interval a method is simply not applied (CFG: plain conditional ε; PAG/SAG: no extra term).
/// </summary>
public sealed record GuidanceSettings
{
    /// <summary>Constant CFG scale w: ε(∅) + w·(ε(c) − ε(∅)). Values ≤ 1 disable CFG. Ignored when <see cref="GuidanceSchedule"/> is set.</summary>
    public double GuidanceScale { get; init; } = 1;
    /// <summary>CFG scale w per model timestep (ramp, adaptive, …); null = the constant <see cref="GuidanceScale"/>. Steps where w ≤ 1 run without CFG.</summary>
    public ScaleSchedule? GuidanceSchedule { get; init; }
    /// <summary>
    /// CFG only on the steps of [Start, Stop) as fractions of the run's steps, as diffusers' guiders' <c>start</c>/<c>stop</c>:
    /// step i is in when ⌊Start·n⌋ ≤ i &lt; ⌊Stop·n⌋; null = every step. Combines with <see cref="GuidanceInterval"/>.
    /// </summary>
    public (double Start, double Stop)? GuidanceSteps { get; init; }
    /// <summary>PAG only on the steps of [Start, Stop) as fractions of the run's steps (see <see cref="GuidanceSteps"/>); null = every step.</summary>
    public (double Start, double Stop)? PagSteps { get; init; }
    /// <summary>Autoguidance only on the steps of [Start, Stop) as fractions of the run's steps; null = every step.</summary>
    public (double Start, double Stop)? AutoguidanceSteps { get; init; }

    /// <summary>Whether step <paramref name="index"/> of <paramref name="count"/> lies in a [Start, Stop) step window (null = always).</summary>
    public static bool InSteps((double Start, double Stop)? window, int index, int count) =>
        window is not { } w || ((int)(w.Start * count) <= index && index < (int)(w.Stop * count));

    /// <summary>CFG only for model timesteps Lo ≤ t ≤ Hi; null = every step.</summary>
    public (int Hi, int Lo)? GuidanceInterval { get; init; }
    /// <summary>PAG scale s (paper convention) per timestep; null disables PAG.</summary>
    public ScaleSchedule? PagScale { get; init; }
    /// <summary>Resolved attention layer names to perturb.</summary>
    public IReadOnlyList<string> PagLayers { get; init; } = Array.Empty<string>();
    /// <summary>Per-head PAG: for a layer listed here only these heads are perturbed (others keep normal attention); absent = all heads.</summary>
    public IReadOnlyDictionary<string, int[]> PagHeads { get; init; } = new Dictionary<string, int[]>();
    /// <summary>The perturbation policy (identity = PAG).</summary>
    public IAttentionPerturbation Perturbation { get; init; } = IdentityPerturbation.Instance;
    /// <summary>PAG only for model timesteps Lo ≤ t ≤ Hi; null = every step.</summary>
    public (int Hi, int Lo)? PagInterval { get; init; }
    public PagFormula Formula { get; init; } = PagFormula.Paper;
    /// <summary>
    /// 1 (default) = exact PAG: the perturbed branch runs at every step where PAG is active. N &gt; 1 = an
    /// <b>approximation</b> for speed: the perturbed branch runs at the first of every N such steps, and the steps between
    /// reuse its guidance direction ε(c) − ε̂(c) (the cache-and-reuse idea of DeepCache's <c>cache_interval</c> and
    /// FasterCache's CFG cache, applied to PAG's term). Average cost per step ≈ none + (perturbed branch)/N.
    /// </summary>
    public int PagCacheInterval { get; init; } = 1;
    /// <summary>Self-Attention Guidance instead of PAG; null = off.</summary>
    public SagSettings? Sag { get; init; }
    /// <summary>
    /// diffusers' <c>guidance_rescale</c> φ (Lin et al. 2023, §3.4), applied after the combination at steps where CFG
    /// is active: x_r = x·(std(c)/std(x)) per sample, then φ·x_r + (1 − φ)·x. 0 = off.
    /// </summary>
    public double GuidanceRescale { get; init; }
    /// <summary>
    /// Autoguidance (Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself"): scale s of
    /// ε(c) + s·(ε(c) − ε_bad(c)), ε_bad the prediction of a weaker guide model (given to the engine); null = off.
    /// Combines with CFG and PAG (their terms add).
    /// </summary>
    public ScaleSchedule? AutoguidanceScale { get; init; }
    public bool UsesAutoguidance => AutoguidanceScale is not null;

    /// <summary>Further perturbed branches next to PAG (SEG, SLG), each ε + s·(ε − ε̃); empty = none.</summary>
    public IReadOnlyList<PerturbedGuidance> Perturbed { get; init; } = [];

    /// <summary>Adaptive Projected Guidance instead of the plain CFG combination (with CFG active); null = off.</summary>
    public ApgSettings? Apg { get; init; }
    /// <summary>
    /// CFG-Zero* (Fan et al. 2025), as diffusers' <c>ClassifierFreeZeroStarGuidance</c>: the unconditional prediction
    /// is scaled by s* = ⟨ε(c), ε(∅)⟩ / (‖ε(∅)‖² + 1e−8) per sample before the CFG combination, and the first
    /// <see cref="ZeroInitSteps"/> steps predict zero.
    /// </summary>
    public bool CfgZeroStar { get; init; }
    /// <summary>With <see cref="CfgZeroStar"/>: steps (from the first) whose prediction is zeroed (diffusers' default 1).</summary>
    public int ZeroInitSteps { get; init; } = 1;
    /// <summary>Run the branches as separate forward calls instead of one batched call (less memory).</summary>
    public bool SplitBatch { get; init; }
    /// <summary>
    /// In the batched call, compute the part of the network before the first perturbed layer once and fork the
    /// conditional entries there (default). False runs the perturbed branch as a full extra pass ("naive").
    /// </summary>
    public bool SharedPrefix { get; init; } = true;

    /// <summary>CFG may be active at some step (so the model needs a null class).</summary>
    public bool UsesCfg => (GuidanceSchedule?.UpperBound() ?? GuidanceScale) > 1;
    public bool UsesPag => PagScale is not null && PagLayers.Count > 0;
    public bool UsesSag => Sag is not null;

    private static bool Inside((int Hi, int Lo)? interval, double t) => interval is not { } iv || (t <= iv.Hi && t >= iv.Lo);

    /// <summary>The CFG scale in effect at model timestep <paramref name="t"/>; 1 when CFG is off there.</summary>
    public double CfgScaleAt(double t, int totalSteps)
    {
        if (!Inside(GuidanceInterval, t)) return 1;
        double w = GuidanceSchedule?.At(t, totalSteps) ?? GuidanceScale;
        return w > 1 ? w : 1;
    }

    /// <summary>The PAG scale at model timestep <paramref name="t"/>, or 0 when PAG is off there.</summary>
    public double PagScaleAt(double t, int totalSteps) =>
        UsesPag && Inside(PagInterval, t) ? PagScale!.At(t, totalSteps) : 0;

    /// <summary>The SAG scale (in <see cref="SagSettings.Formula"/>'s convention) at model timestep <paramref name="t"/>, or 0 when SAG is off there.</summary>
    public double SagScaleAt(double t, int totalSteps) =>
        Sag is { } sag && Inside(sag.Interval, t) ? sag.Scale.At(t, totalSteps) : 0;

    public void Validate()
    {
        if (double.IsNaN(GuidanceScale) || GuidanceScale < 0)
            throw new PagSharpException($"guidance scale must be a number ≥ 0 (got {GuidanceScale}); values ≤ 1 disable CFG");
        if (double.IsInfinity(GuidanceScale) || GuidanceScale > ScaleSchedule.MaxScale)
            throw new PagSharpException($"guidance scale must be a number from 0 to {ScaleSchedule.MaxScale} (got {GuidanceScale})");
        GuidanceSchedule?.Validate("guidance scale");
        if (!(GuidanceRescale >= 0 && GuidanceRescale <= 1))
            throw new PagSharpException($"guidance rescale must be in [0, 1] (got {GuidanceRescale})");
        if (GuidanceInterval is { } gi && gi.Hi < gi.Lo)
            throw new PagSharpException($"guidance interval {gi.Hi}:{gi.Lo} must be written t_hi:t_lo with t_hi ≥ t_lo");
        PagScale?.Validate("PAG scale");
        Apg?.Validate();
        foreach (var p in Perturbed) p.Validate();
        if (Perturbed.Count > 0 && Sag is not null) throw new PagSharpException("SEG/SLG branches cannot be combined with SAG");
        if (Perturbed.Count > 0 && Formula == PagFormula.Official && UsesPag)
            throw new PagSharpException("the official-ADM PAG formula is defined for PAG alone; use PagFormula.Paper with SEG/SLG");
        AutoguidanceScale?.Validate("autoguidance scale");
        if (UsesSag && UsesAutoguidance) throw new PagSharpException("SAG and autoguidance cannot be combined yet; use PAG with autoguidance");
        if (Apg is not null && CfgZeroStar) throw new PagSharpException("Apg and CfgZeroStar both replace the CFG combination; choose one");
        foreach (var (name, w) in new[] { ("GuidanceSteps", GuidanceSteps), ("PagSteps", PagSteps), ("AutoguidanceSteps", AutoguidanceSteps) })
            if (w is { } win && !(win.Start >= 0 && win.Start < win.Stop && win.Stop <= 1))
                throw new PagSharpException($"{name} ({win.Start}, {win.Stop}) must satisfy 0 ≤ start < stop ≤ 1 (fractions of the steps)");
        if (ZeroInitSteps < 0) throw new PagSharpException($"ZeroInitSteps must be ≥ 0 (got {ZeroInitSteps})");
        PagDirectionCache.Validate(PagCacheInterval);
        if (PagInterval is { } iv && iv.Hi < iv.Lo)
            throw new PagSharpException($"PAG interval {iv.Hi}:{iv.Lo} must be written t_hi:t_lo with t_hi ≥ t_lo");
        if (UsesCfg && Formula == PagFormula.Official && UsesPag)
            throw new PagSharpException("the official-ADM PAG formula is defined for PAG without CFG; use PagFormula.Paper with CFG");
        if (Sag is { } sag)
        {
            sag.Validate();
            if (UsesPag)
                throw new PagSharpException("SAG and PAG cannot be combined in one run; set PagScale or Sag, not both");
            if (PagCacheInterval != 1)
                throw new PagSharpException("the PAG cache interval applies to PAG only; SAG runs its degraded branch at every step");
            if (UsesCfg && sag.Formula == SagFormula.Official)
                throw new PagSharpException("the official-ADM SAG formula is defined for SAG without CFG; use SagFormula.Paper with CFG");
        }
    }
}
