namespace PagSharp.Denoisers;

/// <summary>
/// Where the sampling loop stands when it asks for a prediction: step <see cref="Index"/> (0-based) of
/// <see cref="Count"/>, at model timestep <see cref="Timestep"/> (the original, non-respaced timestep the network sees;
/// fractional for σ-based schedulers such as Euler).
/// </summary>
public readonly record struct StepContext(int Index, int Count, double Timestep);
