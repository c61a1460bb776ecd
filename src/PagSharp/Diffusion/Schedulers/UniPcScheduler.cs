using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// diffusers' <c>UniPCMultistepScheduler</c> (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"):
/// at every step the multistep predictor UniP-p and, from the second step on, the corrector UniC-p that reuses the
/// new model output, with the B(h) variants bh1 (B(h) = h) or bh2 (B(h) = e^h − 1), data prediction (x₀) by default,
/// order p = min(solver_order, steps left with lower_order_final, steps done + 1). Timesteps as DPM-Solver's (default
/// <c>linspace</c>: round(linspace(0, T−1, n+1)) reversed without the last), σ interpolated from the training table or
/// Karras levels; x_T is not scaled and neither is the network input. With α_t = 1/√(σ²+1), σ_t = σ·α_t,
/// λ = log α_t − log σ_t, h = λ_t − λ_s and hh = −h (x₀ prediction):
/// <list type="bullet">
/// <item>predictor: x_t = σ_t/σ_s·x − α_t·(e^{hh} − 1)·m₀ − α_t·B(h)·Σ ρᵖ_k·D_k, D_k = (m_k − m₀)/r_k, r_k = (λ_{s_k} − λ_s)/h,
/// ρᵖ = 0.5 for p = 2, else R⁻¹b over the first p − 1 rows;</item>
/// <item>corrector: the same from the previous sample with ρᶜ = R⁻¹b (0.5 for p = 1) and the extra term ρᶜ_p·(m_t − m₀).</item>
/// </list>
/// Scalars in float32, as diffusers' 0-dim tensors.
/// </summary>
public sealed class UniPcScheduler : ISigmaScheduler, IDisposable
{
    private readonly SchedulerConfig _c;
    private readonly float[] _sigmas;
    private readonly int[] _timesteps;
    private readonly Tensor?[] _outputs;
    private Tensor? _lastSample;
    private int _lowerOrderNums, _thisOrder;

    public UniPcScheduler(SchedulerConfig config, int steps)
    {
        DiffusersSchedule.CheckSteps(steps, config, "unipc");
        config.Refuse("unipc", "thresholding", "rescale_betas_zero_snr", "use_exponential_sigmas", "use_beta_sigmas", "use_flow_sigmas", "use_dynamic_shifting");
        if (config.PredictionType is not ("epsilon" or "v_prediction" or "sample"))
            throw new PagSharpException($"unipc: prediction_type '{config.PredictionType}' is not supported");
        _c = config;
        _outputs = new Tensor?[config.SolverOrder];
        _timesteps = DiffusersSchedule.MultistepTimesteps(config, steps, "unipc");
        var ac = DiffusersSchedule.AlphasCumprod(config);
        var train = Sigmas.Training(ac);
        if (config.UseKarrasSigmas)
        {
            var (karras, kts) = Sigmas.KarrasSchedule(config, train, steps, round: true);
            _timesteps = kts.Select(t => (int)t).ToArray();
            float last = config.FinalSigmasType == "sigma_min" ? (float)karras[^1] : 0f;
            _sigmas = karras.Select(s => (float)s).Append(last).ToArray();
        }
        else
        {
            float last = config.FinalSigmasType == "sigma_min" ? MathF.Sqrt((1f - ac[0]) / ac[0]) : 0f;
            _sigmas = _timesteps.Select(t => (float)Sigmas.Interp(t, train)).Append(last).ToArray();
        }
        Timesteps = _timesteps.Select(t => (float)t).ToArray();
    }

