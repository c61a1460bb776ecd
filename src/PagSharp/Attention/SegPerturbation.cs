using System.Globalization;
using PagSharp.Imaging;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Smoothed Energy Guidance's perturbation (Hong 2024, "Smoothed Energy Guidance: Guiding Diffusion Models with
/// Reduced Energy Curvature of Attention"): the <b>queries</b> of a self-attention layer are blurred with a 2-D Gaussian
/// of std σ over the layer's token grid (each channel on its own) before softmax(QKᵀ/√d)·V, as the SEG authors' SDXL
/// code does: kernel size k = ⌈6σ⌉ + 1 − (⌈6σ⌉ mod 2), then k = min(k, side − (side mod 2 − 1)) per axis, reflect
/// padding of k div 2, taps exp(−x²/2σ²) at x = −(k−1)/2 … (k−1)/2 normalised to sum 1, applied separably. σ = ∞
/// replaces every query by the mean query; σ → 0 is normal attention. (diffusers' <c>_gaussian_blur_2d</c> swaps the
/// two cases — a finite σ gives the mean there; this follows the authors.) Spec <c>seg:σ</c> or <c>seg:inf</c>.
/// </summary>
public sealed class SegPerturbation : IAttentionPerturbation
{
    public SegPerturbation(double sigma)
    {
        if (double.IsNaN(sigma) || sigma < 0)
            throw new PagSharpException($"SEG blur σ must be ≥ 0 in token-grid units, or infinity (got {sigma.ToString(CultureInfo.InvariantCulture)})");
        Sigma = sigma;
    }

    public double Sigma { get; }

    public string Spec => "seg:" + (double.IsPositiveInfinity(Sigma) ? "inf" : Sigma.ToString("R", CultureInfo.InvariantCulture));

    /// <summary>The kernel size along an axis of <paramref name="side"/> tokens (the authors' rule above).</summary>
    public int KernelSize(long side)
    {
        int k = (int)Math.Ceiling(6 * Sigma);
        k = k + 1 - (k % 2);
        return (int)Math.Min(k, side - (side % 2 - 1));
    }

    /// <summary>The blurred queries for <paramref name="q"/> [n, heads, H·W, d].</summary>
    public Tensor BlurQueries(Tensor q, int height, int width)
    {
        long n = q.shape[0], heads = q.shape[1], t = q.shape[2], d = q.shape[3];
        if (height <= 0 || width <= 0 || (long)height * width != t)
            throw new PagSharpException($"SEG needs a spatial attention layer whose {t} queries form its token grid (got {height}×{width})");
        if (double.IsPositiveInfinity(Sigma)) return q.mean(new long[] { 2 }, keepdim: true).expand_as(q);
        if (Sigma == 0) return q;
        var grid = q.reshape(n, heads, height, width, d).permute(0, 1, 4, 2, 3); // [n, heads, d, H, W]
        var blurred = GaussianBlur.Apply(grid, KernelSize(height), KernelSize(width), Sigma, Sigma);
        return blurred.permute(0, 1, 3, 4, 2).reshape(n, heads, t, d);
    }

    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context) =>
        AttentionMath.Normal(BlurQueries(q, context.Height, context.Width), k, v);
}
