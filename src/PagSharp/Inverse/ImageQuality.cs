using PagSharp.Imaging;
using static TorchSharp.torch;

namespace PagSharp.Inverse;

/// <summary>Full-reference image quality for images in [−1, 1] (mapped to [0, 1] first).</summary>
public static class ImageQuality
{
    /// <summary>PSNR in dB per image: 10·log10(1 / MSE) on [0, 1] pixels; [N].</summary>
    public static Tensor Psnr(Tensor x, Tensor reference)
    {
        var mse = ((x - reference) / 2).square().flatten(1).mean(new long[] { 1 });
        return 10 * (1 / mse.clamp(min: 1e-12)).log10();
    }

    /// <summary>
    /// SSIM per image (Wang et al. 2004): Gaussian window 11, σ 1.5, C1 = 0.01², C2 = 0.03² on [0, 1] pixels,
    /// reflect-padded so the map keeps the image size, averaged over pixels and channels; [N].
    /// </summary>
    public static Tensor Ssim(Tensor x, Tensor reference)
    {
        var a = (x.to_type(ScalarType.Float64) + 1) / 2;
        var b = (reference.to_type(ScalarType.Float64) + 1) / 2;
        int k = (int)Math.Min(11, 2 * ((Math.Min(a.shape[2], a.shape[3]) - 1) / 2) + 1);
        Tensor W(Tensor t) => GaussianBlur.Apply(t, k, 1.5);
        var muA = W(a);
        var muB = W(b);
        var sAA = W(a * a) - muA * muA;
        var sBB = W(b * b) - muB * muB;
        var sAB = W(a * b) - muA * muB;
        const double c1 = 0.01 * 0.01, c2 = 0.03 * 0.03;
        var map = (2 * muA * muB + c1) * (2 * sAB + c2) / ((muA * muA + muB * muB + c1) * (sAA + sBB + c2));
        return map.flatten(1).mean(new long[] { 1 }).to_type(ScalarType.Float32);
    }
}
