using PagSharp.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

public sealed class PrecisionRecallTests
{
    private static Tensor Points(params (double X, double Y)[] p) => tensor(p.SelectMany(q => new[] { q.X, q.Y }).ToArray()).reshape(p.Length, 2);

    [Fact]
    public void ConstructedCloudsGiveTheKnownAnswer()
    {
        // Reference: x = 0…9 on a line. k = 3 radii: 3 at both ends' first points, 2 inside.
        var reference = Points(Enumerable.Range(0, 10).Select(i => ((double)i, 0.0)).ToArray());
        // Generated: 0.5…4.5 on the line (inside the reference manifold) and 5 points far away.
        var generated = Points(Enumerable.Range(0, 5).Select(i => (i + 0.5, 0.0))
            .Concat(Enumerable.Range(0, 5).Select(i => (1000.0 + i, 50.0))).ToArray());
        // Generated radii on the line: 3, 2, 2, 2, 3 → balls cover [−2.5, 7.5]: reference points 0…7.
        var r = PrecisionRecall.Compute(reference, generated);
        Assert.Equal(0.5, r.Precision);
        Assert.Equal(0.8, r.Recall);

        // k = 1 shrinks the balls: generated radii are all 1 → cover [−0.5, 5.5]: reference 0…5.
        var r1 = PrecisionRecall.Compute(reference, generated, k: 1);
        Assert.Equal(0.5, r1.Precision);
        Assert.Equal(0.6, r1.Recall);
    }

    [Fact]
    public void IdenticalSetsHavePerfectPrecisionAndRecall_DisjointSetsHaveNone()
    {
        using var g = new Generator(3);
        using var x = randn([200, 5], generator: g);
        var same = PrecisionRecall.Compute(x, x.clone());
        Assert.Equal(1.0, same.Precision);
        Assert.Equal(1.0, same.Recall);
        // Duplicated points: k-NN radius 0, and each point still lies in its own ball.
        using var dup = cat([x.narrow(0, 0, 10), x.narrow(0, 0, 10), x.narrow(0, 0, 10), x.narrow(0, 0, 10)], 0);
        var d = PrecisionRecall.Compute(dup, dup.clone());
        Assert.Equal(1.0, d.Precision);
        Assert.Equal(1.0, d.Recall);
        var far = PrecisionRecall.Compute(x, x + 100);
        Assert.Equal(0.0, far.Precision);
        Assert.Equal(0.0, far.Recall);
    }

    [Fact]
    public void BlockwiseComputationEqualsOneBlock_2000x2000()
    {
        using var g = new Generator(4);
        using var real = randn([2000, 16], generator: g);
        using var fake = randn([2000, 16], generator: g) * 1.2 + 0.1;
        var whole = PrecisionRecall.Compute(real, fake, blockElements: 2000L * 2000);
        var blocks = PrecisionRecall.Compute(real, fake, blockElements: 2000L * 37); // 37-row blocks, last one partial
        Assert.Equal(whole, blocks);
        Assert.InRange(whole.Precision, 0.3, 1);
        Assert.InRange(whole.Recall, 0.3, 1);
        Assert.True(whole.Precision < 1 || whole.Recall < 1);
    }

    [Fact]
    public void InvalidInputsAreRejected()
    {
        Assert.Throws<PagSharpException>(() => PrecisionRecall.Compute(zeros(10, 3), zeros(10, 4)));
        Assert.Throws<PagSharpException>(() => PrecisionRecall.Compute(zeros(3, 3), zeros(10, 3)));
        Assert.Throws<PagSharpException>(() => PrecisionRecall.Compute(zeros(10, 3), zeros(10, 3), k: 0));
        Assert.Throws<PagSharpException>(() => PrecisionRecall.Compute(full(10, 3, double.NaN), zeros(10, 3)));
    }
}
