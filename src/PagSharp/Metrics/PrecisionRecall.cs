using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>Improved precision and recall of a generated set against a reference set.</summary>
/// <param name="Precision">Fraction of generated samples inside the reference manifold.</param>
/// <param name="Recall">Fraction of reference samples inside the generated manifold.</param>
public sealed record PrecisionRecallResult(double Precision, double Recall);

/// <summary>
/// Improved precision and recall (Kynkäänniemi et al. 2019). Each set's manifold is the union of balls around its
/// feature vectors, the radius of a ball being the distance to the k-th nearest other vector of the same set
/// (k = 3 by default). Precision is the fraction of generated vectors inside the reference manifold; recall is the
/// fraction of reference vectors inside the generated manifold. A point on a ball's boundary counts as inside.
/// </summary>
/// <remarks>Distances are computed in float64, a block of rows at a time, so memory stays bounded for large sets.
/// Squared distances are compared with a tolerance of 10⁻¹¹·(‖a‖² + ‖b‖²), the rounding scale of their
/// computation, so ties on a boundary (a point equal to a centre of radius 0) are resolved as inside.</remarks>
public static class PrecisionRecall
{
    /// <summary>The paper's neighbourhood size.</summary>
    public const int DefaultK = 3;

    /// <summary>Elements per block of the distance matrix (2²⁴ float64 values = 128 MiB).</summary>
    public const long DefaultBlockElements = 1L << 24;

    /// <summary>Computes precision and recall of <paramref name="generated"/> [M,D] against <paramref name="reference"/> [N,D].</summary>
    /// <exception cref="PagSharpException">Shapes do not match, a set has at most k vectors, or values are not finite.</exception>
    public static PrecisionRecallResult Compute(Tensor reference, Tensor generated, int k = DefaultK, long blockElements = DefaultBlockElements)
    {
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(generated);
        if (k < 1) throw new PagSharpException($"precision/recall needs k ≥ 1 (got {k})");
        if (reference.dim() != 2 || generated.dim() != 2 || reference.shape[1] != generated.shape[1])
            throw new PagSharpException(
                $"precision/recall needs two feature matrices [N,D] with the same D; got reference [{string.Join(",", reference.shape)}] and generated [{string.Join(",", generated.shape)}]");
        foreach (var (name, t) in new[] { ("reference", reference), ("generated", generated) })
            if (t.shape[0] <= k)
                throw new PagSharpException($"precision/recall with k = {k} needs more than {k} {name} samples; got {t.shape[0]}");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var real = reference.to_type(ScalarType.Float64);
        var fake = generated.to_type(ScalarType.Float64);
        if (!real.isfinite().all().item<bool>() || !fake.isfinite().all().item<bool>())
            throw new PagSharpException("precision/recall features contain NaN or infinite values");
        var realRadii = KnnRadiiSquared(real, k, blockElements);
        var fakeRadii = KnnRadiiSquared(fake, k, blockElements);
        double precision = FractionInside(fake, real, realRadii, blockElements);
        double recall = FractionInside(real, fake, fakeRadii, blockElements);
        return new PrecisionRecallResult(precision, recall);
    }

    /// <summary>Squared distance from each row of <paramref name="x"/> to its k-th nearest other row, float64 [N].</summary>
    internal static Tensor KnnRadiiSquared(Tensor x, int k, long blockElements)
    {
        long n = x.shape[0];
        var radii = empty(n, dtype: ScalarType.Float64);
        var norms = x.square().sum(1);
        long rows = Rows(n, blockElements);
        for (long start = 0; start < n; start += rows)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(rows, n - start);
            var d2 = SquaredDistances(x.narrow(0, start, len), norms.narrow(0, start, len), x, norms);
            // k + 1 smallest: the first is the point itself (distance 0).
            var (values, _) = d2.topk(k + 1, dim: 1, largest: false, sorted: true);
            radii.narrow(0, start, len).copy_(values.select(1, k));
        }
        return radii;
    }

    /// <summary>Fraction of rows of <paramref name="points"/> within some ball (centre row of <paramref name="centres"/>, squared radius).</summary>
    internal static double FractionInside(Tensor points, Tensor centres, Tensor radiiSquared, long blockElements)
    {
        long n = points.shape[0];
        var pointNorms = points.square().sum(1);
        var centreNorms = centres.square().sum(1);
        long rows = Rows(centres.shape[0], blockElements);
        long inside = 0;
        for (long start = 0; start < n; start += rows)
        {
            using var scope = NewDisposeScope();
            long len = Math.Min(rows, n - start);
            var d2 = SquaredDistances(points.narrow(0, start, len), pointNorms.narrow(0, start, len), centres, centreNorms);
            // Rounding tolerance of the expanded form, so a point that coincides with a centre of radius 0 is inside.
            var tol = (pointNorms.narrow(0, start, len).unsqueeze(1) + centreNorms.unsqueeze(0)) * RelativeTolerance;
            inside += d2.le(radiiSquared.unsqueeze(0) + tol).any(1).sum().item<long>();
        }
        return (double)inside / n;
    }

    /// <summary>Relative rounding tolerance of a squared distance computed as ‖a‖² + ‖b‖² − 2a·b in float64.</summary>
    internal const double RelativeTolerance = 1e-11;

    /// <summary>‖a‖² + ‖b‖² − 2a·b, clamped at 0, [rows of a, rows of b].</summary>
    private static Tensor SquaredDistances(Tensor a, Tensor aNorms, Tensor b, Tensor bNorms) =>
        (aNorms.unsqueeze(1) + bNorms.unsqueeze(0) - a.mm(b.t()) * 2).clamp_min(0);

    private static long Rows(long columns, long blockElements) => Math.Max(1, blockElements / Math.Max(1, columns));
}
