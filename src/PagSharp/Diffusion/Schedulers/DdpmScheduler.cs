using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// diffusers' <c>DDPMScheduler</c> (Ho et al. 2020) for diffusers models: ancestral steps between the inference
/// timesteps (default spacing <c>leading</c>: round(i·⌊T/n⌋) reversed + steps_offset), previous timestep the next one
/// in the list (−1 after the last, ᾱ = 1 there). Per step, scalars in float32: x̂₀ from the prediction type, clipped
/// with clip_sample (default on); μ = √ᾱ_prev·β_t/(1−ᾱ_t)·x̂₀ + √α_t·(1−ᾱ_prev)/(1−ᾱ_t)·x with α_t = ᾱ_t/ᾱ_prev,
/// β_t = 1 − α_t; for t &gt; 0 plus σ·z, z drawn per sample from the run's generators, with σ² = max((1−ᾱ_prev)/(1−ᾱ_t)·β_t,
/// 1e-20) (fixed_small), its log form (fixed_small_log), or β_t (fixed_large).
/// </summary>
public sealed class DdpmScheduler : IScheduler
{
    private readonly SchedulerConfig _c;
    private readonly float[] _ac;
    private readonly int[] _timesteps;
    private readonly string _variance;

    public DdpmScheduler(SchedulerConfig config, int steps)
    {
        DiffusersSchedule.CheckSteps(steps, config, "ddpm");
        config.Refuse("ddpm", "thresholding", "rescale_betas_zero_snr");
        _variance = config.VarianceType ?? "fixed_small";
        if (_variance is not ("fixed_small" or "fixed_small_log" or "fixed_large"))
            throw new PagSharpException($"ddpm: variance_type '{_variance}' is not implemented; valid: fixed_small, fixed_small_log, fixed_large");
        _c = config;
        _ac = DiffusersSchedule.AlphasCumprod(config);
        int T = config.NumTrainTimesteps;
        string spacing = config.TimestepSpacing ?? "leading";
        _timesteps = spacing switch
        {
            "leading" => Enumerable.Range(0, steps).Select(i => (int)DiffusersSchedule.Round(i * (double)(T / steps))).Reverse()
                .Select(t => t + config.StepsOffset).ToArray(),
            "trailing" => DiffusersSchedule.NpArange(T, 0, -(double)T / steps).Select(v => (int)DiffusersSchedule.Round(v) - 1).ToArray(),
            "linspace" => DiffusersSchedule.NpLinspace(0, T - 1, steps).Select(v => (int)DiffusersSchedule.Round(v)).Reverse().ToArray(),
            _ => throw new PagSharpException($"ddpm: unknown timestep_spacing '{spacing}'"),
        };
        foreach (int t in _timesteps)
            if (t < 0 || t >= T) throw new PagSharpException($"ddpm: timestep {t} is outside [0, {T}) (steps_offset {config.StepsOffset} too large for {steps} steps?)");
        Timesteps = _timesteps.Select(t => (float)t).ToArray();
    }

    public string Name => "ddpm";
    public IReadOnlyList<float> Timesteps { get; }
    public float InitNoiseSigma => 1f;
    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex)
    {
        float a = _ac[_timesteps[stepIndex]];
        return MathF.Sqrt(a) * original + MathF.Sqrt(1f - a) * noise;
    }

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        var modelOutput = output.Output;
        int t = _timesteps[stepIndex];
        int prev = stepIndex == _timesteps.Length - 1 ? -1 : _timesteps[stepIndex + 1];
        float aT = _ac[t], aPrev = prev >= 0 ? _ac[prev] : 1f;
        float bT = 1f - aT, bPrev = 1f - aPrev;
        float alphaT = aT / aPrev, betaT = 1f - alphaT;
        Tensor x0 = _c.PredictionType switch
        {
            "epsilon" => (sample - MathF.Sqrt(bT) * modelOutput) / MathF.Sqrt(aT),
            "v_prediction" => MathF.Sqrt(aT) * sample - MathF.Sqrt(bT) * modelOutput,
            _ => modelOutput,
        };
        if (_c.ClipSample ?? true) x0 = x0.clamp(-_c.ClipSampleRange, _c.ClipSampleRange);
        float c0 = MathF.Sqrt(aPrev) * betaT / bT, c1 = MathF.Sqrt(alphaT) * bPrev / bT;
        var mean = c0 * x0 + c1 * sample;
        if (t <= 0) return mean;
        if (noise is null) throw new PagSharpException("ddpm needs a noise source");
        using var z = noise.Randn(sample.shape[1..]);
        float variance = MathF.Max(bPrev / bT * betaT, 1e-20f);
        float std = _variance switch
        {
            "fixed_large" => MathF.Sqrt(betaT),
            "fixed_small_log" => MathF.Exp(0.5f * MathF.Log(variance)),
            _ => MathF.Sqrt(variance),
        };
        return mean + std * z.to_type(sample.dtype);
    }
}
