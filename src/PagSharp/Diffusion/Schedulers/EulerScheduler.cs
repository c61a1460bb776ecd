using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// diffusers' <c>EulerDiscreteScheduler</c> (s_churn = 0) and <c>EulerAncestralDiscreteScheduler</c>. Timesteps are
/// floats (default spacing <c>linspace</c>); σ_i = interp(t_i) of √((1−ᾱ)/ᾱ), then 0. x_T is scaled by
/// max σ (linspace, trailing) or √(max σ² + 1) (leading), the network input by 1/√(σ_i² + 1).
/// Euler: x̂₀ = x − σ_i·ε; x ← x + (x − x̂₀)/σ_i·(σ_{i+1} − σ_i).
/// Ancestral: σ_up = √(σ_{i+1}²(σ_i² − σ_{i+1}²)/σ_i²), σ_down = √(σ_{i+1}² − σ_up²); x ← x + (x − x̂₀)/σ_i·(σ_down − σ_i) + z·σ_up,
/// with z drawn per sample from the run's generators (as diffusers with a list of generators).
/// </summary>
public sealed class EulerScheduler : ISigmaScheduler
{
    private readonly SchedulerConfig _c;
    private readonly float[] _sigmas;
    private readonly bool _ancestral;

    public EulerScheduler(SchedulerConfig config, int steps, bool ancestral)
    {
        string name = ancestral ? "euler-a" : "euler";
        DiffusersSchedule.CheckSteps(steps, config, name);
        if (ancestral) config.Refuse(name, "rescale_betas_zero_snr");
        else config.Refuse(name, "rescale_betas_zero_snr", "use_exponential_sigmas", "use_beta_sigmas", "interpolation_type", "timestep_type");
        if (ancestral && config.UseKarrasSigmas)
            throw new PagSharpException("euler-a: Karras sigmas are not available for Euler ancestral (diffusers' EulerAncestralDiscreteScheduler has no use_karras_sigmas)");
        if (ancestral && config.PredictionType == "sample")
            throw new PagSharpException("euler-a: prediction_type 'sample' is not implemented (as in diffusers)");
        _c = config;
        _ancestral = ancestral;
        string spacing = config.TimestepSpacing ?? "linspace";
        var ts = Sigmas.EulerTimesteps(config, steps, spacing);
        var train = Sigmas.Training(DiffusersSchedule.AlphasCumprod(config));
        var ac = DiffusersSchedule.AlphasCumprod(config);
        // Euler supports final_sigmas_type (zero or sigma_min); Euler ancestral always ends at 0.
        float last = !ancestral && config.FinalSigmasType == "sigma_min" ? MathF.Sqrt((1f - ac[0]) / ac[0]) : 0f;
        if (config.UseKarrasSigmas)
        {
            // diffusers: Karras levels between the interpolated σ at the first and last timestep, and their (fractional) timesteps.
            var interp = ts.Select(t => Sigmas.Interp(t, train)).ToArray();
            var karras = Sigmas.Karras(config.SigmaMin ?? interp[^1], config.SigmaMax ?? interp[0], steps);
            var log = Sigmas.LogTable(train);
            ts = karras.Select(s => (float)Sigmas.SigmaToT(s, log)).ToArray();
            _sigmas = karras.Select(s => (float)s).Append(last).ToArray();
        }
        else _sigmas = ts.Select(t => (float)Sigmas.Interp(t, train)).Append(last).ToArray();
        Timesteps = ts;
        float max = _sigmas.Max();
        InitNoiseSigma = spacing is "linspace" or "trailing" ? max : MathF.Sqrt(max * max + 1);
    }

    public string Name => _ancestral ? "euler-a" : "euler";
    public IReadOnlyList<float> Timesteps { get; }
    public float InitNoiseSigma { get; }
    /// <summary>σ per step plus the final 0.</summary>
    public IReadOnlyList<float> SigmaGrid => _sigmas;
    public bool VariancePreserving => false;

    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex) => original + noise * _sigmas[stepIndex];

    public Tensor ScaleModelInput(Tensor sample, int stepIndex)
    {
        float s = _sigmas[stepIndex];
        return sample / MathF.Sqrt(s * s + 1);
    }

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        var modelOutput = output.Output;
        float sigma = _sigmas[stepIndex], next = _sigmas[stepIndex + 1];
        Tensor x0 = _c.PredictionType switch
        {
            "epsilon" => sample - sigma * modelOutput,
            "v_prediction" => modelOutput * (-sigma / MathF.Sqrt(sigma * sigma + 1)) + sample / (sigma * sigma + 1),
            _ => modelOutput,
        };
        var derivative = (sample - x0) / sigma;
        if (!_ancestral) return sample + derivative * (next - sigma);

        float up = MathF.Sqrt(next * next * (sigma * sigma - next * next) / (sigma * sigma));
        // σ_up² can exceed σ_next² by a rounding error when σ ≫ σ_next (ADM's cosine schedule reaches σ ≈ 2·10⁴), where
        // diffusers' formula gives NaN; the exact value there is 0.
        float down = MathF.Sqrt(MathF.Max(next * next - up * up, 0f));
        var prev = sample + derivative * (down - sigma);
        if (noise is null) throw new PagSharpException("euler-a needs a noise source");
        using var z = noise.Randn(sample.shape[1..]);
        return prev + z.to_type(sample.dtype) * up;
    }
}
