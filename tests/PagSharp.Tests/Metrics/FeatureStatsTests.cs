using PagSharp.IO;
using PagSharp.Metrics;
using PagSharp.Tests.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

public sealed class FeatureStatsTests
{
    private static Tensor Features(long seed, long n, long d)
    {
        using var g = new Generator((ulong)seed);
        return randn([n, d], generator: g) * 4 + 2;
    }

    [Fact]
    public void MergedShardStatisticsEqualWholeSetStatistics()
    {
        using var x = Features(1, 1000, 16);
        using var whole = FeatureStats.Of("test", x);
        using var merged = new FeatureStats("test", 16);
        foreach (var (start, len) in new[] { (0L, 1L), (1L, 333L), (334L, 0L), (334L, 666L) })
        {
            using var shard = FeatureStats.Of("test", x.narrow(0, start, len));
            merged.Merge(shard);
        }
        Assert.Equal(whole.Count, merged.Count);
        Assert.True(merged.Sum.allclose(whole.Sum, rtol: 1e-12, atol: 1e-9));
        Assert.True(merged.SumOuter.allclose(whole.SumOuter, rtol: 1e-12, atol: 1e-9));
        using var m1 = whole.Mean();
        using var m2 = merged.Mean();
        using var c1 = whole.Covariance();
        using var c2 = merged.Covariance();
        Assert.True(m2.allclose(m1, rtol: 0, atol: 1e-12));
        Assert.True(c2.allclose(c1, rtol: 0, atol: 1e-10));
        Assert.InRange(Fid.Compute(whole, merged), 0, 1e-6);
    }

    [Fact]
    public void SaveAndLoadRoundTripExactly()
    {
        using var dir = new TempDir();
        using var x = Features(2, 50, 6);
        using var stats = FeatureStats.Of("net/a", x);
        string path = dir.File("stats.safetensors");
        stats.Save(path);
        Assert.True(FeatureStats.IsStatsFile(path));
        using var loaded = FeatureStats.Load(path);
        Assert.Equal("net/a", loaded.FeatureName);
        Assert.Equal(50, loaded.Count);
        Assert.Equal(6, loaded.Dim);
        Assert.True(MetricsTestSupport.Same(loaded.Sum, stats.Sum));
        Assert.True(MetricsTestSupport.Same(loaded.SumOuter, stats.SumOuter));
    }

    [Fact]
    public void WrongStatisticsFilesAreRejected()
    {
        using var dir = new TempDir();
        // A safetensors file that is not statistics (no format metadata).
        string weights = dir.File("weights.safetensors");
        SafeTensors.Save(weights, new Dictionary<string, Tensor> { ["w"] = ones(3) });
        Assert.False(FeatureStats.IsStatsFile(weights));
        Assert.Contains("not a feature-statistics file", Assert.Throws<PagSharpException>(() => FeatureStats.Load(weights)).Message);

        var meta = new Dictionary<string, string> { ["format"] = FeatureStats.Format, ["features"] = "x" };
        void Write(string name, Dictionary<string, Tensor> t) => SafeTensors.Save(dir.File(name), t, meta);
        Write("shape.safetensors", new() { ["count"] = tensor(new long[] { 5 }), ["sum"] = zeros(4, dtype: ScalarType.Float64), ["sum_outer"] = zeros(3, 3, dtype: ScalarType.Float64) });
        Write("dtype.safetensors", new() { ["count"] = tensor(new long[] { 5 }), ["sum"] = zeros(3), ["sum_outer"] = zeros(3, 3, dtype: ScalarType.Float64) });
        Write("missing.safetensors", new() { ["count"] = tensor(new long[] { 5 }), ["sum"] = zeros(3, dtype: ScalarType.Float64) });
        Write("nan.safetensors", new() { ["count"] = tensor(new long[] { 5 }), ["sum"] = full(3, double.NaN, dtype: ScalarType.Float64), ["sum_outer"] = zeros(3, 3, dtype: ScalarType.Float64) });
        foreach (var name in new[] { "shape", "dtype", "missing", "nan" })
            Assert.Throws<PagSharpException>(() => FeatureStats.Load(dir.File(name + ".safetensors")));
        Assert.Throws<PagSharpException>(() => FeatureStats.Load(dir.File("absent.safetensors")));
        File.WriteAllText(dir.File("text.safetensors"), "not a tensor file");
        Assert.Throws<PagSharpException>(() => FeatureStats.Load(dir.File("text.safetensors")));
    }

    [Fact]
    public void IncompatibleStatisticsDoNotMerge()
    {
        using var a = new FeatureStats("a", 4);
        using var b = new FeatureStats("a", 5);
        using var c = new FeatureStats("c", 4);
        Assert.Throws<PagSharpException>(() => a.Merge(b));
        Assert.Throws<PagSharpException>(() => a.Merge(c));
        Assert.Throws<PagSharpException>(() => a.Add(ones(2, 5)));
        Assert.Throws<PagSharpException>(() => a.Add(full(2, 4, double.PositiveInfinity)));
        a.Add(ones(1, 4));
        Assert.Throws<PagSharpException>(() => a.Covariance()); // one sample
    }
}
