namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// A scheduler on k-diffusion's noise levels σ = √((1 − ᾱ)/ᾱ) (Euler, Euler ancestral, DPM++ 2M, UniPC): the sample
/// at step i is x₀ + σ_i·ε, or with <see cref="VariancePreserving"/> that divided by √(σ_i² + 1).
/// </summary>
public interface ISigmaScheduler : IScheduler
{
    /// <summary>σ at each step, then the final σ (0).</summary>
    IReadOnlyList<float> SigmaGrid { get; }

    /// <summary>Whether the sample is held as (x₀ + σ·ε)/√(σ² + 1) (the DPM-Solver family) rather than x₀ + σ·ε (Euler).</summary>
    bool VariancePreserving { get; }
}
