namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// The σ-bridge from a guided-diffusion process to the diffusers-style schedulers (k-diffusion's
/// <c>DiscreteEpsDDPMDenoiser</c> idea): the process's own β_t over its T training steps become the schedulers'
/// <c>trained_betas</c>, so σ_t = √((1 − ᾱ_t)/ᾱ_t) is the model's noise level at timestep t, and Euler, Euler
/// ancestral and DPM++ 2M drive an ADM model exactly as they drive a Stable Diffusion U-Net (ε-prediction; learned
/// variance channels are not used by these schedulers).
/// </summary>
public static class SigmaBridge
{
    /// <summary>A scheduler config for the process with β from <paramref name="noiseSchedule"/> over <paramref name="steps"/>.</summary>
    public static SchedulerConfig For(string noiseSchedule, int steps) => new()
    {
        NumTrainTimesteps = steps,
        TrainedBetas = BetaSchedules.Get(noiseSchedule, steps).Select(b => (float)b).ToArray(),
        PredictionType = "epsilon",
        Source = $"the model's {noiseSchedule} noise schedule ({steps} steps)",
    };
}
