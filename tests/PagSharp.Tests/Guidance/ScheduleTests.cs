using PagSharp.Guidance;
using PagSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

public class ScheduleTests
{
    [Fact]
    public void Constant_And_Linear()
    {
        Assert.Equal(2.5, new ScaleSchedule.Constant(2.5).At(123, 1000));
        var ramp = new ScaleSchedule.Linear(AtStart: 4, AtEnd: 1);
        Assert.Equal(4, ramp.At(999, 1000), 12);
        Assert.Equal(1, ramp.At(0, 1000), 12);
        Assert.Equal(2, ramp.At(333, 1000), 12);
        Assert.Equal(4 - 3 * 19 / 999.0, ramp.At(980, 1000), 12); // DDIM-50's first step is t = 980, not 999
        Assert.Equal(1, ramp.At(0, 1), 12);
    }

    [Fact]
    public void Adaptive_IsDiffusersFormula_AndReachesZeroQuicklyForLargeRates()
    {
        // diffusers computes s − a·(1000 − t) with float32 operands (_get_pag_scale); so does PagSharp, for every family.
        var gentle = new ScaleSchedule.Adaptive(Scale: 3, Rate: 0.001);
        Assert.Equal((double)(3f - 0.001f * 1f), gentle.At(999, 1000));
        Assert.Equal(2.999, gentle.At(999, 1000), 6);
        Assert.Equal(2.5, gentle.At(500, 1000), 6);
        Assert.Equal(2.0, gentle.At(0, 1000), 6);

        // The pitfall: with a = 0.1 the scale is already 1 at DDIM-50's first step (t = 980) and 0 from t = 970 on.
        var steep = new ScaleSchedule.Adaptive(Scale: 3, Rate: 0.1);
        Assert.Equal(2.9, steep.At(999, 1000), 6);
        Assert.Equal(1.0, steep.At(980, 1000), 6);
        Assert.Equal(0.0, steep.At(970, 1000), 9);
        Assert.Equal(0.0, steep.At(960, 1000));
        Assert.Equal(0.0, steep.At(0, 1000));
    }

    [Fact]
    public void PrintedForm_IsStable()
    {
        // run.json stores these strings; a resumed run compares them.
        Assert.Equal("Constant { Scale = 2 }", new ScaleSchedule.Constant(2).ToString());
        Assert.Equal("Linear { AtStart = 3, AtEnd = 1 }", new ScaleSchedule.Linear(3, 1).ToString());
        Assert.Equal("Adaptive { Scale = 3, Rate = 0.01 }", new ScaleSchedule.Adaptive(3, 0.01).ToString());
    }

    [Fact]
    public void Schedules_RejectNegativeAndNaN()
    {
        Assert.Throws<PagSharpException>(() => new ScaleSchedule.Constant(-1).Validate("x"));
        Assert.Throws<PagSharpException>(() => new ScaleSchedule.Linear(1, double.NaN).Validate("x"));
        Assert.Throws<PagSharpException>(() => new ScaleSchedule.Adaptive(3, -0.1).Validate("x"));
        var e = Assert.Throws<PagSharpException>(() => new GuidanceSettings { GuidanceSchedule = new ScaleSchedule.Linear(-2, 1) }.Validate());
        Assert.Contains("guidance scale ramp", e.Message);
    }

    [Fact]
    public void CfgPagAndSag_UseScheduleAndInterval()
    {
        var g = new GuidanceSettings
        {
            GuidanceSchedule = new ScaleSchedule.Linear(5, 1),
            GuidanceInterval = (900, 100),
            PagScale = new ScaleSchedule.Constant(2),
            PagLayers = new[] { "middle_block.1" },
            PagInterval = (999, 500),
        };
        Assert.Equal(1, g.CfgScaleAt(950, 1000));            // outside the CFG interval: off (w = 1)
        Assert.Equal(1 + 4 * 800 / 999.0, g.CfgScaleAt(800, 1000), 12);
        Assert.Equal(1, g.CfgScaleAt(50, 1000));             // outside again
        Assert.Equal(1, new GuidanceSettings { GuidanceSchedule = new ScaleSchedule.Linear(0.5, 0.5) }.CfgScaleAt(500, 1000)); // w ≤ 1 = off
        Assert.Equal(3, new GuidanceSettings { GuidanceScale = 3 }.CfgScaleAt(10, 1000)); // the constant case
        Assert.True(g.UsesCfg);
        Assert.False(new GuidanceSettings { GuidanceSchedule = new ScaleSchedule.Linear(1, 0.5) }.UsesCfg);

        Assert.Equal(2, g.PagScaleAt(700, 1000));
        Assert.Equal(0, g.PagScaleAt(400, 1000));

        var sag = new GuidanceSettings { Sag = new SagSettings { Scale = new ScaleSchedule.Linear(1, 0), Interval = (600, 200) } };
        Assert.Equal(0, sag.SagScaleAt(700, 1000));
        Assert.Equal(333 / 999.0, sag.SagScaleAt(333, 1000), 12);
        Assert.Equal(0, sag.SagScaleAt(100, 1000));
        Assert.Throws<PagSharpException>(() => (g with { GuidanceInterval = (100, 900) }).Validate());
        Assert.Throws<PagSharpException>(() => new GuidanceSettings { Sag = new SagSettings { Scale = new ScaleSchedule.Constant(1), Interval = (1, 2) } }.Validate());
    }

