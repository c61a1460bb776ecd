using PagSharp.Attention;

namespace PagSharp.Sampling;

/// <summary>
/// Guidance of a Stable Diffusion run with diffusers' <c>StableDiffusionPAGPipeline</c> semantics:
/// CFG is on when <see cref="GuidanceScale"/> &gt; 1; PAG when <see cref="PagScale"/> &gt; 0 and layers are given.
/// Formulas (float32, this order): CFG u + w·(c − u); PAG c + s·(c − p); CFG+PAG u + w·(c − u) + s·(c − p), with
/// s = max(0, s₀ − a·(1000 − t)) when <see cref="PagAdaptiveScale"/> a &gt; 0; then, with CFG and
/// <see cref="GuidanceRescale"/> φ &gt; 0, diffusers' <c>rescale_noise_cfg</c>.
/// </summary>
public sealed record SdGuidance
{
    /// <summary>CFG scale w (diffusers' <c>guidance_scale</c>); ≤ 1 disables CFG.</summary>
    public double GuidanceScale { get; init; } = 7.5;
    /// <summary>PAG scale s (diffusers' <c>pag_scale</c>); 0 disables PAG.</summary>
    public double PagScale { get; init; }
    /// <summary>diffusers' <c>pag_adaptive_scale</c> a: s(t) = max(0, s − a·(1000 − t)).</summary>
    public double PagAdaptiveScale { get; init; }
    /// <summary>Resolved self-attention layer names (see <see cref="DiffusersLayerSpec"/>).</summary>
    public IReadOnlyList<string> PagLayers { get; init; } = Array.Empty<string>();
    /// <summary>What the perturbed layers compute (identity = PAG).</summary>
    public IAttentionPerturbation Perturbation { get; init; } = IdentityPerturbation.Instance;
    /// <summary>diffusers' <c>guidance_rescale</c> φ (Lin et al. 2023, §3.4); applies with CFG.</summary>
    public double GuidanceRescale { get; init; }
    /// <summary>Fork the perturbed branch from the conditional one at the first perturbed layer (same result, less work).</summary>
    public bool SharedPrefix { get; init; } = true;

    /// <summary>
    /// 1 (default) = exact PAG. N &gt; 1 = an <b>approximation</b> for speed (not in diffusers): the perturbed branch
    /// runs at the first of every N steps and the steps between reuse its direction c − p
    /// (<see cref="Guidance.PagDirectionCache"/>, as <see cref="Guidance.GuidanceSettings.PagCacheInterval"/>).
    /// </summary>
    public int PagCacheInterval { get; init; } = 1;

    public bool UsesCfg => GuidanceScale > 1;
    public bool UsesPag => PagScale > 0 && PagLayers.Count > 0;

    /// <summary>The PAG scale at model timestep <paramref name="t"/>, float32 as diffusers' <c>_get_pag_scale</c>.</summary>
    public float PagScaleAt(float t)
    {
        if (!(PagAdaptiveScale > 0 && UsesPag)) return (float)PagScale;
        float s = (float)PagScale - (float)PagAdaptiveScale * (1000f - t);
        return s < 0 ? 0 : s;
    }

    public void Validate()
    {
        static bool Bad(double v) => double.IsNaN(v) || double.IsInfinity(v) || v < 0;
        if (Bad(GuidanceScale)) throw new PagSharpException($"guidance scale must be a finite number ≥ 0 (got {GuidanceScale}); values ≤ 1 disable CFG");
        if (Bad(PagScale)) throw new PagSharpException($"PAG scale must be a finite number ≥ 0 (got {PagScale}); 0 disables PAG");
        if (Bad(PagAdaptiveScale)) throw new PagSharpException($"PAG adaptive scale must be a finite number ≥ 0 (got {PagAdaptiveScale})");
        Guidance.PagDirectionCache.Validate(PagCacheInterval);
        if (Bad(GuidanceRescale) || GuidanceRescale > 1) throw new PagSharpException($"guidance rescale must be in [0, 1] (got {GuidanceRescale})");
    }
}
