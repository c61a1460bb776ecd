using System.Globalization;
using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>
/// Mergeable first and second moments of a set of feature vectors, kept in float64: the count n, the sum Σx and the
/// sum of outer products Σxxᵀ. Statistics of shards of a set merge into exactly the statistics of the whole set
/// (up to float64 rounding), so features can be extracted on many machines and combined later.
/// </summary>
/// <remarks>
/// Saved as safetensors with the tensors <c>count</c> (int64 [1]), <c>sum</c> (float64 [D]) and <c>sum_outer</c>
/// (float64 [D,D]), and the metadata <c>format</c> = <see cref="Format"/> and <c>features</c> = the name of the
/// feature network (<see cref="FeatureName"/>), so statistics of different networks are never compared.
/// </remarks>
public sealed class FeatureStats : IDisposable
{
    /// <summary>The <c>format</c> metadata value of a statistics file.</summary>
    public const string Format = "pagsharp-feature-stats-v1";

    private Tensor _sum;
    private Tensor _sumOuter;

    /// <summary>Name of the feature network the features came from (e.g. <c>mnist-classifier/penultimate</c>).</summary>
    public string FeatureName { get; }

    /// <summary>Feature dimension D.</summary>
    public int Dim { get; }

    /// <summary>Number of feature vectors accumulated.</summary>
    public long Count { get; private set; }

    /// <summary>Σx, float64 [D] (owned by this object).</summary>
    public Tensor Sum => _sum;

    /// <summary>Σxxᵀ, float64 [D,D] (owned by this object).</summary>
    public Tensor SumOuter => _sumOuter;

    /// <summary>Empty statistics (n = 0) for <paramref name="dim"/>-dimensional features of the named network.</summary>
    public FeatureStats(string featureName, int dim)
    {
        ArgumentNullException.ThrowIfNull(featureName);
        if (dim <= 0) throw new PagSharpException($"feature statistics need a positive dimension (got {dim})");
        FeatureName = featureName;
        Dim = dim;
        _sum = zeros(dim, dtype: ScalarType.Float64);
        _sumOuter = zeros(dim, dim, dtype: ScalarType.Float64);
    }

    /// <summary>Statistics of the rows of <paramref name="features"/> [N,D].</summary>
    public static FeatureStats Of(string featureName, Tensor features)
    {
        ArgumentNullException.ThrowIfNull(features);
        if (features.dim() != 2) throw new PagSharpException($"features must be a matrix [N,D]; got shape [{string.Join(",", features.shape)}]");
        var stats = new FeatureStats(featureName, (int)features.shape[1]);
        stats.Add(features);
        return stats;
    }

    /// <summary>Adds the rows of <paramref name="features"/> [N,D] (any floating dtype; accumulated in float64).</summary>
    /// <exception cref="PagSharpException">Wrong shape, or non-finite values.</exception>
    public void Add(Tensor features)
    {
        ArgumentNullException.ThrowIfNull(features);
        if (features.dim() != 2 || features.shape[1] != Dim)
            throw new PagSharpException($"cannot add features of shape [{string.Join(",", features.shape)}] to statistics of {Dim}-dimensional features ({FeatureName})");
        if (features.shape[0] == 0) return;
        using var scope = NewDisposeScope();
        var x = features.to_type(ScalarType.Float64);
        if (!x.isfinite().all().item<bool>())
            throw new PagSharpException($"features of {FeatureName} contain NaN or infinite values");
        using (no_grad())
        {
            _sum.add_(x.sum(0L));
            _sumOuter.add_(x.t().mm(x));
        }
        Count += features.shape[0];
    }

    /// <summary>Adds another set's statistics (e.g. another shard) to these.</summary>
    /// <exception cref="PagSharpException">The two come from different feature networks or dimensions.</exception>
    public void Merge(FeatureStats other)
    {
        ArgumentNullException.ThrowIfNull(other);
        RequireCompatible(other, "merge");
        _sum.add_(other._sum);
        _sumOuter.add_(other._sumOuter);
        Count += other.Count;
    }

    /// <summary>The mean μ = Σx / n, float64 [D].</summary>
    public Tensor Mean()
    {
        if (Count < 1) throw new PagSharpException($"the statistics of {FeatureName} hold no features");
        return _sum / Count;
    }

    /// <summary>The unbiased covariance (Σxxᵀ − n μμᵀ) / (n − 1), float64 [D,D], symmetrised (as numpy.cov).</summary>
    public Tensor Covariance()
    {
        if (Count < 2) throw new PagSharpException($"a covariance needs at least 2 feature vectors; the statistics of {FeatureName} hold {Count}");
        using var scope = NewDisposeScope();
        var mu = _sum / Count;
        var c = (_sumOuter - mu.outer(mu) * Count) / (Count - 1);
        return ((c + c.t()) * 0.5).MoveToOuterDisposeScope();
    }

