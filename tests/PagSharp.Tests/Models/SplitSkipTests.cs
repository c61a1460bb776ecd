using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Models;

/// <summary>A decoder ResBlock after a fork: the skip-only part computed once equals the plain concatenated forward.</summary>
public class SplitSkipTests
{
    [Theory]
    [InlineData(64, 64, 64, false, false)] // groups of 4: the boundary falls between groups
    [InlineData(64, 32, 64, false, true)]  // groups of 3: one group straddles h and the skip
    [InlineData(32, 32, 32, true, false)]
    [InlineData(33, 31, 32, false, false)] // groups of 2, straddling by one channel
    [InlineData(64, 32, 64, true, true)]   // 3×3 conv skip connection
    public void SplitEqualsConcatenated(int hCh, int skipCh, int outCh, bool scaleShift, bool convSkip)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var gen = new Generator(11);
        var block = new ResBlock(hCh + skipCh, 16, 0, outCh, scaleShift, useConvSkip: convSkip);
        foreach (var p in block.parameters()) p.copy_(randn(p.shape, generator: gen) * 0.2);
        block.eval();
        var skip = randn(new long[] { 3, skipCh, 8, 8 }, generator: gen);
        var copies = tensor(new long[] { 2, 0 });
        Tensor Widen(Tensor t) => cat(new[] { t, t.index_select(0, copies) }, 0);
        var h = randn(new long[] { 5, hCh, 8, 8 }, generator: gen);
        var emb = randn(new long[] { 5, 16 }, generator: gen);

        var expected = block.Forward(cat(new[] { h, Widen(skip) }, 1), emb);
        var split = block.ForwardSplitSkip(h, skip, new SkipWidening(Widen, (t, p) => t.add_(Widen(p))), emb);
        Assert.NotNull(split);
        Close.Assert(expected, split!, 1e-5, $"h {hCh} + skip {skipCh} → {outCh}");
    }

    [Fact]
    public void NotApplicableWithAnIdentitySkipOrResampling()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var h = randn(2, 32, 8, 8);
        var skip = randn(1, 32, 8, 8);
        var emb = randn(2, 16);
        Tensor Widen(Tensor t) => cat(new[] { t, t }, 0);
        Assert.Null(new ResBlock(64, 16, 0, 64, true).ForwardSplitSkip(h, skip, new SkipWidening(Widen, (t, p) => t.add_(Widen(p))), emb));
        Assert.Null(new ResBlock(64, 16, 0, 32, true, up: true).ForwardSplitSkip(h, skip, new SkipWidening(Widen, (t, p) => t.add_(Widen(p))), emb));
    }

    /// <summary>diffusers' ResnetBlock2D in an up block: the same split (its own group count, eps and activation).</summary>
    [Theory]
    [InlineData(64, 32, 32, 32)]  // groups of 3, straddling
    [InlineData(64, 64, 64, 32)]
    [InlineData(40, 24, 32, 8)]   // 8 groups of 8: the boundary is inside a group
    public void SdResnetSplitEqualsConcatenated(int hCh, int skipCh, int outCh, int groups)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var gen = new Generator(5);
        var block = new ResnetBlock2D(hCh + skipCh, outCh, 16, groups, 1e-6, "silu");
        foreach (var p in block.parameters()) p.copy_(randn(p.shape, generator: gen) * 0.2);
        block.eval();
        var skip = randn(new long[] { 2, skipCh, 8, 8 }, generator: gen);
        Tensor Widen(Tensor t) => cat(new[] { t, t }, 0);
        var h = randn(new long[] { 4, hCh, 8, 8 }, generator: gen);
        var temb = randn(new long[] { 4, 16 }, generator: gen);
        var expected = block.Forward(cat(new[] { h, Widen(skip) }, 1), temb);
        var split = block.ForwardSplitSkip(h, skip, new SkipWidening(Widen, (t, p) => t.add_(Widen(p))), temb);
        Assert.NotNull(split);
        Close.Assert(expected, split!, 1e-5, $"SD h {hCh} + skip {skipCh} → {outCh}, {groups} groups");
    }

    /// <summary>The split is taken where the padded-channel cost model expects a saving of at least 10%.</summary>
    [Theory]
    [InlineData(32, 32, 32, 32, 16, true)]    // aligned halves: 32·32 + 32·16 vs 64·32 → 0.75
    [InlineData(32, 32, 32, 48, 32, true)]    // CFG+PAG (3 branches from 2): 0.83
    [InlineData(64, 32, 32, 32, 16, false)]   // straddling group: 66 → 80 padded channels per branch, no saving
    [InlineData(1024, 512, 32, 2, 1, true)]   // large channels: the straddling group hardly matters
    [InlineData(1280, 640, 32, 2, 1, true)]   // SD up block
    [InlineData(64, 64, 32, 32, 32, false)]   // nothing forked: no saving
    [InlineData(60, 4, 32, 2, 1, false)]      // no group of skip channels alone
    public void SplitIsTakenWhereItPays(long hCh, long skipCh, long groups, long forked, long preFork, bool expected) =>
        Assert.Equal(expected, SplitSkip.Pays(hCh, skipCh, groups, forked, preFork));
}
