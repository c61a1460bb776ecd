using PagSharp.Attention;

namespace PagSharp.Guidance;

/// <summary>
/// A guidance branch next to PAG that perturbs attention layers of the conditional pass and pushes away from it:
/// ε + s·(ε − ε̃) — Smoothed Energy Guidance (queries blurred, <see cref="SegPerturbation"/>) and skip-layer guidance
/// (layers, their transformer blocks or the ResBlocks feeding them skipped, <see cref="SkipPerturbation"/>). It shares the batch, the shared-prefix fork and the split skips
/// with PAG; each branch is its own block of entries.
/// </summary>
/// <param name="Name">Short name (seg, slg) for messages and run.json.</param>
/// <param name="Scale">Its scale s per model timestep.</param>
/// <param name="Layers">Resolved layer names.</param>
/// <param name="Policy">What the layers compute for this branch.</param>
public sealed record PerturbedGuidance(string Name, ScaleSchedule Scale, IReadOnlyList<string> Layers, IAttentionPerturbation Policy)
{
    /// <summary>Only on the steps of [Start, Stop) as fractions of the run's steps; null = every step.</summary>
    public (double Start, double Stop)? Steps { get; init; }

    /// <summary>SEG (Hong 2024) with query blur σ (∞ = the mean query) at <paramref name="layers"/>.</summary>
    public static PerturbedGuidance Seg(double scale, double sigma, IReadOnlyList<string> layers) =>
        new("seg", new ScaleSchedule.Constant(scale), layers, new SegPerturbation(sigma));

    /// <summary>
    /// Skip-layer guidance at <paramref name="layers"/>, by default on the steps of SD 3.5's recipe (1%–20%): at each
    /// layer <paramref name="skip"/> is skipped — the self-attention (default), its whole transformer block
    /// (<see cref="SkipPerturbation.Block"/>), or the ResBlock that feeds it (<see cref="SkipPerturbation.ResBlock"/>;
    /// the layers still name the self-attention layers).
    /// </summary>
    public static PerturbedGuidance Slg(double scale, IReadOnlyList<string> layers, double start = 0.01, double stop = 0.2, SkipTarget skip = SkipTarget.Attention) =>
        new("slg", new ScaleSchedule.Constant(scale), layers, SkipPerturbation.Of(skip)) { Steps = (start, stop) };

    /// <summary>The earlier form: <paramref name="wholeBlock"/> = <see cref="SkipTarget.Block"/>, else <see cref="SkipTarget.Attention"/>.</summary>
    public static PerturbedGuidance Slg(double scale, IReadOnlyList<string> layers, double start, double stop, bool wholeBlock) =>
        Slg(scale, layers, start, stop, wholeBlock ? SkipTarget.Block : SkipTarget.Attention);

    public void Validate()
    {
        Scale.Validate($"{Name} scale");
        if (Layers.Count == 0) throw new PagSharpException($"{Name} needs at least one layer");
        if (Steps is { } w && !(w.Start >= 0 && w.Start < w.Stop && w.Stop <= 1))
            throw new PagSharpException($"{Name} steps ({w.Start}, {w.Stop}) must satisfy 0 ≤ start < stop ≤ 1");
    }
}
