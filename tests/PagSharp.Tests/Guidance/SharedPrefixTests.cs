using PagSharp.Attention;
using PagSharp.Guidance;
using PagSharp.Models;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

/// <summary>The shared-prefix fork equals running the perturbed branch as its own batch entries from the start.</summary>
public class SharedPrefixTests
{
    public static TheoryData<string> LayerChoices => new()
    {
        "middle_block.1", "input_blocks.3.1", "input_blocks.5.1", "output_blocks.0.1", "output_blocks.3.1",
        "input_blocks.3.1,output_blocks.2.1", "input,middle", "all",
    };

    [Theory]
    [MemberData(nameof(LayerChoices))]
    public void ForkEqualsUnsharedComputation(string spec)
    {
        using var _ = no_grad();
        using var net = AdmA.Load();
        var cases = AdmA.Tensors("cases.safetensors");
        var x = cases["x"];
        var t = cases["t"];
        var layers = LayerSpec.Resolve(spec, net.AttentionLayers);
        // Unshared: [x; x[1,3]] with the copies perturbed. Shared: x alone, entries 1 and 3 forked at the first perturbed layer.
        var copies = tensor(new long[] { 1, 3 });
        var unshared = net.Forward(cat(new[] { x, x.index_select(0, copies) }), cat(new[] { t, t.index_select(0, copies) }), null,
            PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance, new long[] { 4, 5 }));
        var shared = net.Forward(x, t, null, PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance, new long[] { 4, 5 }, null, new long[] { 1, 3 }));
        Assert.Equal(new long[] { 6, 6, 32, 32 }, shared.shape);
        Close.Assert(unshared, shared, 1e-5, $"fork at {spec}");
        // The same without computing the decoder's skip-only part once (the split is exact up to rounding).
        net.SplitSkips = false;
        var plain = net.Forward(x, t, null, PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance, new long[] { 4, 5 }, null, new long[] { 1, 3 }));
        Close.Assert(unshared, plain, 1e-5, $"fork at {spec} without split skips");
        TensorAssert.DisposeAll(cases);
    }

    [Theory]
    [InlineData(false, "identity")]
    [InlineData(true, "identity")]
    [InlineData(true, "seg:1")]
    [InlineData(false, "seg:inf")]
    [InlineData(true, "heads")]
    public void GuidedDenoiserGivesTheSameEpsWithAndWithoutSharedPrefix(bool cfg, string perturbation)
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: true);
        using var gen = new Generator(3);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: gen);
        var y = tensor(new long[] { 0, 1 });
        var model = TestModels.Adm(net, y);
        var t = full(2, 700L);
        var layers = net.AttentionLayers.Select(l => l.Name).ToArray();
        var g = new GuidanceSettings { GuidanceScale = cfg ? 3 : 1, PagScale = new ScaleSchedule.Constant(2), PagLayers = layers,
                                       Perturbation = PagSharp.Attention.PerturbationSpec.Parse(perturbation == "heads" ? "identity" : perturbation),
                                       PagHeads = perturbation == "heads" ? new Dictionary<string, int[]> { [layers[0]] = [1] } : new Dictionary<string, int[]>() };
        var shared = new GuidedDenoiser(model, g, 1000).Predict(x, TestModels.At(t));
        var naive = new GuidedDenoiser(model, g with { SharedPrefix = false }, 1000).Predict(x, TestModels.At(t));
        // Network outputs agree within 1e-5 (test above); the guided ε = ε + s(ε − ε̂) (+ CFG) amplifies that by ≤ 1 + 2s + 2w.
        Close.Assert(naive.Output, shared.Output, 1e-5 * (1 + 2 * 2 + (cfg ? 2 * 3 : 0)), "guided ε");
        Close.Assert(naive.VarValues!, shared.VarValues!, 1e-5, "variance values");
    }
}
