using PagSharp.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

public sealed class FidTests
{
    private static Tensor Randn(long seed, params long[] shape)
    {
        using var g = new Generator((ulong)seed);
        return randn(shape, dtype: ScalarType.Float64, generator: g);
    }

    [Theory]
    [InlineData(400, 32)]
    [InlineData(20, 64)] // fewer samples than dimensions: a singular covariance
    public void FidOfASetWithItselfIsZero(int n, int d)
    {
        using var x = Randn(1, n, d) * 3 + 1;
        using var a = FeatureStats.Of("test", x);
        using var b = FeatureStats.Of("test", x);
        Assert.InRange(Fid.Compute(a, b), 0, 1e-6);
    }

    [Fact]
    public void DiagonalGaussiansMatchTheClosedForm()
    {
        double[] v1 = [1, 4, 0.25, 9], v2 = [4, 1, 1, 0.5];
        double[] m1 = [0, 1, 2, 3], m2 = [1, 1, 0, 3];
        double expected = 0;
        for (int i = 0; i < 4; i++) expected += Math.Pow(m1[i] - m2[i], 2) + Math.Pow(Math.Sqrt(v1[i]) - Math.Sqrt(v2[i]), 2);
        using var s1 = diag(tensor(v1));
        using var s2 = diag(tensor(v2));
        double fid = Fid.FromMoments(tensor(m1), s1, tensor(m2), s2);
        Assert.Equal(expected, fid, 1e-10);
    }

    [Fact]
    public void NonCommutingTwoByTwoMatchesTheClosedForm()
    {
        // For 2×2 SPD A, B: tr (AB)^½ = √(tr(AB) + 2√(det A det B)).
        using var a = tensor(new double[] { 2, 1, 1, 2 }).reshape(2, 2);
        using var b = tensor(new double[] { 1, 0.5, 0.5, 3 }).reshape(2, 2);
        using var ab = a.mm(b);
        double trSqrt = Math.Sqrt(ab.trace().item<double>() + 2 * Math.Sqrt(3.0 * 2.75));
        double expected = 4 + 4 - 2 * trSqrt + (1 * 1 + 2 * 2); // tr A + tr B − 2 tr(AB)^½ + ‖μ₁ − μ₂‖²
        double fid = Fid.FromMoments(tensor(new double[] { 0, 0 }), a, tensor(new double[] { 1, 2 }), b);
        Assert.Equal(expected, fid, 1e-10);
    }

    [Fact]
    public void TraceSqrtMatchesTheEigenvaluesOfTheProduct()
    {
        // Random SPD matrices; tr (AB)^½ = Σ √λᵢ(AB), with the eigenvalues of the non-symmetric product computed directly.
        using var p = Randn(2, 24, 24);
        using var q = Randn(3, 24, 24);
        using var a = p.mm(p.t()) + eye(24, dtype: ScalarType.Float64) * 0.1;
        using var b = q.mm(q.t()) + eye(24, dtype: ScalarType.Float64) * 0.1;
        using var eig = linalg.eigvals(a.mm(b));
        double expected = eig.real.clamp_min(0).sqrt().sum().item<double>();
        Tolerance.Close(expected, Fid.TraceSqrtProduct(a, b), rel: 1e-10, abs: 1e-10, what: "tr (AB)^½");
    }

    [Fact]
    public void SampleStatisticsMatchTheDirectFormulas()
    {
        using var x = Randn(4, 300, 8) * 2 + 5;
        using var stats = FeatureStats.Of("test", x.to_type(ScalarType.Float32));
        using var x32 = x.to_type(ScalarType.Float32).to_type(ScalarType.Float64);
        using var mu = x32.mean([0L]);
        using var centred = x32 - mu;
        using var cov = centred.t().mm(centred) / 299;
        using var mean = stats.Mean();
        using var covariance = stats.Covariance();
        Assert.True(mean.allclose(mu, rtol: 0, atol: 1e-10));
        Assert.True(covariance.allclose(cov, rtol: 0, atol: 1e-9));
    }

    [Fact]
    public void MismatchedDimensionsAreRejected()
    {
        using var a = FeatureStats.Of("test", Randn(5, 10, 4));
        using var b = FeatureStats.Of("test", Randn(6, 10, 5));
        Assert.Throws<PagSharpException>(() => Fid.Compute(a, b));
        using var c = FeatureStats.Of("other", Randn(7, 10, 4));
        Assert.Throws<PagSharpException>(() => Fid.Compute(a, c));
        Assert.Throws<PagSharpException>(() => Fid.FromMoments(zeros(3), eye(3), zeros(2), eye(2)));
        Assert.Throws<PagSharpException>(() => Fid.FromMoments(zeros(2), eye(2) * double.NaN, zeros(2), eye(2)));
    }
}
