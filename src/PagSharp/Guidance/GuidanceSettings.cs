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
/// Guidance for one sampling run. CFG is active when <see cref="GuidanceScale"/> &gt; 1 (diffusers' convention);
/// PAG is active at a step when its scale there is non-zero, the step lies in <see cref="PagInterval"/>, and layers
/// are given.
/// </summary>
public sealed record GuidanceSettings
{
    /// <summary>CFG scale w: ε(∅) + w·(ε(c) − ε(∅)). Values ≤ 1 disable CFG.</summary>
    public double GuidanceScale { get; init; } = 1;
    /// <summary>PAG scale s (paper convention) per timestep; null disables PAG.</summary>
    public ScaleSchedule? PagScale { get; init; }
    /// <summary>Resolved attention layer names to perturb.</summary>
    public IReadOnlyList<string> PagLayers { get; init; } = Array.Empty<string>();
    /// <summary>The perturbation policy (identity = PAG).</summary>
    public IAttentionPerturbation Perturbation { get; init; } = IdentityPerturbation.Instance;
    /// <summary>PAG only for model timesteps Lo ≤ t ≤ Hi; null = every step.</summary>
    public (int Hi, int Lo)? PagInterval { get; init; }
    public PagFormula Formula { get; init; } = PagFormula.Paper;
    /// <summary>Run the branches as separate forward calls instead of one batched call (less memory).</summary>
    public bool SplitBatch { get; init; }
    /// <summary>
    /// In the batched call, compute the part of the network before the first perturbed layer once and fork the
    /// conditional entries there (default). False runs the perturbed branch as a full extra pass ("naive").
    /// </summary>
    public bool SharedPrefix { get; init; } = true;

    public bool UsesCfg => GuidanceScale > 1;
    public bool UsesPag => PagScale is not null && PagLayers.Count > 0;

    public void Validate()
    {
        if (double.IsNaN(GuidanceScale) || GuidanceScale < 0)
            throw new PagSharpException($"guidance scale must be a number ≥ 0 (got {GuidanceScale}); values ≤ 1 disable CFG");
        switch (PagScale)
        {
            case ScaleSchedule.Constant c when double.IsNaN(c.Scale) || c.Scale < 0:
                throw new PagSharpException($"PAG scale must be a number ≥ 0 (got {c.Scale})");
            case ScaleSchedule.Linear l when double.IsNaN(l.AtStart) || double.IsNaN(l.AtEnd) || l.AtStart < 0 || l.AtEnd < 0:
                throw new PagSharpException($"PAG scale ramp must have values ≥ 0 (got {l.AtStart}→{l.AtEnd})");
            case ScaleSchedule.Adaptive a when double.IsNaN(a.Scale) || a.Scale < 0 || double.IsNaN(a.Rate) || a.Rate < 0:
                throw new PagSharpException($"PAG scale and adaptive scale must be ≥ 0 (got {a.Scale}, {a.Rate})");
        }
        if (PagInterval is { } iv && iv.Hi < iv.Lo)
            throw new PagSharpException($"PAG interval {iv.Hi}:{iv.Lo} must be written t_hi:t_lo with t_hi ≥ t_lo");
        if (UsesCfg && Formula == PagFormula.Official && UsesPag)
            throw new PagSharpException("the official-ADM PAG formula is defined for PAG without CFG; use the paper formula (--pag-scale) with CFG");
    }
}
