using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// diffusers' <c>DPMSolverMultistepScheduler</c> as DPM-Solver++(2M): algorithm_type dpmsolver++, solver_order 2,
/// solver_type midpoint (or heun from the config), lower_order_final, final σ 0 (or σ_min with final_sigmas_type
/// sigma_min). Timesteps (default <c>linspace</c>): round(linspace(0, T−1, n+1)) reversed without the last. Each step
/// converts the output to x̂₀ = (x − σ_t·ε)/α_t with α_t = 1/√(σ²+1), σ_t = σ·α_t, then takes a first-order step
/// (first step, and the last one with a zero final σ or fewer than 15 steps) or the second-order multistep update
/// with the previous x̂₀. Scalars in float32, as diffusers' 0-dim tensors.
/// </summary>
public sealed class DpmSolverMultistepScheduler : ISigmaScheduler, IDisposable
{
    private readonly SchedulerConfig _c;
    private readonly float[] _sigmas;
    private readonly int[] _timesteps;
    private readonly Tensor?[] _outputs = new Tensor?[2];
    private int _lowerOrderNums;

    public DpmSolverMultistepScheduler(SchedulerConfig config, int steps)
    {
        DiffusersSchedule.CheckSteps(steps, config, "dpmpp-2m");
        config.Refuse("dpmpp-2m", "thresholding", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "lambda_min_clipped");
        _c = config;
        _timesteps = DiffusersSchedule.MultistepTimesteps(config, steps, "dpmpp-2m");
        var ac = DiffusersSchedule.AlphasCumprod(config);
        var train = Sigmas.Training(ac);
        float last = config.FinalSigmasType == "sigma_min" ? MathF.Sqrt((1f - ac[0]) / ac[0]) : 0f;
        if (config.UseKarrasSigmas)
        {
            if (config.BetaSchedule == "squaredcos_cap_v2" && config.TrainedBetas is null)
                throw new PagSharpException("dpmpp-2m: Karras sigmas with beta_schedule squaredcos_cap_v2 (fractional timesteps) are not implemented");
            var (karras, kts) = Sigmas.KarrasSchedule(config, train, steps, round: true);
            _timesteps = kts.Select(t => (int)t).ToArray();
            _sigmas = karras.Select(s => (float)s).Append(last).ToArray();
        }
        else _sigmas = _timesteps.Select(t => (float)Sigmas.Interp(t, train)).Append(last).ToArray();
        Timesteps = _timesteps.Select(t => (float)t).ToArray();
    }

    public string Name => "dpmpp-2m";
    /// <summary>σ per step plus the final one.</summary>
    public IReadOnlyList<float> SigmaGrid => _sigmas;
    public bool VariancePreserving => true;

    /// <summary>Releases the stored model outputs.</summary>
    public void Dispose()
    {
        foreach (var t in _outputs) t?.Dispose();
    }
    public IReadOnlyList<float> Timesteps { get; }
    public float InitNoiseSigma => 1f;

    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex)
    {
        var (a, s) = AlphaSigma(_sigmas[stepIndex]);
        return a * original + s * noise;
    }

    private static (float Alpha, float Sigma) AlphaSigma(float sigma)
    {
        float a = 1f / MathF.Sqrt(sigma * sigma + 1);
        return (a, sigma * a);
    }

    private static float Lambda((float Alpha, float Sigma) x) => MathF.Log(x.Alpha) - MathF.Log(x.Sigma);

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        var modelOutput = output.Output;
        int n = _timesteps.Length;
        bool lowerFinal = stepIndex == n - 1 && (_c.EulerAtFinal || (_c.LowerOrderFinal && n < 15) || _c.FinalSigmasType == "zero");
        bool lowerSecond = stepIndex == n - 2 && _c.LowerOrderFinal && n < 15;
        _ = lowerSecond; // with solver_order 2 the second-order update is used whenever a previous output exists

        var s0 = AlphaSigma(_sigmas[stepIndex]);
        Tensor x0 = _c.PredictionType switch
        {
            "epsilon" => (sample - s0.Sigma * modelOutput) / s0.Alpha,
            "v_prediction" => s0.Alpha * sample - s0.Sigma * modelOutput,
            _ => modelOutput,
        };
        _outputs[0]?.Dispose();
        _outputs[0] = _outputs[1];
        _outputs[1] = x0.detach().clone().DetachFromDisposeScope();

        var t = AlphaSigma(_sigmas[stepIndex + 1]);
        float lambdaT = Lambda(t), lambdaS0 = Lambda(s0);
        float h = lambdaT - lambdaS0;
        float expm = MathF.Exp(-h) - 1f;
        Tensor prev;
        if (_lowerOrderNums < 1 || lowerFinal)
        {
            prev = t.Sigma / s0.Sigma * sample - t.Alpha * expm * x0;
        }
        else
        {
            var s1 = AlphaSigma(_sigmas[stepIndex - 1]);
            float h0 = lambdaS0 - Lambda(s1);
            float r0 = h0 / h;
            var d0 = _outputs[1]!;
            var d1 = 1f / r0 * (d0 - _outputs[0]!);
            prev = _c.SolverType == "heun"
                ? t.Sigma / s0.Sigma * sample - t.Alpha * expm * d0 + t.Alpha * (expm / h + 1f) * d1
                : t.Sigma / s0.Sigma * sample - t.Alpha * expm * d0 - 0.5f * (t.Alpha * expm) * d1;
        }
        if (_lowerOrderNums < 2) _lowerOrderNums++;
        return prev;
    }
}
