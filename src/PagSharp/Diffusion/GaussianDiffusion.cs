using static TorchSharp.torch;

namespace PagSharp.Diffusion;

/// <summary>How the model's variance is obtained (guided-diffusion's ModelVarType).</summary>
public enum VarianceType { FixedSmall, FixedLarge, LearnedRange }

/// <summary>
/// A (possibly respaced) Gaussian diffusion process as guided-diffusion's GaussianDiffusion + SpacedDiffusion:
/// all coefficients in float64, cast to float32 where applied. Index i addresses the respaced chain;
/// <see cref="TimestepMap"/>[i] is the original timestep the model sees.
/// </summary>
public sealed class GaussianDiffusion
{
    public int NumSteps { get; }
    public int[] TimestepMap { get; }
    public int OriginalSteps { get; }
    public VarianceType Variance { get; }
    public double[] Betas { get; }
    public double[] AlphasCumprod { get; }
    public double[] AlphasCumprodPrev { get; }
    public double[] SqrtRecipAlphasCumprod { get; }
    public double[] SqrtRecipm1AlphasCumprod { get; }
    public double[] PosteriorVariance { get; }
    public double[] PosteriorLogVarianceClipped { get; }
    public double[] PosteriorMeanCoef1 { get; }
    public double[] PosteriorMeanCoef2 { get; }
    public double[] SqrtAlphasCumprod { get; }
    public double[] SqrtOneMinusAlphasCumprod { get; }
    private readonly double[] _logBetas, _logFixedLarge;

    /// <summary>The process with β from <paramref name="schedule"/> over <paramref name="steps"/>, respaced by <paramref name="respacing"/>.</summary>
    public static GaussianDiffusion Create(string schedule, int steps, string respacing, VarianceType variance)
    {
        var baseBetas = BetaSchedules.Get(schedule, steps);
        var use = Respacing.SpaceTimesteps(steps, respacing);
        var useSet = new HashSet<int>(use);
        double last = 1.0, ac = 1.0;
        var newBetas = new List<double>();
        var map = new List<int>();
        for (int i = 0; i < steps; i++)
        {
            ac *= 1.0 - baseBetas[i];
            if (!useSet.Contains(i)) continue;
            newBetas.Add(1 - ac / last);
            last = ac;
            map.Add(i);
        }
        return new GaussianDiffusion(newBetas.ToArray(), map.ToArray(), steps, variance);
    }

    public GaussianDiffusion(double[] betas, int[] timestepMap, int originalSteps, VarianceType variance)
    {
        if (betas.Length == 0 || betas.Any(b => !(b > 0 && b <= 1)))
            throw new PagSharpException("betas must be in (0, 1]");
        Betas = betas;
        TimestepMap = timestepMap;
        OriginalSteps = originalSteps;
        Variance = variance;
        int n = NumSteps = betas.Length;
        AlphasCumprod = new double[n];
        double acc = 1;
        for (int i = 0; i < n; i++) AlphasCumprod[i] = acc *= 1 - betas[i];
        AlphasCumprodPrev = new double[n];
        AlphasCumprodPrev[0] = 1;
        Array.Copy(AlphasCumprod, 0, AlphasCumprodPrev, 1, n - 1);
        SqrtAlphasCumprod = AlphasCumprod.Select(Math.Sqrt).ToArray();
        SqrtOneMinusAlphasCumprod = AlphasCumprod.Select(a => Math.Sqrt(1 - a)).ToArray();
        SqrtRecipAlphasCumprod = AlphasCumprod.Select(a => Math.Sqrt(1 / a)).ToArray();
        SqrtRecipm1AlphasCumprod = AlphasCumprod.Select(a => Math.Sqrt(1 / a - 1)).ToArray();
        PosteriorVariance = new double[n];
        PosteriorMeanCoef1 = new double[n];
        PosteriorMeanCoef2 = new double[n];
        for (int i = 0; i < n; i++)
        {
            PosteriorVariance[i] = betas[i] * (1 - AlphasCumprodPrev[i]) / (1 - AlphasCumprod[i]);
            PosteriorMeanCoef1[i] = betas[i] * Math.Sqrt(AlphasCumprodPrev[i]) / (1 - AlphasCumprod[i]);
            PosteriorMeanCoef2[i] = (1 - AlphasCumprodPrev[i]) * Math.Sqrt(1 - betas[i]) / (1 - AlphasCumprod[i]);
        }
        PosteriorLogVarianceClipped = new double[n];
        for (int i = 0; i < n; i++) PosteriorLogVarianceClipped[i] = Math.Log(n > 1 && i == 0 ? PosteriorVariance[1] : PosteriorVariance[i]);
        if (n == 1) PosteriorLogVarianceClipped[0] = Math.Log(betas[0]);
        _logBetas = betas.Select(b => Math.Log(b)).ToArray();
        _logFixedLarge = betas.Select((b, i) => Math.Log(i == 0 && n > 1 ? PosteriorVariance[1] : b)).ToArray();
    }

