using System.Globalization;
using static TorchSharp.torch;
using TorchSharp;
using static TorchSharp.torch.nn.functional;

namespace PagSharp.Imaging;

/// <summary>
/// Gaussian blur of the last two axes of a tensor, as torchvision's <c>gaussian_blur</c> (used by
/// <c>T.GaussianBlur</c> in the official SAG code and by the PAG code's blur variant): 1-D kernel
/// exp(−x²/(2σ²)) at x = −(k−1)/2 … (k−1)/2, normalised to sum 1; reflect padding of k/2 (<c>torch.nn.functional.pad</c>
/// mode "reflect", i.e. the edge sample is not repeated); no change in size. torchvision convolves with the outer
/// product of the two 1-D kernels; this applies them separably (width first, then height), which is the same
/// up to float rounding.
/// </summary>
public static class GaussianBlur
{
    /// <summary>The normalised 1-D kernel of odd length <paramref name="size"/>, computed in float64.</summary>
    public static double[] Kernel(int size, double sigma)
    {
        CheckKernel(size, sigma);
        var k = new double[size];
        double half = (size - 1) * 0.5, sum = 0;
        for (int i = 0; i < size; i++)
        {
            double x = -half + i;
            k[i] = Math.Exp(-0.5 * (x / sigma) * (x / sigma));
            sum += k[i];
        }
        for (int i = 0; i < size; i++) k[i] /= sum;
        return k;
    }

    /// <summary>Blurs the last two axes of <paramref name="x"/> (rank ≥ 2) with a square kernel.</summary>
    public static Tensor Apply(Tensor x, int kernelSize, double sigma) => Apply(x, kernelSize, kernelSize, sigma, sigma);

    /// <summary>
    /// Blurs the last two axes of <paramref name="x"/> (rank ≥ 2; [.., H, W]) with kernel sizes and σ per axis. A
    /// kernel of size 1 leaves that axis unchanged. Reflect padding needs k/2 &lt; the axis length.
    /// </summary>
    public static Tensor Apply(Tensor x, int kernelH, int kernelW, double sigmaH, double sigmaW)
    {
        if (x.dim() < 2) throw new PagSharpException($"Gaussian blur needs a tensor with at least 2 axes (got [{string.Join(",", x.shape)}])");
        var shape = x.shape;
        long h = shape[^2], w = shape[^1];
        CheckFits(kernelH, sigmaH, h, "height");
        CheckFits(kernelW, sigmaW, w, "width");
        var y = x.reshape(-1, 1, h, w);
        if (kernelW > 1)
        {
            using var kw = KernelTensor(kernelW, sigmaW, x).reshape(1, 1, 1, kernelW);
            y = conv2d(pad(y, new long[] { kernelW / 2, kernelW / 2, 0, 0 }, PaddingModes.Reflect), kw);
        }
        if (kernelH > 1)
        {
            using var kh = KernelTensor(kernelH, sigmaH, x).reshape(1, 1, kernelH, 1);
            y = conv2d(pad(y, new long[] { 0, 0, kernelH / 2, kernelH / 2 }, PaddingModes.Reflect), kh);
        }
        return y.reshape(shape);
    }

    private static Tensor KernelTensor(int size, double sigma, Tensor like) =>
        tensor(Kernel(size, sigma), dtype: ScalarType.Float64, device: like.device).to_type(like.dtype);

    private static void CheckKernel(int size, double sigma)
    {
        if (size < 1 || size % 2 == 0)
            throw new PagSharpException($"Gaussian blur kernel size must be a positive odd number (got {size})");
        if (double.IsNaN(sigma) || double.IsInfinity(sigma) || sigma <= 0)
            throw new PagSharpException($"Gaussian blur σ must be a finite number > 0 (got {sigma.ToString(CultureInfo.InvariantCulture)})");
    }

    private static void CheckFits(int size, double sigma, long length, string axis)
    {
        CheckKernel(size, sigma);
        if (size / 2 >= length)
            throw new PagSharpException($"Gaussian blur kernel size {size} is too large for an image {axis} of {length}: reflect padding needs k/2 < {length}, so use a kernel size ≤ {2 * (length - 1) + 1}");
    }
}
