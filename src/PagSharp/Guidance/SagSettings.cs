using System.Globalization;

namespace PagSharp.Guidance;

/// <summary>Which SAG formula to use for SAG without CFG (the same two conventions as <see cref="PagFormula"/>).</summary>
public enum SagFormula
{
    /// <summary>
    /// The SAG paper (Hong et al. 2023, eq. for ε̃) and diffusers' <c>sag_scale</c>: ε̃ = ε̄ + (1 + s)·(ε − ε̄) =
    /// ε + s·(ε − ε̄); s = 0 is no guidance.
    /// </summary>
    Paper,
    /// <summary>
    /// The official SAG ADM code's <c>--guide_scale g</c>: ε̃ = ε̄ + g·(ε − ε̄), i.e. s = g − 1 (its README: "sampling
    /// with --guide_scale 1.0 means sampling without self-attention guidance", and its result table lists
    /// guide_scale 1.05 as scale 0.05).
    /// </summary>
    Official,
}

/// <summary>
/// Self-Attention Guidance (Hong et al., ICCV 2023) settings; see <see cref="SagDenoiser"/> for the algorithm.
/// Defaults are the official ADM code's: blur kernel 31, σ = 9 (its ImageNet-256 / LSUN scripts), map layer chosen
/// by <see cref="SagDenoiser.DefaultLayer"/>.
/// </summary>
public sealed record SagSettings
{
    /// <summary>SAG scale per model timestep: s in the paper convention, or g with <see cref="SagFormula.Official"/>.</summary>
    public required ScaleSchedule Scale { get; init; }
    public SagFormula Formula { get; init; } = SagFormula.Paper;
    /// <summary>Attention layer whose map gives the mask (a name from the model's attention layers); null = <see cref="SagDenoiser.DefaultLayer"/>.</summary>
    public string? Layer { get; init; }
    /// <summary>σ of the Gaussian blur of x̂0, in pixels (official ADM default 9; diffusers uses 1 on SD latents).</summary>
    public double BlurSigma { get; init; } = 9;
    /// <summary>Odd kernel size of the blur (official ADM: 31, hard-coded; diffusers: 9). Needs size/2 &lt; image height and width.</summary>
    public int KernelSize { get; init; } = 31;
    /// <summary>SAG only for model timesteps Lo ≤ t ≤ Hi; null = every step.</summary>
    public (int Hi, int Lo)? Interval { get; init; }

    public void Validate()
    {
        if (Scale is null) throw new PagSharpException("SAG needs a scale");
        Scale.Validate(Formula == SagFormula.Official ? "official-convention SAG scale" : "SAG scale");
        if (double.IsNaN(BlurSigma) || double.IsInfinity(BlurSigma) || BlurSigma <= 0)
            throw new PagSharpException($"SAG blur σ must be a number > 0 (got {BlurSigma.ToString(CultureInfo.InvariantCulture)})");
        if (KernelSize < 1 || KernelSize % 2 == 0)
            throw new PagSharpException($"SAG blur kernel size must be a positive odd number (got {KernelSize}); the official ADM code uses 31");
        if (Interval is { } iv && iv.Hi < iv.Lo)
            throw new PagSharpException($"SAG interval {iv.Hi}:{iv.Lo} must be written t_hi:t_lo with t_hi ≥ t_lo");
        if (Layer is not null && string.IsNullOrWhiteSpace(Layer))
            throw new PagSharpException("SAG layer name is empty; leave it unset for the default layer");
    }
}
