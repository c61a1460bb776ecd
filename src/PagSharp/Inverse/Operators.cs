using PagSharp.Imaging;
using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.nn.functional;

namespace PagSharp.Inverse;

/// <summary>Inpainting: A(x) = M ⊙ x with a fixed 0/1 mask M [1,1,H,W] (1 = observed).</summary>
public sealed class InpaintOperator : IMeasurementOperator
{
    public Tensor Mask { get; }
    public string Spec { get; }
    public double NoiseSigma { get; }

    public InpaintOperator(Tensor mask, string spec, double noiseSigma)
    {
        Mask = mask;
        Spec = spec;
        NoiseSigma = noiseSigma;
    }

    /// <summary>A box of <paramref name="size"/>×<paramref name="size"/> pixels hidden at (top, left).</summary>
    public static InpaintOperator Box(int imageSize, int size, int top, int left, double sigma, string spec)
    {
        if (size < 1 || top < 0 || left < 0 || top + size > imageSize || left + size > imageSize)
            throw new PagSharpException($"{spec}: a {size}×{size} box at ({top},{left}) does not fit a {imageSize}×{imageSize} image; valid: 1 ≤ size, top + size ≤ {imageSize}, left + size ≤ {imageSize}");
        var m = ones(1, 1, imageSize, imageSize);
        m[.., .., top..(top + size), left..(left + size)] = 0;
        return new InpaintOperator(m, spec, sigma);
    }

    /// <summary>Each pixel hidden independently with probability <paramref name="fraction"/> (seeded).</summary>
    public static InpaintOperator RandomPixels(int imageSize, double fraction, long seed, double sigma, string spec)
    {
        if (!(fraction >= 0 && fraction < 1)) throw new PagSharpException($"{spec}: the hidden fraction must be in [0, 1) (got {fraction})");
        using var g = new Generator((ulong)seed);
        var m = (rand(new long[] { 1, 1, imageSize, imageSize }, generator: g) >= fraction).to_type(ScalarType.Float32);
        return new InpaintOperator(m, spec, sigma);
    }

    public Tensor Forward(Tensor x) => x * Mask.to(x.dtype);

    /// <summary>Hidden pixels are 0, i.e. mid grey.</summary>
    public Tensor Visualize(Tensor y, long height, long width) => y;
}

/// <summary>Super-resolution: A(x) = average pooling by <see cref="Factor"/> (or bicubic down-sampling).</summary>
public sealed class SuperResolutionOperator : IMeasurementOperator
{
    public int Factor { get; }
    public bool Bicubic { get; }
    public string Spec { get; }
    public double NoiseSigma { get; }

    public SuperResolutionOperator(int imageSize, int factor, bool bicubic, double sigma, string spec)
    {
        if (factor < 2 || imageSize % factor != 0)
            throw new PagSharpException($"{spec}: the factor must be ≥ 2 and divide the image size {imageSize} (got {factor})");
        Factor = factor;
        Bicubic = bicubic;
        Spec = spec;
        NoiseSigma = sigma;
    }

    public Tensor Forward(Tensor x) => Bicubic
        ? interpolate(x, size: new[] { x.shape[2] / Factor, x.shape[3] / Factor }, mode: InterpolationMode.Bicubic, align_corners: false)
        : avg_pool2d(x, Factor, Factor);

    public Tensor Visualize(Tensor y, long height, long width) =>
        interpolate(y, size: new[] { height, width }, mode: InterpolationMode.Nearest);
}

/// <summary>Blur: A(x) = k ∗ x with reflect padding (Gaussian, or a seeded motion-blur kernel).</summary>
public sealed class BlurOperator : IMeasurementOperator
{
    public Tensor Kernel { get; }
    public string Spec { get; }
    public double NoiseSigma { get; }

    private BlurOperator(Tensor kernel, string spec, double sigma)
    {
        Kernel = kernel;
        Spec = spec;
        NoiseSigma = sigma;
    }

    /// <summary>Gaussian blur with an odd kernel size and σ (pixels).</summary>
    public static BlurOperator Gaussian(int imageSize, int kernelSize, double sigma, double noiseSigma, string spec)
    {
        Check(imageSize, kernelSize, spec);
        if (!(sigma > 0)) throw new PagSharpException($"{spec}: σ must be > 0 (got {sigma})");
        var k1 = tensor(GaussianBlur.Kernel(kernelSize, sigma), dtype: ScalarType.Float64);
        return new BlurOperator(outer(k1, k1), spec, noiseSigma);
    }

    /// <summary>Motion blur along a seeded random camera trajectory (see <see cref="MotionBlurKernel"/>).</summary>
    public static BlurOperator Motion(int imageSize, int kernelSize, double intensity, long seed, double noiseSigma, string spec)
    {
        Check(imageSize, kernelSize, spec);
        if (!(intensity >= 0 && intensity <= 1)) throw new PagSharpException($"{spec}: intensity must be in [0, 1] (got {intensity})");
        return new BlurOperator(MotionBlurKernel.Create(kernelSize, intensity, seed), spec, noiseSigma);
    }

    private static void Check(int imageSize, int k, string spec)
    {
        if (k < 1 || k % 2 == 0 || k / 2 >= imageSize)
            throw new PagSharpException($"{spec}: the kernel size must be odd, ≥ 1 and its half below the image size {imageSize} (got {k})");
    }

    public Tensor Forward(Tensor x)
    {
        long c = x.shape[1], k = Kernel.shape[0];
        var w = Kernel.to(x.dtype).reshape(1, 1, k, k).expand(c, 1, k, k);
        return conv2d(pad(x, new[] { k / 2, k / 2, k / 2, k / 2 }, PaddingModes.Reflect), w, groups: c);
    }

    public Tensor Visualize(Tensor y, long height, long width) => y;
}
