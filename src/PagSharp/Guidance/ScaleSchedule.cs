using System.Globalization;

namespace PagSharp.Guidance;

/// <summary>
/// A guidance scale as a function of the model timestep t ∈ [0, T) (the original, non-respaced timestep the network
/// sees; T = the model's diffusion steps). Used alike for the CFG, PAG and SAG scales; whether a step uses the
/// method at all is further limited by that method's interval in <see cref="GuidanceSettings"/>.
/// </summary>
public abstract record ScaleSchedule
{
    public abstract double At(double t, int totalSteps);

    /// <summary>
    /// The largest value the schedule can take (used to decide whether a run may need a method at all). A method, not
    /// a property, so that the records' printed form (stored in run.json) stays "Constant { Scale = 2 }".
    /// </summary>
    public abstract double UpperBound();

    /// <summary>Throws a <see cref="PagSharpException"/> naming <paramref name="what"/> unless every parameter is a number ≥ 0.</summary>
    public abstract void Validate(string what);

    private static string F(double v) => v.ToString("R", CultureInfo.InvariantCulture);
    /// <summary>The largest scale accepted: far beyond any useful guidance (diffusers' examples stay below 30), and low
    /// enough that a typo such as 1e300 fails instead of producing noise.</summary>
    public const double MaxScale = 1000;

    private static bool Bad(double v) => double.IsNaN(v) || double.IsInfinity(v) || v < 0 || v > MaxScale;

    /// <summary>The same scale at every step.</summary>
    public sealed record Constant(double Scale) : ScaleSchedule
    {
        public override double At(double t, int totalSteps) => Scale;
        public override double UpperBound() => Scale;
        public override void Validate(string what)
        {
            if (Bad(Scale)) throw new PagSharpException($"{what} must be a number from 0 to {F(MaxScale)} (got {F(Scale)})");
        }
    }

    /// <summary>
    /// Linear ramp in t from <paramref name="AtStart"/> (t = T−1, pure noise) to <paramref name="AtEnd"/> (t = 0):
    /// s(t) = AtEnd + (AtStart − AtEnd)·t/(T − 1). With respaced sampling the first step's t may be below T − 1
    /// (e.g. 980 for DDIM-50 of 1000), so the value there is slightly below AtStart.
    /// </summary>
    public sealed record Linear(double AtStart, double AtEnd) : ScaleSchedule
    {
        public override double At(double t, int totalSteps) =>
            totalSteps <= 1 ? AtEnd : AtEnd + (AtStart - AtEnd) * t / (totalSteps - 1.0);
        public override double UpperBound() => Math.Max(AtStart, AtEnd);
        public override void Validate(string what)
        {
            if (Bad(AtStart) || Bad(AtEnd)) throw new PagSharpException($"{what} ramp must have values from 0 to {F(MaxScale)} (got {F(AtStart)}→{F(AtEnd)})");
        }
    }

    /// <summary>
    /// diffusers' <c>pag_adaptive_scale</c>: s(t) = max(s − a·(1000 − t), 0), with the 1000 hard-coded as in diffusers
    /// (not the model's T). <b>Pitfall:</b> it decreases by a per timestep of the 1000-step process, not per sampling
    /// step, so it reaches 0 once 1000 − t ≥ s/a and stays 0. For s = 3, a = 0.1 that is t ≤ 970: with DDIM-50
    /// (t = 980, 960, …) only the first step gets a non-zero scale, and only 3 − 0.1·20 = 1 there. Rates around
    /// 0.001–0.01 keep it alive for a useful part of the trajectory. Computed in float32 as diffusers'
    /// <c>_get_pag_scale</c> does (its operands are float32 there).
    /// </summary>
    public sealed record Adaptive(double Scale, double Rate) : ScaleSchedule
    {
        public override double At(double t, int totalSteps)
        {
            float s = (float)Scale - (float)Rate * (1000f - (float)t);
            return s < 0 ? 0 : s;
        }
        /// <summary>s itself (the value at t = 1000; for models with T ≤ 1000 the schedule never exceeds it).</summary>
        public override double UpperBound() => Scale;
        public override void Validate(string what)
        {
            if (Bad(Scale) || Bad(Rate)) throw new PagSharpException($"{what} and its adaptive rate must be numbers ≥ 0 (got {F(Scale)}, {F(Rate)})");
        }
    }
}
