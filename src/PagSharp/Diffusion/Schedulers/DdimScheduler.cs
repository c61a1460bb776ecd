using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// diffusers' <c>DDIMScheduler</c>. Timesteps: <c>leading</c> (default) = round(i·⌊T/n⌋) reversed + steps_offset;
/// <c>trailing</c> = round(arange(T, 0, −T/n)) − 1; <c>linspace</c> = round(linspace(0, T−1, n)) reversed. The previous
/// timestep is always t − ⌊T/n⌋ (as diffusers, whatever the spacing); before t = 0 ᾱ is 1 with set_alpha_to_one, else
/// ᾱ₀. Per step, in float32: x̂₀ = (x − √(1−ᾱ_t)·ε)/√ᾱ_t (ε-prediction), clipped with clip_sample;
/// σ = η·√((1−ᾱ_prev)/(1−ᾱ_t)·(1−ᾱ_t/ᾱ_prev)); x_prev = √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ²)·ε (+ σ·z when η &gt; 0).
/// </summary>
public sealed class DdimScheduler : IScheduler
{
    private readonly SchedulerConfig _c;
    private readonly float[] _ac;
    private readonly float _final;
    private readonly int _stride;
    private readonly int[] _timesteps;
    private readonly double _eta;
    private readonly bool _clip;

    public DdimScheduler(SchedulerConfig config, int steps, double eta = 0)
    {
        DiffusersSchedule.CheckSteps(steps, config, "ddim");
        config.Refuse("ddim", "thresholding", "rescale_betas_zero_snr");
        if (double.IsNaN(eta) || eta < 0) throw new PagSharpException($"ddim: eta must be ≥ 0 (got {eta})");
        _c = config;
        _eta = eta;
        _clip = config.ClipSample ?? true;
        _ac = DiffusersSchedule.AlphasCumprod(config);
        _final = config.SetAlphaToOne ?? true ? 1f : _ac[0];
        int T = config.NumTrainTimesteps;
        _stride = T / steps;
        string spacing = config.TimestepSpacing ?? "leading";
        _timesteps = spacing switch
        {
            "leading" => Enumerable.Range(0, steps).Select(i => (int)DiffusersSchedule.Round(i * (double)_stride)).Reverse()
                .Select(t => t + config.StepsOffset).ToArray(),
            "trailing" => DiffusersSchedule.NpArange(T, 0, -(double)T / steps).Select(v => (int)DiffusersSchedule.Round(v) - 1).ToArray(),
            "linspace" => DiffusersSchedule.NpLinspace(0, T - 1, steps).Select(v => (int)DiffusersSchedule.Round(v)).Reverse().ToArray(),
            _ => throw new PagSharpException($"ddim: unknown timestep_spacing '{spacing}'"),
        };
        foreach (int t in _timesteps)
            if (t < 0 || t >= T)
                throw new PagSharpException($"ddim: timestep {t} is outside [0, {T}) (steps_offset {config.StepsOffset} too large for {steps} steps?)");
        Timesteps = _timesteps.Select(t => (float)t).ToArray();
    }

    public string Name => "ddim";
    public IReadOnlyList<float> Timesteps { get; }
    public float InitNoiseSigma => 1f;
    /// <summary>The integer timesteps.</summary>
    public IReadOnlyList<int> IntTimesteps => _timesteps;

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex)
    {
        float a = _ac[_timesteps[stepIndex]];
        return MathF.Sqrt(a) * original + MathF.Sqrt(1f - a) * noise;
    }

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        var modelOutput = output.Output;
        int t = _timesteps[stepIndex], prev = t - _stride;
        float aT = _ac[t];
        float aPrev = prev >= 0 ? _ac[prev] : _final;
        float bT = 1f - aT;
        float sqrtAT = MathF.Sqrt(aT), sqrtBT = MathF.Sqrt(bT);
        Tensor x0, eps;
        switch (_c.PredictionType)
        {
            case "epsilon":
                x0 = (sample - sqrtBT * modelOutput) / sqrtAT;
                eps = modelOutput;
                break;
            case "sample":
                x0 = modelOutput;
                eps = (sample - sqrtAT * x0) / sqrtBT;
                break;
            default: // v_prediction
                x0 = sqrtAT * sample - sqrtBT * modelOutput;
                eps = sqrtAT * modelOutput + sqrtBT * sample;
                break;
        }
        if (_clip) x0 = x0.clamp(-_c.ClipSampleRange, _c.ClipSampleRange);
        float bPrev = 1f - aPrev;
        float variance = bPrev / bT * (1f - aT / aPrev);
        float std = (float)_eta * MathF.Sqrt(variance);
        var direction = MathF.Sqrt(1f - aPrev - std * std) * eps;
        var prevSample = MathF.Sqrt(aPrev) * x0 + direction;
        if (_eta > 0)
        {
            if (noise is null) throw new PagSharpException("ddim with eta > 0 needs a noise source");
            using var z = noise.Randn(sample.shape[1..]);
            prevSample = prevSample + z.to_type(sample.dtype) * std;
        }
        return prevSample;
    }
}
