using PagSharp.Pipelines;
using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

public class SagTests
{
    private static GaussianDiffusion Original => GaussianDiffusion.Create("linear", 1000, "", VarianceType.LearnedRange);

    private static GuidanceSettings Sag(double s, double w = 1, bool split = false, SagFormula formula = SagFormula.Paper) => new()
    {
        GuidanceScale = w,
        SplitBatch = split,
        Sag = new SagSettings { Scale = new ScaleSchedule.Constant(s), KernelSize = 5, BlurSigma = 1.5, Formula = formula },
    };

    [Fact]
    public void AttentionMask_MatchesAHandComputation()
    {
        // 1 image, 2 heads, 2×2 token grid (T = 4), 4×4 image. Head 0: every query attends only to key 0, so key 0
        // receives 4 and the others 0. Head 1: uniform, every key receives 1. Mean over heads: key 0 gets 2.5,
        // keys 1–3 get 0.5, so only key 0 (grid cell (0,0)) exceeds 1.
        var head0 = new float[16];
        for (int q = 0; q < 4; q++) head0[q * 4] = 1;
        var head1 = Enumerable.Repeat(0.25f, 16).ToArray();
        var map = tensor(head0.Concat(head1).ToArray(), new long[] { 1, 2, 4, 4 });
        var mask = SagDenoiser.AttentionMask(map, 4, 4);
        var expected = new float[]
        {
            1, 1, 0, 0,
            1, 1, 0, 0,
            0, 0, 0, 0,
            0, 0, 0, 0,
        };
        TestModels.AssertBitwiseEqual(tensor(expected, new long[] { 1, 1, 4, 4 }), mask, "mask");

        // Uniform attention gives exactly 1 per key: "more than the mean" is strict, so nothing is masked.
        var uniform = full(new long[] { 1, 2, 4, 4 }, 0.25f);
        Assert.Equal(0, SagDenoiser.AttentionMask(uniform, 4, 4).sum().item<float>());

        // A 2-image batch on a non-square 2×4 image with a 1×2 grid (T = 2): image 0 favours key 1, image 1 key 0.
        var m2 = tensor(new float[] { 0.2f, 0.8f, 0.1f, 0.9f, 0.7f, 0.3f, 0.6f, 0.4f }, new long[] { 2, 1, 2, 2 });
        var mk = SagDenoiser.AttentionMask(m2, 2, 4);
        var e2 = new float[] { 0, 0, 1, 1, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0 };
        TestModels.AssertBitwiseEqual(tensor(e2, new long[] { 2, 1, 2, 4 }), mk, "non-square mask");
    }

    [Fact]
    public void BlurMasked_BlursOnlyWhereTheMaskIsOne()
    {
        using var g = new Generator(1);
        var x0 = randn(new long[] { 1, 3, 8, 8 }, generator: g);
        var mask = zeros(1, 1, 8, 8);
        mask[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Slice(0, 4), TensorIndex.Colon] = tensor(1f);
        var blurred = PagSharp.Imaging.GaussianBlur.Apply(x0, 5, 1.5);
        var result = SagDenoiser.BlurMasked(x0, mask, 5, 1.5);
        TestModels.AssertClose(blurred[.., .., ..4, ..], result[.., .., ..4, ..], 1e-7, "masked rows are blurred");
        TestModels.AssertBitwiseEqual(x0[.., .., 4.., ..], result[.., .., 4.., ..], "unmasked rows are kept");
    }

    [Fact]
    public void DefaultLayer_FollowsTheOfficialDepth2_ElseTheFirstLowestOutputLayer()
    {
        AttentionLayerInfo L(string name, string group, int res) => new(name, group, res, 64, 4);
        // ADM-256-like: output_blocks.0–2 at 8×8, then 16×16.
        var adm = new[] { L("input_blocks.10.1", "input", 8), L("middle_block.1", "middle", 8), L("output_blocks.0.1", "output", 8),
                          L("output_blocks.1.1", "output", 8), L("output_blocks.2.1", "output", 8), L("output_blocks.3.1", "output", 16) };
        Assert.Equal("output_blocks.2.1", SagDenoiser.DefaultLayer(adm));
        using var a = TestModels.FixtureA(); // output_blocks.0.1 and .1.1 at 8×8, .2.1 at 16×16
        Assert.Equal("output_blocks.0.1", SagDenoiser.DefaultLayer(a.AttentionLayers));
        Assert.Equal("middle_block.1", SagDenoiser.DefaultLayer(new[] { L("input_blocks.1.1", "input", 8), L("middle_block.1", "middle", 4) }));
        Assert.Throws<PagSharpException>(() => SagDenoiser.DefaultLayer(new[] { L("input_blocks.1.1", "input", 8) }));
    }

