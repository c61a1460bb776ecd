namespace PagSharp.Guidance;

/// <summary>A guidance scale as a function of the model timestep t ∈ [0, T).</summary>
public abstract record ScaleSchedule
{
    public abstract double At(int t, int totalSteps);

    /// <summary>The same scale at every step.</summary>
    public sealed record Constant(double Scale) : ScaleSchedule
    {
        public override double At(int t, int totalSteps) => Scale;
    }

    /// <summary>Linear ramp from <paramref name="AtStart"/> (t = T−1, pure noise) to <paramref name="AtEnd"/> (t = 0).</summary>
    public sealed record Linear(double AtStart, double AtEnd) : ScaleSchedule
    {
        public override double At(int t, int totalSteps) =>
            totalSteps <= 1 ? AtEnd : AtEnd + (AtStart - AtEnd) * t / (totalSteps - 1.0);
    }

    /// <summary>diffusers' <c>pag_adaptive_scale</c>: max(s − a·(1000 − t), 0).</summary>
    public sealed record Adaptive(double Scale, double Rate) : ScaleSchedule
    {
        public override double At(int t, int totalSteps) => Math.Max(Scale - Rate * (1000 - t), 0);
    }
}