    public string Name => "unipc";
    public IReadOnlyList<float> Timesteps { get; }
    public float InitNoiseSigma => 1f;
    /// <summary>σ per step plus the final one.</summary>
    public IReadOnlyList<float> SigmaGrid => _sigmas;
    public bool VariancePreserving => true;
    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex)
    {
        var (a, s) = AlphaSigma(_sigmas[stepIndex]);
        return a * original + s * noise;
    }

    private static (float Alpha, float Sigma) AlphaSigma(float sigma)
    {
        float a = 1f / MathF.Sqrt(sigma * sigma + 1f);
        return (a, sigma * a);
    }

    private static float Lambda(float sigma)
    {
        var (a, s) = AlphaSigma(sigma);
        return MathF.Log(a) - MathF.Log(s);
    }

    private static float Expm1(float x) => Math.Abs(x) < 1e-5 ? x + x * x / 2 : (float)(Math.Exp(x) - 1.0);

    /// <summary>The model output as UniPC uses it: x̂₀ (predict_x0) or ε.</summary>
    private Tensor Convert(Tensor output, Tensor sample, int i)
    {
        var (a, s) = AlphaSigma(_sigmas[i]);
        if (_c.PredictX0)
            return _c.PredictionType switch
            {
                "epsilon" => (sample - s * output) / a,
                "v_prediction" => a * sample - s * output,
                _ => output,
            };
        return _c.PredictionType switch
        {
            "epsilon" => output,
            "v_prediction" => a * output + s * sample,
            _ => (sample - a * output) / s,
        };
    }

    /// <summary>hh, e^{hh} − 1, B(h) and the right-hand side b of the order conditions.</summary>
    private (float Hh, float HPhi1, float Bh, float[] B) Coefficients(float h, int order)
    {
        float hh = _c.PredictX0 ? -h : h;
        float hPhi1 = Expm1(hh);
        float hPhiK = hPhi1 / hh - 1f;
        float bh = _c.UniPcSolverType == "bh1" ? hh : Expm1(hh);
        var b = new float[order];
        float factorial = 1f;
        for (int k = 1; k <= order; k++)
        {
            b[k - 1] = hPhiK * factorial / bh;
            factorial *= k + 1;
            hPhiK = hPhiK / hh - 1f / factorial;
        }
        return (hh, hPhi1, bh, b);
    }

    /// <summary>Solves R·ρ = b with R[k][j] = r_j^k (Gaussian elimination with partial pivoting, float32).</summary>
    private static float[] Solve(float[] rks, float[] b, int n)
    {
        var m = new float[n, n + 1];
        for (int k = 0; k < n; k++)
        {
            for (int j = 0; j < n; j++) m[k, j] = MathF.Pow(rks[j], k);
            m[k, n] = b[k];
        }
        for (int col = 0; col < n; col++)
        {
            int piv = col;
            for (int r = col + 1; r < n; r++) if (MathF.Abs(m[r, col]) > MathF.Abs(m[piv, col])) piv = r;
            for (int j = 0; j <= n; j++) (m[col, j], m[piv, j]) = (m[piv, j], m[col, j]);
            for (int r = col + 1; r < n; r++)
            {
                float f = m[r, col] / m[col, col];
                for (int j = col; j <= n; j++) m[r, j] -= f * m[col, j];
            }
        }
        var x = new float[n];
        for (int r = n - 1; r >= 0; r--)
        {
            float acc = m[r, n];
            for (int j = r + 1; j < n; j++) acc -= m[r, j] * x[j];
            x[r] = acc / m[r, r];
        }
        return x;
    }

    /// <summary>The base update σ_t/σ_s·x − α_t·(e^{hh} − 1)·m₀ (x₀) or α_t/α_s·x − σ_t·(e^{hh} − 1)·m₀ (ε).</summary>
    private Tensor Base(Tensor x, Tensor m0, float sigmaT, float sigmaS, float hPhi1)
    {
        var (at, st) = AlphaSigma(sigmaT);
        var (a0, s0) = AlphaSigma(sigmaS);
        return _c.PredictX0 ? st / s0 * x - at * hPhi1 * m0 : at / a0 * x - st * hPhi1 * m0;
    }

    private float Outer(float sigmaT)
    {
        var (at, st) = AlphaSigma(sigmaT);
        return _c.PredictX0 ? at : st;
    }

    /// <summary>UniP-p (B(h)) from step i to i + 1.</summary>
    private Tensor Predict(Tensor x, int order, int i)
    {
        float sigmaT = _sigmas[i + 1], sigmaS = _sigmas[i];
        float lambdaS = Lambda(sigmaS), h = Lambda(sigmaT) - lambdaS;
        var m0 = _outputs[^1]!;
        var rks = new List<float>();
        var d1s = new List<Tensor>();
        for (int k = 1; k < order; k++)
        {
            float rk = (Lambda(_sigmas[i - k]) - lambdaS) / h;
            rks.Add(rk);
            d1s.Add((_outputs[^(k + 1)]! - m0) / rk);
        }
        rks.Add(1f);
        var (_, hPhi1, bh, b) = Coefficients(h, order);
        var xt = Base(x, m0, sigmaT, sigmaS, hPhi1);
        if (d1s.Count == 0) return xt;
        var rhos = order == 2 ? new[] { 0.5f } : Solve(rks.ToArray(), b, order - 1);
        Tensor res = rhos[0] * d1s[0];
        for (int k = 1; k < d1s.Count; k++) res = res + rhos[k] * d1s[k];
        return xt - Outer(sigmaT) * bh * res;
    }

    /// <summary>UniC-p (B(h)): corrects the sample of step i with the model output there.</summary>
    private Tensor Correct(Tensor modelT, Tensor lastSample, int order, int i)
    {
        float sigmaT = _sigmas[i], sigmaS = _sigmas[i - 1];
        float lambdaS = Lambda(sigmaS), h = Lambda(sigmaT) - lambdaS;
        var m0 = _outputs[^1]!;
        var rks = new List<float>();
        var d1s = new List<Tensor>();
        for (int k = 1; k < order; k++)
        {
            float rk = (Lambda(_sigmas[i - (k + 1)]) - lambdaS) / h;
            rks.Add(rk);
            d1s.Add((_outputs[^(k + 1)]! - m0) / rk);
        }
        rks.Add(1f);
        var (_, hPhi1, bh, b) = Coefficients(h, order);
        var rhos = order == 1 ? new[] { 0.5f } : Solve(rks.ToArray(), b, order);
        var xt = Base(lastSample, m0, sigmaT, sigmaS, hPhi1);
        Tensor corr = rhos[^1] * (modelT - m0);
        for (int k = 0; k < d1s.Count; k++) corr = rhos[k] * d1s[k] + corr;
        return xt - Outer(sigmaT) * bh * corr;
    }

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        int i = stepIndex, n = _timesteps.Length, order = _c.SolverOrder;
        var m = Convert(output.Output, sample, i);
        bool correct = i > 0 && !_c.DisableCorrector.Contains(i - 1) && _lastSample is not null;
        if (correct) sample = Correct(m, _lastSample!, _thisOrder, i);
        _outputs[0]?.Dispose();
        for (int k = 0; k < order - 1; k++) _outputs[k] = _outputs[k + 1];
        _outputs[^1] = m.detach().clone().DetachFromDisposeScope();
        int thisOrder = _c.LowerOrderFinal ? Math.Min(order, n - i) : order;
        _thisOrder = Math.Min(thisOrder, _lowerOrderNums + 1);
        _lastSample?.Dispose();
        _lastSample = sample.detach().clone().DetachFromDisposeScope();
        var prev = Predict(sample, _thisOrder, i);
        if (_lowerOrderNums < order) _lowerOrderNums++;
        return prev;
    }

    public void Dispose()
    {
        foreach (var t in _outputs) t?.Dispose();
        _lastSample?.Dispose();
    }
}
