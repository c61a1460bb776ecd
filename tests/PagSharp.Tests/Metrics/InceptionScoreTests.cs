using PagSharp.Metrics;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

public sealed class InceptionScoreTests
{
    [Fact]
    public void UniformPredictionsScoreOne()
    {
        using var p = full(100, 10, 0.1, dtype: ScalarType.Float64);
        var (mean, std) = InceptionScore.Compute(p);
        Assert.Equal(1.0, mean, 1e-12);
        Assert.Equal(0.0, std, 1e-12);
    }

    [Fact]
    public void ConfidentBalancedPredictionsScoreTheClassCount()
    {
        using var labels = arange(200).remainder(8);
        using var p = nn.functional.one_hot(labels, 8).to_type(ScalarType.Float64);
        Assert.Equal(8.0, InceptionScore.Compute(p, splits: 1).Mean, 1e-9);
        Assert.Equal(8.0, InceptionScore.Compute(p, splits: 5).Mean, 1e-9); // each split of 40 is balanced too
    }

    [Fact]
    public void SplitsFollowTheOriginalIndexing()
    {
        // 3 splits of 7 rows: rows [0,2), [2,4), [4,7). Rows 0–1 confident in class 0 → split 0 scores 1.
        var rows = new double[7][];
        for (int i = 0; i < 7; i++) rows[i] = i < 2 ? [1, 0] : i % 2 == 0 ? [1, 0] : [0, 1];
        using var p = tensor(rows.SelectMany(r => r).ToArray()).reshape(7, 2);
        double[] expected = [1, 2, Math.Exp(2.0 / 3 * Math.Log(1.5) + 1.0 / 3 * Math.Log(3))];
        var (mean, std) = InceptionScore.Compute(p, splits: 3);
        double m = expected.Average();
        Assert.Equal(m, mean, 1e-12);
        Assert.Equal(Math.Sqrt(expected.Sum(e => (e - m) * (e - m)) / 3), std, 1e-12);
    }

    [Fact]
    public void ShufflingSplitsClassOrderedRows()
    {
        using var labels = arange(400).div(50, rounding_mode: RoundingMode.floor); // 8 classes, class-major
        using var p = nn.functional.one_hot(labels, 8).to_type(ScalarType.Float64);
        Assert.Equal(1.0, InceptionScore.Compute(p, splits: 8).Mean, 1e-9); // every split holds one class
        var shuffled = InceptionScore.Compute(p, splits: 8, shuffleSeed: 0);
        Assert.InRange(shuffled.Mean, 6, 8);
        Assert.Equal(shuffled, InceptionScore.Compute(p, splits: 8, shuffleSeed: 0));
    }

    [Fact]
    public void InvalidInputsAreRejected()
    {
        Assert.Throws<PagSharpException>(() => InceptionScore.Compute(full(5, 10, 0.1), splits: 10));
        Assert.Throws<PagSharpException>(() => InceptionScore.Compute(ones(20, 3)));
        Assert.Throws<PagSharpException>(() => InceptionScore.Compute(ones(20)));
        Assert.Throws<PagSharpException>(() => InceptionScore.Compute(full(20, 2, 0.5), splits: 0));
    }
}
