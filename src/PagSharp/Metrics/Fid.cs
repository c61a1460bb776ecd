using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>
/// Fréchet Inception Distance (Heusel et al. 2017) between two Gaussians fitted to feature sets:
/// ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½).
/// </summary>
/// <remarks>
/// The trace of the matrix square root is computed stably, in float64, from a symmetric product:
/// Σ₁Σ₂ is similar to the symmetric positive semi-definite matrix M = Σ₁^½ Σ₂ Σ₁^½, so
/// tr (Σ₁Σ₂)^½ = Σᵢ √λᵢ(M). Σ₁^½ comes from the eigen-decomposition of Σ₁; eigenvalues that rounding has made
/// slightly negative are clamped to zero. There is no complex-valued intermediate and no iteration to diverge,
/// and rank-deficient covariances (fewer samples than dimensions) are handled.
/// </remarks>
public static class Fid
{
    /// <summary>FID between the Gaussians of two feature-statistics objects (same feature network).</summary>
    public static double Compute(FeatureStats a, FeatureStats b)
    {
        ArgumentNullException.ThrowIfNull(a);
        ArgumentNullException.ThrowIfNull(b);
        a.RequireCompatible(b, "compare");
        using var scope = NewDisposeScope();
        return FromMoments(a.Mean(), a.Covariance(), b.Mean(), b.Covariance());
    }

    /// <summary>FID between N(μ₁, Σ₁) and N(μ₂, Σ₂); inputs are converted to float64.</summary>
    /// <exception cref="PagSharpException">Shapes do not match, or a value is not finite.</exception>
    public static double FromMoments(Tensor mu1, Tensor sigma1, Tensor mu2, Tensor sigma2)
    {
        ArgumentNullException.ThrowIfNull(mu1);
        ArgumentNullException.ThrowIfNull(sigma1);
        ArgumentNullException.ThrowIfNull(mu2);
        ArgumentNullException.ThrowIfNull(sigma2);
        long d = mu1.numel();
        if (mu1.dim() != 1 || mu2.dim() != 1 || mu2.shape[0] != d || !IsSquare(sigma1, d) || !IsSquare(sigma2, d))
            throw new PagSharpException(
                $"FID needs means [D] and covariances [D,D] of one dimension D; got μ₁ [{Shape(mu1)}], Σ₁ [{Shape(sigma1)}], μ₂ [{Shape(mu2)}], Σ₂ [{Shape(sigma2)}]");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var m1 = mu1.to_type(ScalarType.Float64);
        var m2 = mu2.to_type(ScalarType.Float64);
        var s1 = sigma1.to_type(ScalarType.Float64);
        var s2 = sigma2.to_type(ScalarType.Float64);
        foreach (var t in new[] { m1, m2, s1, s2 })
            if (!t.isfinite().all().item<bool>()) throw new PagSharpException("FID inputs contain NaN or infinite values");
        double meanTerm = (m1 - m2).square().sum().item<double>();
        double traceTerm = s1.trace().item<double>() + s2.trace().item<double>() - 2 * TraceSqrtProduct(s1, s2);
        // Both terms are ≥ 0 in exact arithmetic; clamp rounding noise of identical inputs.
        return Math.Max(0, meanTerm + traceTerm);
    }

    /// <summary>tr (AB)^½ for symmetric positive semi-definite A and B, via the eigenvalues of A^½ B A^½.</summary>
    internal static double TraceSqrtProduct(Tensor a, Tensor b)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var a64 = Symmetric(a.to_type(ScalarType.Float64));
        var b64 = Symmetric(b.to_type(ScalarType.Float64));
        var rootA = SqrtPsd(a64);
        var m = Symmetric(rootA.mm(b64).mm(rootA));
        var eig = linalg.eigvalsh(m);
        if (!eig.isfinite().all().item<bool>())
            throw new PagSharpException("the eigen-decomposition in FID did not converge (non-finite eigenvalues)");
        return eig.clamp_min(0).sqrt().sum().item<double>();
    }

    /// <summary>The PSD square root V diag(√max(λ,0)) Vᵀ of a symmetric matrix.</summary>
    internal static Tensor SqrtPsd(Tensor symmetric)
    {
        using var scope = NewDisposeScope();
        var (values, vectors) = linalg.eigh(symmetric);
        if (!values.isfinite().all().item<bool>() || !vectors.isfinite().all().item<bool>())
            throw new PagSharpException("the eigen-decomposition in FID did not converge (non-finite values)");
        var root = (vectors * values.clamp_min(0).sqrt().unsqueeze(0)).mm(vectors.t());
        return Symmetric(root).MoveToOuterDisposeScope();
    }

    private static Tensor Symmetric(Tensor m) => (m + m.t()) * 0.5;

    private static bool IsSquare(Tensor t, long d) => t.dim() == 2 && t.shape[0] == d && t.shape[1] == d;

    private static string Shape(Tensor t) => string.Join(",", t.shape);
}
