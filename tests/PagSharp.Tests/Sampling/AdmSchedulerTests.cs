using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Models.Adm;
using PagSharp.Pipelines;
using PagSharp.Tests.Guidance;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sampling;

/// <summary>
/// ADM models driven by the σ-schedulers through the σ-bridge (pag sample --scheduler euler|dpmpp-2m), with PAG,
/// against the loops written out here from the formulas: ᾱ = cumprod(1 − β) of the model's own β (float32),
/// σ_t = √((1 − ᾱ_t)/ᾱ_t) interpolated at fractional timesteps, the network fed x/√(σ² + 1) at float t.
/// </summary>
public sealed class AdmSchedulerTests
{
    private const double Tol = 2e-4;

    private static (AdmUNet Net, GuidanceSettings G, Tensor XT) Setup()
    {
        var net = TestModels.Tiny(classConditional: false);
        var g = new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = [net.AttentionLayers[0].Name] };
        using var source = new NoiseSource([0L, 1L]);
        return (net, g, source.Randn(3, 16, 16));
    }

    /// <summary>ε + s·(ε − ε̂) at float timestep t for input x (the unguided and perturbed passes run separately).</summary>
    private static Tensor GuidedEps(AdmUNet net, GuidanceSettings g, Tensor x, double t)
    {
        using var tt = full(x.shape[0], t, dtype: ScalarType.Float32);
        var eps = net.Forward(x, tt)[.., ..3];
        var pert = net.Forward(x, tt, null, PerturbationPlan.Perturb(g.PagLayers, IdentityPerturbation.Instance))[.., ..3];
        return eps + 2 * (eps - pert);
    }

    private static (float[] Sigmas, float[] Table) SigmaTable(int T)
    {
        var betas = BetaSchedules.Get("linear", T).Select(b => (float)b).ToArray();
        var table = new float[T];
        float ac = 1f;
        for (int i = 0; i < T; i++) { ac *= 1f - betas[i]; table[i] = MathF.Sqrt((1f - ac) / ac); }
        return (betas, table);
    }

    private static double Interp(double t, float[] table)
    {
        int j = (int)Math.Floor(t);
        return j >= table.Length - 1 ? table[^1] : table[j] + (t - j) * ((double)table[j + 1] - table[j]);
    }

    /// <summary>With <c>ClipDenoised</c> (the default, as guided-diffusion's clip_denoised) x̂₀ is clipped to [−1, 1] at every step.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EulerMatchesTheLoopWrittenOut(bool clip)
    {
        var (net, g, xT) = Setup();
        using var _ = net;
        using var noGrad = no_grad();
        const int n = 4, T = 1000;
        var (_, table) = SigmaTable(T);
        var ts = Enumerable.Range(0, n).Select(i => (float)(T - 1 - i * (T - 1.0) / (n - 1))).ToArray(); // linspace(0, T−1, n) reversed
        var sig = ts.Select(t => (float)Interp(t, table)).Append(0f).ToArray();
        var x = xT * sig[0]; // x_T·σ_max
        for (int i = 0; i < n; i++)
        {
            var eps = GuidedEps(net, g, x / MathF.Sqrt(sig[i] * sig[i] + 1), ts[i]);
            var x0 = x - sig[i] * eps;
            if (clip) x0 = x0.clamp(-1, 1);
            x = x + (x - x0) / sig[i] * (sig[i + 1] - sig[i]);
        }
        var options = new SamplingOptions { Scheduler = "euler", Steps = n, Guidance = g, BatchSize = 2, ClipDenoised = clip };
        using var lib = Sampler.Sample(net, options, [0, 1], xT);
        // Clipped, the samples are O(1) while the arithmetic runs at σ ≈ 157 (the linear schedule's σ_max): float32
        // rounding of x − σ·ε there is ~1e-5 per operation, so the tolerance is absolute.
        TestModels.AssertClose(x, lib, clip ? 1e-3 : Tol * x.abs().max().item<float>(), "euler with PAG on ADM");
        if (clip)
        {
            Assert.True(lib.abs().max().item<float>() <= 1.0001f, "clipped x̂₀ ends in [−1, 1]");
            using var unclipped = Sampler.Sample(net, options with { ClipDenoised = false }, [0, 1], xT);
            Assert.True(TestModels.MaxAbsDiff(unclipped, lib) > 1e-2, "clipping changed nothing, so the comparison proves little");
        }
        using var noPag = Sampler.Sample(net, options with { Guidance = new GuidanceSettings() }, [0, 1], xT);
        Assert.True(TestModels.MaxAbsDiff(noPag, lib) > 100 * Tol, "PAG changed nothing, so the comparison proves little");
        using var ddim = Sampler.Sample(net, options with { Scheduler = "ddim" }, [0, 1], xT);
        Assert.True(TestModels.MaxAbsDiff(ddim, lib) > 1e-2, "euler and ddim gave the same samples");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DpmSolverPlusPlus2MMatchesTheLoopWrittenOut(bool clip)
    {
        var (net, g, xT) = Setup();
        using var _ = net;
        using var noGrad = no_grad();
        const int n = 4, T = 1000;
        var (_, table) = SigmaTable(T);
        // round(linspace(0, T−1, n+1)) reversed, without the last.
        var ts = Enumerable.Range(0, n + 1).Select(i => Math.Round(i * (T - 1.0) / n, MidpointRounding.ToEven)).Reverse().Take(n).ToArray();
        var sig = ts.Select(t => (float)Interp(t, table)).Append(0f).ToArray();
        static (float A, float S) AS(float s) { float a = 1f / MathF.Sqrt(s * s + 1); return (a, s * a); }
        static float Lambda((float A, float S) v) => MathF.Log(v.A) - MathF.Log(v.S);
        var x = xT.clone();
        Tensor? prevX0 = null;
        for (int i = 0; i < n; i++)
        {
            var s0 = AS(sig[i]);
            var eps = GuidedEps(net, g, x, ts[i]);
            var x0 = (x - s0.S * eps) / s0.A;
            if (clip) x0 = x0.clamp(-1, 1);
            var t1 = AS(sig[i + 1]);
            float h = Lambda(t1) - Lambda(s0), e = MathF.Exp(-h) - 1f;
            bool firstOrder = prevX0 is null || i == n - 1; // first step; the last with a zero final σ
            if (firstOrder) x = t1.S / s0.S * x - t1.A * e * x0;
            else
            {
                float r0 = (Lambda(s0) - Lambda(AS(sig[i - 1]))) / h;
                var d1 = 1f / r0 * (x0 - prevX0!);
                x = t1.S / s0.S * x - t1.A * e * x0 - 0.5f * (t1.A * e) * d1;
            }
            prevX0 = x0;
        }
        var options = new SamplingOptions { Scheduler = "dpmpp-2m", Steps = n, Guidance = g, BatchSize = 2, ClipDenoised = clip };
        using var lib = Sampler.Sample(net, options, [0, 1], xT);
        TestModels.AssertClose(x, lib, Tol * x.abs().max().item<float>(), "DPM++ 2M with PAG on ADM");
    }

    [Fact]
    public void RespacingIsForDdpmAndDdimOnly()
    {
        var o = new SamplingOptions { Scheduler = "euler", TimestepRespacing = "ddim10" };
        Assert.Contains("TimestepRespacing applies to the ddpm and ddim schedulers only", Assert.Throws<PagSharpException>(o.Validate).Message);
        Assert.Contains("valid: ddpm, ddim, euler", Assert.Throws<PagSharpException>(new SamplingOptions { Scheduler = "heun" }.Validate).Message);
    }
}
