using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// guided-diffusion's samplers as schedulers: ancestral DDPM (<c>p_sample_loop</c>, with improved-DDPM learned or
/// fixed variances) and DDIM (<c>ddim_sample_loop</c>) over a respaced <see cref="GaussianDiffusion"/>, so ADM models
/// keep their reference arithmetic (float64 coefficients cast to float32) in the loop every family shares. Step i of
/// the loop is index N−1−i of the respaced chain; its model timestep is <see cref="GaussianDiffusion.TimestepMap"/>
/// there. ε-prediction only.
/// <list type="bullet">
/// <item>DDPM (Ho et al. 2020, Alg. 2): x_{t−1} = μ_θ(x_t, x̂0) + 1[t&gt;0]·exp(½·log σ²_t)·z.</item>
/// <item>DDIM (Song et al. 2021, eq. 12): x̂0 from ε (clipped when asked), ε re-derived from the clipped x̂0 as
/// guided-diffusion does, then x_{t−1} = x̂0·√ᾱ_{t−1} + √(1 − ᾱ_{t−1} − σ²)·ε + σ·z with
/// σ = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1}).</item>
/// </list>
/// </summary>
public sealed class GaussianDiffusionScheduler : IScheduler
{
    private readonly bool _ddim;
    private readonly double _eta;
    private readonly bool _clip;

    /// <param name="diffusion">The respaced process.</param>
    /// <param name="ddim">DDIM instead of ancestral DDPM.</param>
    /// <param name="eta">DDIM's η (0 = deterministic).</param>
    /// <param name="clipDenoised">Clip x̂0 to [−1, 1] at every step.</param>
    public GaussianDiffusionScheduler(GaussianDiffusion diffusion, bool ddim, double eta = 0, bool clipDenoised = true)
    {
        if (double.IsNaN(eta) || eta < 0) throw new PagSharpException($"eta must be ≥ 0 (got {eta})");
        Diffusion = diffusion;
        _ddim = ddim;
        _eta = eta;
        _clip = clipDenoised;
        int n = diffusion.NumSteps;
        Timesteps = Enumerable.Range(0, n).Select(i => (float)diffusion.TimestepMap[n - 1 - i]).ToArray();
    }

    public GaussianDiffusion Diffusion { get; }
    public string Name => _ddim ? "ddim" : "ddpm";
    public IReadOnlyList<float> Timesteps { get; }
    public float InitNoiseSigma => 1f;
    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => sample;

    /// <summary>q(x_t | x0) at the respaced step's ᾱ (guided-diffusion's <c>q_sample</c>).</summary>
    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex)
    {
        int n = Diffusion.NumSteps;
        double a = Diffusion.AlphasCumprod[n - 1 - stepIndex];
        return (float)Math.Sqrt(a) * original + (float)Math.Sqrt(1 - a) * noise;
    }

    /// <summary>Keep a copy of each step's x̂0 in <see cref="LastPredXstart"/> (for previews and checks; off by default).</summary>
    public bool KeepPredXstart { get; init; }

    /// <summary>x̂0 of the last step (clipped when asked) when <see cref="KeepPredXstart"/> is set; owned by the scheduler.</summary>
    public Tensor? LastPredXstart { get; private set; }

    private void Keep(Tensor x0)
    {
        if (!KeepPredXstart) return;
        LastPredXstart?.Dispose();
        LastPredXstart = x0.detach().clone().DetachFromDisposeScope();
    }

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        var d = Diffusion;
        int i = d.NumSteps - 1 - stepIndex;
        using var t = GaussianDiffusion.Steps(i, sample.shape[0], sample.device);
        if (!_ddim)
        {
            var (mean, logVar, x0) = d.PMeanVariance(sample, t, output.Output, output.VarValues, _clip);
            Keep(x0);
            if (i == 0) return mean;
            if (noise is null) throw new PagSharpException("ddpm needs a noise source");
            return mean + (0.5 * logVar).exp() * noise.Randn(sample.shape[1..]);
        }
        var xStart = d.PredictXstartFromEps(sample, t, output.Output);
        if (_clip) xStart = xStart.clamp(-1, 1);
        Keep(xStart);
        var eps = d.PredictEpsFromXstart(sample, t, xStart);
        var ab = GaussianDiffusion.Extract(d.AlphasCumprod, t, (int)sample.dim());
        var abPrev = GaussianDiffusion.Extract(d.AlphasCumprodPrev, t, (int)sample.dim());
        var sigma = _eta * ((1 - abPrev) / (1 - ab)).sqrt() * (1 - ab / abPrev).sqrt();
        var next = xStart * abPrev.sqrt() + (1 - abPrev - sigma.square()).sqrt() * eps;
        if (_eta > 0 && i > 0)
        {
            if (noise is null) throw new PagSharpException("ddim with eta > 0 needs a noise source");
            next = next + sigma * noise.Randn(sample.shape[1..]);
        }
        return next;
    }
}