    /// <summary>Throws unless <paramref name="other"/> describes the same feature network and dimension.</summary>
    public void RequireCompatible(FeatureStats other, string what)
    {
        if (other.Dim != Dim || other.FeatureName != FeatureName)
            throw new PagSharpException(
                $"cannot {what} statistics of {Dim}-dimensional '{FeatureName}' features with statistics of {other.Dim}-dimensional '{other.FeatureName}' features; both sides must use the same feature network");
    }

    /// <summary>Saves the statistics as safetensors (atomically).</summary>
    public void Save(string path)
    {
        using var count = tensor(new[] { Count });
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["count"] = count, ["sum"] = _sum, ["sum_outer"] = _sumOuter },
            new Dictionary<string, string>
            {
                ["format"] = Format,
                ["features"] = FeatureName,
                ["dim"] = Dim.ToString(CultureInfo.InvariantCulture),
            });
    }

    /// <summary>True when <paramref name="path"/> is a safetensors file written by <see cref="Save"/> (checks the metadata only).</summary>
    public static bool IsStatsFile(string path)
    {
        try
        {
            return SafeTensors.ReadMetadata(path).TryGetValue("format", out var f) && f == Format;
        }
        catch (PagSharpException)
        {
            return false;
        }
    }

    /// <summary>Loads statistics written by <see cref="Save"/>, checking names, dtypes, shapes and values.</summary>
    /// <exception cref="PagSharpException">The file is not a feature-statistics file, or is inconsistent.</exception>
    public static FeatureStats Load(string path)
    {
        var meta = SafeTensors.ReadMetadata(path);
        if (!meta.TryGetValue("format", out var format) || format != Format)
            throw new PagSharpException($"'{path}' is not a feature-statistics file (its metadata has no format = {Format}); write one with FeatureStats.Save (pag eval --save-stats)");
        if (!meta.TryGetValue("features", out var name) || string.IsNullOrEmpty(name))
            throw new PagSharpException($"feature-statistics file '{path}' does not name its feature network (metadata 'features')");
        var tensors = SafeTensors.Load(path);
        try
        {
            string[] expected = ["count", "sum", "sum_outer"];
            var missing = expected.Where(k => !tensors.ContainsKey(k)).ToList();
            var extra = tensors.Keys.Where(k => !expected.Contains(k)).ToList();
            if (missing.Count + extra.Count > 0)
                throw new PagSharpException($"feature-statistics file '{path}' must hold exactly count, sum and sum_outer; missing [{string.Join(", ", missing)}], unexpected [{string.Join(", ", extra)}]");
            var count = tensors["count"];
            var sum = tensors["sum"];
            var outer = tensors["sum_outer"];
            if (count.dtype != ScalarType.Int64 || count.numel() != 1)
                throw new PagSharpException($"feature-statistics file '{path}': 'count' must be one int64 value");
            if (sum.dtype != ScalarType.Float64 || sum.dim() != 1 || sum.shape[0] < 1)
                throw new PagSharpException($"feature-statistics file '{path}': 'sum' must be float64 [D]; it is {sum.dtype} [{string.Join(",", sum.shape)}]");
            long d = sum.shape[0];
            if (outer.dtype != ScalarType.Float64 || outer.dim() != 2 || outer.shape[0] != d || outer.shape[1] != d)
                throw new PagSharpException($"feature-statistics file '{path}': 'sum_outer' must be float64 [{d},{d}]; it is {outer.dtype} [{string.Join(",", outer.shape)}]");
            long n = count.reshape(1)[0].item<long>();
            if (n < 0) throw new PagSharpException($"feature-statistics file '{path}': count is negative ({n})");
            if (!sum.isfinite().all().item<bool>() || !outer.isfinite().all().item<bool>())
                throw new PagSharpException($"feature-statistics file '{path}' holds NaN or infinite values");
            if (meta.TryGetValue("dim", out var dimText) && dimText != d.ToString(CultureInfo.InvariantCulture))
                throw new PagSharpException($"feature-statistics file '{path}': metadata says dim {dimText}, but 'sum' has {d} entries");
            var stats = new FeatureStats(name, (int)d) { Count = n };
            stats._sum.copy_(sum);
            stats._sumOuter.copy_(outer);
            return stats;
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>Releases the tensors.</summary>
    public void Dispose()
    {
        _sum.Dispose();
        _sumOuter.Dispose();
    }
}
