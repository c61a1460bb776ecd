using PagSharp.Inverse;
using static TorchSharp.torch;

namespace PagSharp.Tests.Inverse;

public class OperatorTests
{
    private static Tensor Image(long n = 2, long c = 1, long s = 8)
    {
        using var g = new Generator(1);
        return rand(new[] { n, c, s, s }, generator: g) * 2 - 1;
    }

    [Fact]
    public void BoxInpaintZeroesExactlyTheBox()
    {
        var x = Image();
        var op = OperatorSpec.Parse("box:3@2,4", 8, 0, 0);
        var y = op.Forward(x).data<float>().ToArray();
        var xs = x.data<float>().ToArray();
        for (int n = 0; n < 2; n++)
            for (int i = 0; i < 8; i++)
                for (int j = 0; j < 8; j++)
                {
                    int k = n * 64 + i * 8 + j;
                    bool hidden = i >= 2 && i < 5 && j >= 4 && j < 7;
                    Assert.Equal(hidden ? 0f : xs[k], y[k]);
                }
    }

    [Fact]
    public void CentredBoxAndRandomMaskFraction()
    {
        var box = (InpaintOperator)OperatorSpec.Parse("box:4", 8, 0, 0);
        Assert.Equal(0f, box.Mask[0, 0, 2, 2].item<float>());
        Assert.Equal(0f, box.Mask[0, 0, 5, 5].item<float>());
        Assert.Equal(1f, box.Mask[0, 0, 1, 1].item<float>());
        var rnd = (InpaintOperator)OperatorSpec.Parse("random:0.7", 64, 0, 5);
        double hidden = 1 - rnd.Mask.mean().item<float>();
        Assert.InRange(hidden, 0.67, 0.73);
        var again = (InpaintOperator)OperatorSpec.Parse("random:0.7", 64, 0, 5);
        Assert.True(rnd.Mask.equal(again.Mask).all().item<bool>(), "same seed, same mask");
    }

    [Fact]
    public void SuperResolutionIsBlockAverage()
    {
        var x = Image(1, 1, 8);
        var y = OperatorSpec.Parse("sr:2", 8, 0, 0).Forward(x);
        Assert.Equal(new long[] { 1, 1, 4, 4 }, y.shape);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++)
            {
                float expected = (x[0, 0, 2 * i, 2 * j].item<float>() + x[0, 0, 2 * i + 1, 2 * j].item<float>()
                                 + x[0, 0, 2 * i, 2 * j + 1].item<float>() + x[0, 0, 2 * i + 1, 2 * j + 1].item<float>()) / 4;
                Assert.Equal(expected, y[0, 0, i, j].item<float>(), 5);
            }
        Assert.Equal(new long[] { 1, 1, 2, 2 }, OperatorSpec.Parse("sr:4:bicubic", 8, 0, 0).Forward(x).shape);
    }

    [Fact]
    public void GaussianBlurMatchesADirectConvolution()
    {
        var x = Image(1, 1, 8).to_type(ScalarType.Float64);
        var op = (BlurOperator)OperatorSpec.Parse("blur:3:1.0", 8, 0, 0);
        var y = op.Forward(x);
        // Direct: reflect-padded 3×3 sum with the kernel from exp(−d²/2), normalised.
        double[] k1 = { Math.Exp(-0.5), 1, Math.Exp(-0.5) };
        double s = k1.Sum();
        int Reflect(int i) => i < 0 ? -i : i > 7 ? 14 - i : i;
        for (int i = 0; i < 8; i++)
            for (int j = 0; j < 8; j++)
            {
                double acc = 0;
                for (int a = -1; a <= 1; a++)
                    for (int b = -1; b <= 1; b++)
                        acc += k1[a + 1] / s * (k1[b + 1] / s) * x[0, 0, Reflect(i + a), Reflect(j + b)].item<double>();
                Assert.Equal(acc, y[0, 0, i, j].item<double>(), 6);
            }
    }

    [Fact]
    public void MotionKernelIsNormalisedSeededAndNotTrivial()
    {
        var a = MotionBlurKernel.Create(9, 0.5, 3);
        var b = MotionBlurKernel.Create(9, 0.5, 3);
        var c = MotionBlurKernel.Create(9, 0.5, 4);
        Assert.Equal(1.0, a.sum().item<float>(), 5);
        Assert.True(a.equal(b).all().item<bool>());
        Assert.False(a.equal(c).all().item<bool>());
        Assert.True(a.max().item<float>() < 0.5, "a motion kernel spreads over several pixels");
        Assert.Equal(new long[] { 2, 3, 8, 8 }, OperatorSpec.Parse("motion:5:0.5", 8, 0, 1).Forward(Image(2, 3, 8)).shape);
    }

    [Fact]
    public void MeasurementNoiseHasTheRequestedSigma()
    {
        var x = zeros(4, 1, 32, 32);
        var op = OperatorSpec.Parse("sr:2", 32, 0.1, 0);
        using var g = new Generator(2);
        var y = Measurement.Degrade(op, x, g);
        Assert.InRange(y.std().item<float>(), 0.09, 0.11);
    }

    [Theory]
    [InlineData("box:10@0,0", "does not fit")]
    [InlineData("box:4@6,6", "does not fit")]
    [InlineData("sr:3", "divide")]
    [InlineData("blur:4:1", "odd")]
    [InlineData("blur:3:0", "σ")]
    [InlineData("random:1.5", "[0, 1)")]
    [InlineData("swirl:3", "valid forms")]
    [InlineData("sr:2:lanczos", "bicubic")]
    [InlineData("motion:5:2", "intensity")]
    public void BadSpecsGiveClearErrors(string spec, string fragment)
    {
        var e = Assert.Throws<PagSharpException>(() => OperatorSpec.Parse(spec, 8, 0, 0));
        Assert.Contains(fragment, e.Message);
    }
}
