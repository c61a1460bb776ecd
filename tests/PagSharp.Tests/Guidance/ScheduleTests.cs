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
        var gentle = new ScaleSchedule.Adaptive(Scale: 3, Rate: 0.001);
        Assert.Equal(2.999, gentle.At(999, 1000), 12);
        Assert.Equal(2.5, gentle.At(500, 1000), 12);
        Assert.Equal(2.0, gentle.At(0, 1000), 12);

        // The pitfall: with a = 0.1 the scale is already 1 at DDIM-50's first step (t = 980) and 0 from t = 970 on.
        var steep = new ScaleSchedule.Adaptive(Scale: 3, Rate: 0.1);
        Assert.Equal(2.9, steep.At(999, 1000), 12);
        Assert.Equal(1.0, steep.At(980, 1000), 9);
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
        var model = new AdmDiffusionModel(net);
        using var gen = new Generator(4);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: gen);
        var y = tensor(new long[] { 0, 1 });
        var settings = new GuidanceSettings { GuidanceScale = 3, GuidanceInterval = (600, 0) };
        var d = new GuidedDenoiser(model, settings, y, 1000);

        var tOut = full(2, 800L);
        var plain = model.Forward(x, tOut, y, null).Eps;
        TestModels.AssertBitwiseEqual(plain, d.Predict(x, tOut).Eps, "outside the interval: conditional ε");

        var tIn = full(2, 400L);
        var cond = model.Forward(x, tIn, y, null).Eps;
        var uncond = model.Forward(x, tIn, full(2, 2L), null).Eps;
        // One batched [uncond, cond] call vs two separate calls: float32 rounding differs slightly.
        TestModels.AssertClose(uncond + 3 * (cond - uncond), d.Predict(x, tIn).Eps, 1e-4, "inside: CFG");
    }
}