    [Fact]
    public void GuidedDenoiser_AppliesCfgOnlyInsideItsInterval()
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: true);
        using var gen = new Generator(4);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: gen);
        var y = tensor(new long[] { 0, 1 });
        var model = TestModels.Adm(net, y);
        var settings = new GuidanceSettings { GuidanceScale = 3, GuidanceInterval = (600, 0) };
        var d = new GuidedDenoiser(model, settings, 1000);

        var tOut = full(2, 800L);
        var plain = TestModels.Fwd(net, x, tOut, y, null).Output;
        TestModels.AssertBitwiseEqual(plain, d.Predict(x, TestModels.At(tOut)).Output, "outside the interval: conditional ε");

        var tIn = full(2, 400L);
        var cond = TestModels.Fwd(net, x, tIn, y, null).Output;
        var uncond = TestModels.Fwd(net, x, tIn, full(2, 2L), null).Output;
        // One batched [uncond, cond] call vs two separate calls: float32 rounding differs slightly.
        TestModels.AssertClose(uncond + 3 * (cond - uncond), d.Predict(x, TestModels.At(tIn)).Output, 1e-4, "inside: CFG");
    }

    /// <summary>
    /// PAG cache interval 3 over a 7-step trajectory: steps 0, 3, 6 run the perturbed branch (equal to exact PAG), the
    /// others add s·Δ with Δ = ε(c) − ε̂(c) of the last computed step; a new trajectory (t going up) starts over, and
    /// CFG+PAG and the official formula reuse the same Δ.
    /// </summary>
    [Theory]
    [InlineData(false, PagFormula.Paper)]
    [InlineData(true, PagFormula.Paper)]
    [InlineData(false, PagFormula.Official)]
    public void PagCacheInterval_ReusesTheLastComputedDirection(bool cfg, PagFormula formula)
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: true);
        using var gen = new Generator(5);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: gen);
        var y = tensor(new long[] { 0, 1 });
        var model = TestModels.Adm(net, y);
        double s = formula == PagFormula.Official ? 2.5 : 1.5, w = cfg ? 3 : 1;
        var exactSettings = new GuidanceSettings
        {
            GuidanceScale = w, PagScale = new ScaleSchedule.Constant(s), PagLayers = new[] { "middle_block.1" }, Formula = formula,
        };
        var exact = new GuidedDenoiser(model, exactSettings, 1000);
        var cached = new GuidedDenoiser(model, exactSettings with { PagCacheInterval = 3 }, 1000);
        var plan = PagSharp.Attention.PerturbationPlan.Perturb(exactSettings.PagLayers, PagSharp.Attention.IdentityPerturbation.Instance);

        Tensor? direction = null;
        int[] ts = { 900, 800, 700, 600, 500, 400, 300 };
        for (int trajectory = 0; trajectory < 2; trajectory++)
            for (int i = 0; i < ts.Length; i++)
            {
                var t = full(2, (long)ts[i]);
                var got = cached.Predict(x, TestModels.At(t)).Output;
                if (i % 3 == 0)
                {
                    TestModels.AssertClose(exact.Predict(x, TestModels.At(t)).Output, got, 1e-6, $"computed step {i}");
                    direction = TestModels.Fwd(net, x, t, y, null).Output - TestModels.Fwd(net, x, t, y, plan).Output;
                }
                else
                {
                    var cond = TestModels.Fwd(net, x, t, y, null).Output;
                    var basis = cfg ? TestModels.Fwd(net, x, t, full(2, 2L), null).Output * (1 - w) + w * cond : cond;
                    double coef = formula == PagFormula.Official ? s - 1 : s;
                    TestModels.AssertClose(basis + coef * direction!, got, 1e-4, $"reused step {i} (trajectory {trajectory})");
                    // …and it is not exact PAG: the direction is from an earlier step.
                    Assert.True(TestModels.MaxAbsDiff(exact.Predict(x, TestModels.At(t)).Output, got) > 1e-4, $"step {i} should differ from exact PAG");
                }
            }
        Assert.Throws<PagSharpException>(() => new GuidedDenoiser(model, exactSettings with { PagCacheInterval = 0 }, 1000));
    }
}
