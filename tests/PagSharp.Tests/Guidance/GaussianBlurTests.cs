using PagSharp.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

public class GaussianBlurTests
{
    [Fact]
    public void Kernel_IsTorchvisionsNormalisedGaussian()
    {
        var k = GaussianBlur.Kernel(5, 1.0);
        double e1 = Math.Exp(-0.5), e2 = Math.Exp(-2), sum = 1 + 2 * e1 + 2 * e2;
        var expected = new[] { e2 / sum, e1 / sum, 1 / sum, e1 / sum, e2 / sum };
        for (int i = 0; i < 5; i++) Assert.Equal(expected[i], k[i], 1e-15);
        Assert.Equal(1.0, GaussianBlur.Kernel(31, 9).Sum(), 12);
    }

    [Fact]
    public void Apply_MatchesAHandComputationWithReflectPadding()
    {
        using var g = new Generator(2);
        var x = randn(new long[] { 2, 3, 5, 6 }, generator: g);
        const int ks = 5;
        const double sigma = 1.3;
        var actual = GaussianBlur.Apply(x, ks, sigma);

        var k = GaussianBlur.Kernel(ks, sigma);
        var xv = x.to_type(ScalarType.Float64).data<double>().ToArray();
        static int Reflect(int i, int n) => i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i;
        var expected = new double[xv.Length];
        for (int p = 0; p < 6; p++)
            for (int y = 0; y < 5; y++)
                for (int xx = 0; xx < 6; xx++)
                {
                    double acc = 0;
                    for (int dy = -2; dy <= 2; dy++)
                        for (int dx = -2; dx <= 2; dx++)
                            acc += k[dy + 2] * k[dx + 2] * xv[p * 30 + Reflect(y + dy, 5) * 6 + Reflect(xx + dx, 6)];
                    expected[p * 30 + y * 6 + xx] = acc;
                }
        TestModels.AssertClose(tensor(expected, x.shape), actual, 1e-6, "blur");
    }

    [Fact]
    public void Apply_KeepsConstants_AndKernelOneIsIdentity()
    {
        var c = full(new long[] { 1, 1, 8, 8 }, 0.25f);
        TestModels.AssertClose(c, GaussianBlur.Apply(c, 7, 2.0), 1e-7, "constant");
        using var g = new Generator(1);
        var x = randn(new long[] { 1, 2, 4, 4 }, generator: g);
        TestModels.AssertBitwiseEqual(x, GaussianBlur.Apply(x, 1, 1.0), "kernel 1");
    }

    [Theory]
    [InlineData(4, 1.0, "positive odd")]
    [InlineData(0, 1.0, "positive odd")]
    [InlineData(5, 0.0, "σ must be")]
    [InlineData(17, 3.0, "too large for an image height of 8")]
    public void Apply_RejectsBadParameters(int size, double sigma, string expected)
    {
        var x = zeros(1, 1, 8, 8);
        var e = Assert.Throws<PagSharpException>(() => GaussianBlur.Apply(x, size, sigma));
        Assert.Contains(expected, e.Message);
    }
}