    /// <summary>arr[t] cast to float32 and shaped [B,1,1,…] to broadcast against a tensor of rank <paramref name="rank"/>.</summary>
    public static Tensor Extract(double[] arr, Tensor t, int rank)
    {
        using var all = tensor(arr, dtype: ScalarType.Float64, device: t.device);
        var v = all.index_select(0, t).to_type(ScalarType.Float32);
        var shape = new long[rank];
        shape[0] = t.shape[0];
        for (int i = 1; i < rank; i++) shape[i] = 1;
        return v.reshape(shape);
    }

    /// <summary>Index tensor [B] filled with step index <paramref name="i"/>.</summary>
    public static Tensor Steps(int i, long batch, Device? device = null) => full(batch, i, dtype: ScalarType.Int64, device: device);

    /// <summary>The original timesteps the model sees for respaced indices <paramref name="t"/>.</summary>
    public Tensor ModelTimesteps(Tensor t)
    {
        using var map = tensor(TimestepMap.Select(v => (long)v).ToArray(), device: t.device);
        return map.index_select(0, t);
    }

    /// <summary>q(x_t | x_0): √ᾱ_t·x0 + √(1−ᾱ_t)·ε.</summary>
    public Tensor QSample(Tensor x0, Tensor t, Tensor noise) =>
        Extract(SqrtAlphasCumprod, t, (int)x0.dim()) * x0 + Extract(SqrtOneMinusAlphasCumprod, t, (int)x0.dim()) * noise;

    /// <summary>x̂0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε.</summary>
    public Tensor PredictXstartFromEps(Tensor x, Tensor t, Tensor eps) =>
        Extract(SqrtRecipAlphasCumprod, t, (int)x.dim()) * x - Extract(SqrtRecipm1AlphasCumprod, t, (int)x.dim()) * eps;

    /// <summary>ε = (√(1/ᾱ_t)·x_t − x̂0) / √(1/ᾱ_t − 1).</summary>
    public Tensor PredictEpsFromXstart(Tensor x, Tensor t, Tensor x0) =>
        (Extract(SqrtRecipAlphasCumprod, t, (int)x.dim()) * x - x0) / Extract(SqrtRecipm1AlphasCumprod, t, (int)x.dim());

    /// <summary>Posterior q(x_{t−1} | x_t, x_0): mean and clipped log-variance.</summary>
    public (Tensor Mean, Tensor LogVariance) QPosterior(Tensor x0, Tensor x, Tensor t)
    {
        int r = (int)x.dim();
        var mean = Extract(PosteriorMeanCoef1, t, r) * x0 + Extract(PosteriorMeanCoef2, t, r) * x;
        return (mean, Extract(PosteriorLogVarianceClipped, t, r));
    }

    /// <summary>The model's log-variance for this process: learned range interpolates log β̃_t and log β_t.</summary>
    public Tensor ModelLogVariance(Tensor t, Tensor? varValues, Tensor like)
    {
        int r = (int)like.dim();
        switch (Variance)
        {
            case VarianceType.LearnedRange:
                if (varValues is null) throw new PagSharpException("a learned-range model must output variance values");
                var minLog = Extract(PosteriorLogVarianceClipped, t, r);
                var maxLog = Extract(_logBetas, t, r);
                var frac = (varValues + 1) / 2;
                return frac * maxLog + (1 - frac) * minLog;
            case VarianceType.FixedLarge:
                return Extract(_logFixedLarge, t, r).expand_as(like);
            default:
                return Extract(PosteriorLogVarianceClipped, t, r).expand_as(like);
        }
    }

    /// <summary>p(x_{t−1} | x_t) from a model output: mean, log-variance and x̂0 (clipped to [−1,1] when asked).</summary>
    public (Tensor Mean, Tensor LogVariance, Tensor PredXstart) PMeanVariance(Tensor x, Tensor t, Tensor eps, Tensor? varValues, bool clip)
    {
        var logVar = ModelLogVariance(t, varValues, x);
        var x0 = PredictXstartFromEps(x, t, eps);
        if (clip) x0 = x0.clamp(-1, 1);
        var (mean, _) = QPosterior(x0, x, t);
        return (mean, logVar, x0);
    }
}
