using PagSharp.Denoisers;
using PagSharp.Guidance;
using PagSharp.Pipelines;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

/// <summary>Autoguidance (Karras et al. 2024): ε(c) + s·(ε(c) − ε_bad(c)) with a weaker model, composable with CFG and PAG.</summary>
public sealed class AutoguidanceTests
{
    [Fact]
    public void TheSameModelAsGuideIsNoGuidance()
    {
        using var net = TestModels.Tiny(classConditional: false);
        using var g = new Generator(2);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        using var _ = no_grad();
        var step = new StepContext(0, 1, 600);
        using var auto = new GuidedDenoiser(TestModels.Adm(net, null), new GuidanceSettings { AutoguidanceScale = new ScaleSchedule.Constant(2) }, 1000, guide: TestModels.Adm(net, null));
        var plain = TestModels.Adm(net, null).Forward(x, step, [Branch.Conditional], null).Output;
        TestModels.AssertClose(plain, auto.Predict(x, step).Output, 1e-6, "guide = model");
    }

    [Fact]
    public void AWeakerGuideFollowsTheFormula_WithCfgAndPag()
    {
        using var good = TestModels.Tiny(classConditional: true, seed: 1);
        using var bad = TestModels.Tiny(classConditional: true, seed: 2);
        using var g = new Generator(3);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var y = tensor(new long[] { 0, 1 });
        using var _ = no_grad();
        var layers = new[] { good.AttentionLayers[0].Name };
        var settings = new GuidanceSettings
        {
            GuidanceScale = 3, PagScale = new ScaleSchedule.Constant(2), PagLayers = layers, AutoguidanceScale = new ScaleSchedule.Constant(1.5),
        };
        using var d = new GuidedDenoiser(TestModels.Adm(good, y), settings, 1000, guide: TestModels.Adm(bad, y));
        var t = full(2, 400L);
        var c = TestModels.Fwd(good, x, t, y, null).Output;
        var u = TestModels.Fwd(good, x, t, full(2, 2L), null).Output;
        var p = TestModels.Fwd(good, x, t, y, PagSharp.Attention.PerturbationPlan.Perturb(layers, PagSharp.Attention.IdentityPerturbation.Instance)).Output;
        var b = TestModels.Fwd(bad, x, t, y, null).Output;
        var expected = u + 3 * (c - u) + 2 * (c - p) + 1.5 * (c - b);
        TestModels.AssertClose(expected, d.Predict(x, TestModels.At(t)).Output, 2e-5, "CFG + PAG + autoguidance");
        Assert.Contains("needs a guide model", Assert.Throws<PagSharpException>(() => new GuidedDenoiser(TestModels.Adm(good, y), settings, 1000)).Message);
        // Through the sampler, with a guide of another config refused.
        var options = new SamplingOptions { Steps = 2, BatchSize = 2, Labels = [0, 1], Guidance = settings };
        using var samples = Sampler.Sample(good, options, [0, 1], guide: bad);
        Assert.True(samples.isfinite().all().item<bool>());
        using var other = TestModels.Tiny(classConditional: false);
        Assert.Contains("same config", Assert.Throws<PagSharpException>(() => Sampler.Sample(good, options, [0, 1], guide: other)).Message);
    }
}

/// <summary>Start/stop fractions of the steps for CFG, PAG and autoguidance (diffusers' guider start/stop).</summary>
public sealed class StepWindowTests
{
    [Fact]
    public void MethodsApplyOnlyInsideTheirStepWindows()
    {
        Assert.True(GuidanceSettings.InSteps((0.2, 0.6), 2, 10));
        Assert.False(GuidanceSettings.InSteps((0.2, 0.6), 6, 10));
        Assert.False(GuidanceSettings.InSteps((0.2, 0.6), 1, 10));
        Assert.True(GuidanceSettings.InSteps(null, 9, 10));

        using var net = TestModels.Tiny(classConditional: true);
        using var g = new Generator(5);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var y = tensor(new long[] { 0, 1 });
        using var _ = no_grad();
        var layers = new[] { net.AttentionLayers[0].Name };
        var settings = new GuidanceSettings
        {
            GuidanceScale = 3, GuidanceSteps = (0.0, 0.5), PagScale = new ScaleSchedule.Constant(2), PagLayers = layers, PagSteps = (0.5, 1.0),
        };
        using var d = new GuidedDenoiser(TestModels.Adm(net, y), settings, 1000);
        var t = full(2, 500L);
        var c = TestModels.Fwd(net, x, t, y, null).Output;
        var u = TestModels.Fwd(net, x, t, full(2, 2L), null).Output;
        var p = TestModels.Fwd(net, x, t, y, PagSharp.Attention.PerturbationPlan.Perturb(layers, PagSharp.Attention.IdentityPerturbation.Instance)).Output;
        TestModels.AssertClose(u + 3 * (c - u), d.Predict(x, new StepContext(1, 4, 500)).Output, 2e-5, "step 1 of 4: CFG only");
        TestModels.AssertClose(c + 2 * (c - p), d.Predict(x, new StepContext(3, 4, 500)).Output, 2e-5, "step 3 of 4: PAG only");
        Assert.Throws<PagSharpException>(() => new GuidedDenoiser(TestModels.Adm(net, y), settings with { PagSteps = (0.6, 0.4) }, 1000));
    }
}
