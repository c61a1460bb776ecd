using PagSharp.Denoisers;
using PagSharp.Guidance;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

/// <summary>APG and CFG-Zero* in the guidance engine against their formulas written out here (tiny ADM, labels 0 and 1).</summary>
public sealed class ApgZeroStarTests
{
    private static (PagSharp.Models.Adm.AdmUNet Net, Tensor Y, Tensor X) Setup()
    {
        var net = TestModels.Tiny(classConditional: true);
        using var g = new Generator(8);
        return (net, tensor(new long[] { 0, 1 }), randn(new long[] { 2, 3, 16, 16 }, generator: g));
    }

    private static (Tensor C, Tensor U) Branches(PagSharp.Models.Adm.AdmUNet net, Tensor x, Tensor y, long t) =>
        (TestModels.Fwd(net, x, full(2, t), y, null).Output, TestModels.Fwd(net, x, full(2, t), full(2, 2L), null).Output);

    [Fact]
    public void ApgWithEtaOneNoCapNoMomentumIsCfg()
    {
        var (net, y, x) = Setup();
        using var _ = net;
        using var noGrad = no_grad();
        var step = new StepContext(0, 10, 500);
        using var apg = new GuidedDenoiser(TestModels.Adm(net, y), new GuidanceSettings { GuidanceScale = 4, Apg = new ApgSettings { Eta = 1, NormThreshold = 0 } }, 1000);
        using var cfg = new GuidedDenoiser(TestModels.Adm(net, y), new GuidanceSettings { GuidanceScale = 4 }, 1000);
        TestModels.AssertClose(cfg.Predict(x, step).Output, apg.Predict(x, step).Output, 1e-5, "APG(η=1, r=0, β=none) = CFG");
    }

    [Fact]
    public void ApgMatchesItsFormulaWithCapAndMomentumOverTwoSteps()
    {
        var (net, y, x) = Setup();
        using var _ = net;
        using var noGrad = no_grad();
        var settings = new GuidanceSettings { GuidanceScale = 5, Apg = new ApgSettings { Eta = 0.25, NormThreshold = 2, Momentum = -0.5 } };
        using var d = new GuidedDenoiser(TestModels.Adm(net, y), settings, 1000);
        Tensor? running = null;
        foreach (var (i, t) in new[] { (0, 900L), (1, 800L) })
        {
            var (c, u) = Branches(net, x, y, t);
            var diff = c - u;
            running = running is null ? diff : diff + (-0.5) * running;
            var capped = running * minimum(ones_like(running), 2 / running.flatten(1).norm(1, keepdim: true).view(-1, 1, 1, 1));
            var c64 = c.to_type(ScalarType.Float64);
            var v1 = c64 / c64.flatten(1).norm(1, keepdim: true).view(-1, 1, 1, 1);
            var par = (capped.to_type(ScalarType.Float64) * v1).sum(new long[] { 1, 2, 3 }, keepdim: true) * v1;
            var orth = capped.to_type(ScalarType.Float64) - par;
            var expected = u + 5 * (orth.to_type(ScalarType.Float32) + 0.25 * par.to_type(ScalarType.Float32));
            TestModels.AssertClose(expected, d.Predict(x, new StepContext(i, 10, t)).Output, 1e-4, $"APG step {i}");
        }
        using var plainCfg = new GuidedDenoiser(TestModels.Adm(net, y), new GuidanceSettings { GuidanceScale = 5 }, 1000);
        Assert.True(TestModels.MaxAbsDiff(plainCfg.Predict(x, new StepContext(0, 10, 900)).Output, d.Predict(x, new StepContext(0, 10, 900)).Output) > 1e-3, "APG changed nothing");
    }

    [Fact]
    public void CfgZeroStarMatchesItsScale_AndZeroesItsFirstSteps()
    {
        var (net, y, x) = Setup();
        using var _ = net;
        using var noGrad = no_grad();
        var settings = new GuidanceSettings { GuidanceScale = 3, CfgZeroStar = true, ZeroInitSteps = 1 };
        using var d = new GuidedDenoiser(TestModels.Adm(net, y), settings, 1000);
        var first = d.Predict(x, new StepContext(0, 10, 900)).Output;
        Assert.Equal(0f, first.abs().max().item<float>());
        var (c, u) = Branches(net, x, y, 800);
        var alphas = new float[2];
        for (int b = 0; b < 2; b++)
        {
            var cb = c[b].flatten(); var ub = u[b].flatten();
            alphas[b] = (cb * ub).sum().item<float>() / ((ub * ub).sum().item<float>() + 1e-8f);
        }
        var scaled = u * tensor(alphas).view(2, 1, 1, 1);
        var expected = scaled + 3 * (c - scaled);
        TestModels.AssertClose(expected, d.Predict(x, new StepContext(1, 10, 800)).Output, 1e-5, "CFG-Zero* at step 1");
        Assert.Throws<PagSharpException>(() => new GuidedDenoiser(TestModels.Adm(net, y), settings with { Apg = new ApgSettings() }, 1000));
    }
}
