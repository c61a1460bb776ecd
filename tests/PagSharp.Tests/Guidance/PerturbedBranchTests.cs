using PagSharp.Attention;
using PagSharp.Denoisers;
using PagSharp.Guidance;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

/// <summary>SEG and skip-layer guidance as their own branches next to CFG and PAG: + s_j·(ε(c) − ε̃_j(c)).</summary>
public sealed class PerturbedBranchTests
{
    [Theory]
    [InlineData(false, false)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    public void CfgPagSegAndSlgFollowTheFormula_InOneBatchForkedOrSplit(bool sharedPrefix, bool splitBatch)
    {
        using var net = TestModels.Tiny(classConditional: true, seed: 4);
        using var g = new Generator(6);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var y = tensor(new long[] { 0, 1 });
        using var _ = no_grad();
        var names = net.AttentionLayers.Select(l => l.Name).ToArray();
        Assert.True(names.Length >= 2, "the tiny model needs two attention layers for this test");
        var settings = new GuidanceSettings
        {
            GuidanceScale = 2.5, PagScale = new ScaleSchedule.Constant(2), PagLayers = [names[0]],
            Perturbed = [PerturbedGuidance.Seg(1.5, 2.0, [names[0], names[1]]), PerturbedGuidance.Slg(3, [names[1]])],
            SharedPrefix = sharedPrefix, SplitBatch = splitBatch,
        };
        using var d = new GuidedDenoiser(TestModels.Adm(net, y), settings, 1000);
        var t = full(2, 300L);
        var c = TestModels.Fwd(net, x, t, y, null).Output;
        var u = TestModels.Fwd(net, x, t, full(2, 2L), null).Output;
        var p = TestModels.Fwd(net, x, t, y, PerturbationPlan.Perturb([names[0]], IdentityPerturbation.Instance)).Output;
        var seg = TestModels.Fwd(net, x, t, y, PerturbationPlan.Perturb([names[0], names[1]], new SegPerturbation(2.0))).Output;
        var slg = TestModels.Fwd(net, x, t, y, PerturbationPlan.Perturb([names[1]], SkipPerturbation.Instance)).Output;
        Assert.True(TestModels.MaxAbsDiff(c, seg) > 1e-4 && TestModels.MaxAbsDiff(c, slg) > 1e-4, "SEG and SLG must change the prediction");

        // Step 1 of 10 (10%): inside SLG's default window [1%, 20%).
        var inWindow = new StepContext(1, 10, 300);
        var expected = u + 2.5 * (c - u) + 2 * (c - p) + 1.5 * (c - seg) + 3 * (c - slg);
        TestModels.AssertClose(expected, d.Predict(x, inWindow).Output, 3e-5, "CFG + PAG + SEG + SLG");

        // Step 5 of 10 (50%): SLG is off, the others stay.
        var outside = new StepContext(5, 10, 300);
        var withoutSlg = u + 2.5 * (c - u) + 2 * (c - p) + 1.5 * (c - seg);
        TestModels.AssertClose(withoutSlg, d.Predict(x, outside).Output, 3e-5, "SLG outside its window");
    }

    [Fact]
    public void SegAloneIsItsOwnBranch_AndBadSettingsAreRefused()
    {
        using var net = TestModels.Tiny(classConditional: false, seed: 5);
        using var g = new Generator(7);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        using var _ = no_grad();
        var layer = net.AttentionLayers[0].Name;
        using var d = new GuidedDenoiser(TestModels.Adm(net, null), new GuidanceSettings { Perturbed = [PerturbedGuidance.Seg(3, double.PositiveInfinity, [layer])] }, 1000);
        var t = full(2, 500L);
        var c = TestModels.Fwd(net, x, t, null, null).Output;
        var seg = TestModels.Fwd(net, x, t, null, PerturbationPlan.Perturb([layer], new SegPerturbation(double.PositiveInfinity))).Output;
        TestModels.AssertClose(c + 3 * (c - seg), d.Predict(x, TestModels.At(t)).Output, 3e-5, "SEG alone");

        Assert.Contains("not a self-attention layer", Assert.Throws<PagSharpException>(() =>
            new GuidedDenoiser(TestModels.Adm(net, null), new GuidanceSettings { Perturbed = [PerturbedGuidance.Slg(2, ["nope"])] }, 1000)).Message);
        Assert.Contains("at least one layer", Assert.Throws<PagSharpException>(() =>
            new GuidanceSettings { Perturbed = [PerturbedGuidance.Seg(2, 1, [])] }.Validate()).Message);
        Assert.Contains("start < stop", Assert.Throws<PagSharpException>(() =>
            new GuidanceSettings { Perturbed = [PerturbedGuidance.Slg(2, [layer], 0.5, 0.2)] }.Validate()).Message);
    }

    [Fact]
    public void APlanRefusesTwoPerturbationsOnTheSameEntries()
    {
        var plan = new PerturbationPlan().Add("a", IdentityPerturbation.Instance, [0, 1]).Add("a", SkipPerturbation.Instance, [2, 3]);
        Assert.Equal(2, plan.EntriesOf("a").Count);
        Assert.Equal(new long[] { 0, 1, 2, 3 }, new PerturbationPlan().Add("a", SkipPerturbation.Instance, [0, 1]).Add("a", SkipPerturbation.Instance, [2, 3]).SkippedEntries("a", 4));
        Assert.Contains("twice", Assert.Throws<PagSharpException>(() => plan.Add("a", IdentityPerturbation.Instance, [1])).Message);
        Assert.Contains("twice", Assert.Throws<PagSharpException>(() => new PerturbationPlan().Add("b", IdentityPerturbation.Instance).Add("b", IdentityPerturbation.Instance, [0])).Message);
    }
}
