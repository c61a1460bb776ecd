using PagSharp.Attention;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Attention;

public class BatchForkTests
{
    /// <summary>AddWidened adds the widened pre-fork tensor in place, for consecutive and scattered fork sources.</summary>
    [Theory]
    [InlineData(new long[] { 0, 1, 2 })]   // PAG alone: every entry is copied
    [InlineData(new long[] { 3, 4, 5 })]   // CFG+PAG: the conditional half of [uncond, cond]
    [InlineData(new long[] { 5, 0 })]      // scattered
    public void AddWidenedEqualsAddingTheWidenedCopy(long[] source)
    {
        using var scope = NewDisposeScope();
        using var gen = new Generator(3);
        long b = 6;
        var plan = PerturbationPlan.Perturb(new[] { "l" }, IdentityPerturbation.Instance, null, null, source);
        using var fork = new BatchFork(plan);
        var h = randn(new long[] { b, 4, 3, 3 }, generator: gen);
        var forked = fork.Fork(h);
        Assert.Equal(b + source.Length, forked.shape[0]);
        Close.Assert(cat(new[] { h, h.index_select(0, tensor(source)) }, 0), forked, 0, "fork appends copies of the source entries");

        var pre = randn(new long[] { b, 4, 3, 3 }, generator: gen);
        var target = randn(forked.shape, generator: gen);
        var expected = target + fork.Widen(pre);
        var result = fork.AddWidened(target, pre);
        Assert.Same(target, result);
        Close.Assert(expected, target, 0, "in-place widened add");
    }
}