    [Fact]
    public void DegradedInput_WithAnEmptyMaskAndNoClipping_ReproducesXt()
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false);
        var d = new SagDenoiser(TestModels.Adm(net, null), Sag(0.5), Original, clipXstart: false);
        using var g = new Generator(3);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var eps = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var uniform = full(new long[] { 2, 4, 64, 64 }, 1f / 64);
        var t = full(2, 300L);
        TestModels.AssertClose(x, d.DegradedInput(x, t, eps, uniform), 2e-5, "x̄_t with M = 0");
        // All queries attend to key 0 (token (0,0) of the 8×8 grid): key 0 receives 64, the others 0, so M = 1 on
        // the top-left 2×2 pixels, where x̄_t = √ᾱ·blur(x̂0) + √(1−ᾱ)·ε; elsewhere x̄_t = x_t.
        var toKey0 = zeros(2, 4, 64, 64);
        toKey0[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Colon, 0] = tensor(1f);
        double ab = Original.AlphasCumprod[300];
        var x0 = Math.Sqrt(1 / ab) * x - Math.Sqrt(1 / ab - 1) * eps;
        var blurredXt = Math.Sqrt(ab) * PagSharp.Imaging.GaussianBlur.Apply(x0, 5, 1.5) + Math.Sqrt(1 - ab) * eps;
        var m = zeros(1, 1, 16, 16);
        m[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Slice(0, 2), TensorIndex.Slice(0, 2)] = tensor(1f);
        var expected = blurredXt * m + x * (1 - m);
        TestModels.AssertClose(expected, d.DegradedInput(x, t, eps, toKey0), 1e-4, "x̄_t with M = 1 on key 0's cell");
    }

    [Fact]
    public void Unconditional_MatchesTheDefinition_AndChangesEps()
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false);
        var model = TestModels.Adm(net, null);
        var d = new SagDenoiser(model, Sag(0.75), Original);
        Assert.Equal("output_blocks.0.1", d.Layer);
        using var g = new Generator(5);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var t = full(2, 600L);
        var o = d.Predict(x, TestModels.At(t));

        var plan = new PerturbationPlan().Capture(d.Layer);
        var plain = TestModels.Fwd(net, x, t, null, plan);
        var map = plan.TakeCaptured(d.Layer);
        Assert.Equal(new long[] { 2, 4, 64, 64 }, map.shape);
        var epsBar = TestModels.Fwd(net, d.DegradedInput(x, t, plain.Output, map), t, null, null).Output;
        TestModels.AssertClose(plain.Output + 0.75 * (plain.Output - epsBar), o.Output, 1e-6, "ε + s(ε − ε̄)");
        TestModels.AssertBitwiseEqual(plain.VarValues!, o.VarValues!, "variance from the unperturbed branch");
        Assert.True(TestModels.MaxAbsDiff(plain.Output, o.Output) > 1e-3, "SAG did not change ε");

        // Official convention: g = 1 + s gives the same guidance.
        var official = new SagDenoiser(model, Sag(1.75, formula: SagFormula.Official), Original).Predict(x, TestModels.At(t));
        TestModels.AssertClose(o.Output, official.Output, 1e-5, "official g = 1 + s");
        // Scale 0 is plain sampling.
        TestModels.AssertBitwiseEqual(plain.Output, new SagDenoiser(model, Sag(0), Original).Predict(x, TestModels.At(t)).Output, "s = 0");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void WithCfg_UsesTheUnconditionalBranchForMapEpsAndCondition(bool splitBatch)
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: true);
        var y = tensor(new long[] { 0, 1 });
        var model = TestModels.Adm(net, y);
        var d = new SagDenoiser(model, Sag(0.5, w: 3, split: splitBatch), Original);
        using var g = new Generator(6);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var t = full(2, 500L);
        var o = d.Predict(x, TestModels.At(t));

        var nul = full(2, 2L);
        var plan = new PerturbationPlan().Capture(d.Layer);
        var u = TestModels.Fwd(net, x, t, nul, plan);
        var c = TestModels.Fwd(net, x, t, y, null);
        var epsBar = TestModels.Fwd(net, d.DegradedInput(x, t, u.Output, plan.TakeCaptured(d.Layer)), t, nul, null).Output;
        var expected = u.Output + 3 * (c.Output - u.Output) + 0.5 * (u.Output - epsBar);
        TestModels.AssertClose(expected, o.Output, 1e-5, "CFG + SAG");
        TestModels.AssertClose(c.VarValues!, o.VarValues!, 1e-5, "variance from the conditional branch");

        var cfgOnly = new GuidedDenoiser(model, new GuidanceSettings { GuidanceScale = 3 }, 1000).Predict(x, TestModels.At(t));
        Assert.True(TestModels.MaxAbsDiff(cfgOnly.Output, o.Output) > 1e-3, "SAG did not change ε under CFG");
    }

    [Fact]
    public void ConditionalWithoutCfg_GuidesTheConditionalBranch()
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: true);
        var y = tensor(new long[] { 1, 0 });
        var d = new SagDenoiser(TestModels.Adm(net, y), Sag(0.5), Original);
        using var g = new Generator(7);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var t = full(2, 250L);
        var plan = new PerturbationPlan().Capture(d.Layer);
        var c = TestModels.Fwd(net, x, t, y, plan);
        var epsBar = TestModels.Fwd(net, d.DegradedInput(x, t, c.Output, plan.TakeCaptured(d.Layer)), t, y, null).Output;
        TestModels.AssertClose(c.Output + 0.5 * (c.Output - epsBar), d.Predict(x, TestModels.At(t)).Output, 1e-6, "conditional SAG");
    }

    [Fact]
    public void Sampler_RunsSagWithCfg_EndToEnd()
    {
        using var net = TestModels.Tiny(classConditional: true);
        var spec = DiffusionSpec.Of(net.Config);
        var model = TestModels.Adm(net, tensor(new long[] { 0 }));
        var baseOptions = new SamplingOptions { Steps = 3, Labels = new[] { 0, 1 }, Seed = 4, BatchSize = 2, Guidance = new GuidanceSettings { GuidanceScale = 2 } };
        var cfg = Sampler.Sample(net, baseOptions, new long[] { 0, 1 });
        var sag = Sampler.Sample(net, baseOptions with { Guidance = Sag(0.8, w: 2) }, new long[] { 0, 1 });
        Assert.False(sag.isnan().any().item<bool>());
        Assert.True(TestModels.MaxAbsDiff(cfg, sag) > 1e-4, "SAG changed nothing");
        Assert.IsType<SagDenoiser>(Sampler.CreateDenoiser(model, spec, baseOptions with { Guidance = Sag(0.8) }));
        Assert.IsType<GuidedDenoiser>(Sampler.CreateDenoiser(model, spec, baseOptions));
    }

    [Fact]
    public void InvalidSettings_AreRejectedWithClearMessages()
    {
        using var net = TestModels.Tiny(classConditional: true);
        var y = tensor(new long[] { 0 });
        var model = TestModels.Adm(net, y);
        PagSharpException Fails(Action a) => Assert.Throws<PagSharpException>(a);

        Assert.Contains("cannot be combined", Fails(() => new SagDenoiser(model, Sag(1) with { PagScale = new ScaleSchedule.Constant(1), PagLayers = new[] { "middle_block.1" } }, Original)).Message);
        Assert.Contains("official-ADM SAG formula", Fails(() => new SagDenoiser(model, Sag(1.5, w: 3, formula: SagFormula.Official), Original)).Message);
        Assert.Contains("input_blocks.3.1", Fails(() => new SagDenoiser(model, Sag(1) with { Sag = Sag(1).Sag! with { Layer = "nope" } }, Original)).Message);
        Assert.Contains("non-respaced", Fails(() => new SagDenoiser(model, Sag(1), GaussianDiffusion.Create("linear", 1000, "ddim10", VarianceType.LearnedRange))).Message);
        Assert.Contains("positive odd", Fails(() => new SagDenoiser(model, Sag(1) with { Sag = Sag(1).Sag! with { KernelSize = 4 } }, Original)).Message);
        Assert.Contains("SagDenoiser", Fails(() => new GuidedDenoiser(model, Sag(1), 1000)).Message);
        var big = new SamplingOptions { Steps = 2, Labels = new[] { 0 }, Guidance = Sag(1) with { Sag = Sag(1).Sag! with { KernelSize = 33 } } };
        Assert.Contains("SagSettings.KernelSize ≤ 31", Fails(() => Sampler.Sample(net, big, new long[] { 0 })).Message);
    }
}
