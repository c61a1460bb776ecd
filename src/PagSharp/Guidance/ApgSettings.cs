namespace PagSharp.Guidance;

/// <summary>
/// Adaptive Projected Guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance Scales
/// in Diffusion Models"), as diffusers' <c>AdaptiveProjectedGuidance</c>: the CFG update Δ = ε(c) − ε(∅) is averaged
/// with momentum (Δ ← Δ + β·Δ_prev when <see cref="Momentum"/> is set), its norm (over all but the batch axis) capped at
/// r (<see cref="NormThreshold"/>; 0 = no cap), and split into the part parallel to ε(c) and the orthogonal rest;
/// ε(∅) + w·(Δ_⊥ + η·Δ_∥). With η = 1, r = 0 and no momentum it is CFG. It replaces the CFG combination; w is the
/// guidance scale.
/// </summary>
public sealed record ApgSettings
{
    /// <summary>η, the weight of the parallel component (diffusers' default 1; the paper recommends 0).</summary>
    public double Eta { get; init; } = 1.0;
    /// <summary>r, the cap on ‖Δ‖ (diffusers' <c>adaptive_projected_guidance_rescale</c>, default 15); 0 = no cap.</summary>
    public double NormThreshold { get; init; } = 15.0;
    /// <summary>β of the momentum (diffusers' <c>adaptive_projected_guidance_momentum</c>, default none; the paper uses −0.5).</summary>
    public double? Momentum { get; init; }

    public void Validate()
    {
        if (!double.IsFinite(Eta)) throw new PagSharpException($"ApgSettings.Eta must be finite (got {Eta})");
        if (!(NormThreshold >= 0) || double.IsInfinity(NormThreshold)) throw new PagSharpException($"ApgSettings.NormThreshold must be a finite number ≥ 0 (got {NormThreshold}); 0 = no cap");
        if (Momentum is { } m && !double.IsFinite(m)) throw new PagSharpException($"ApgSettings.Momentum must be finite (got {m})");
    }
}
