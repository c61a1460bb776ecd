using System.Globalization;
using PagSharp.Imaging;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Gaussian blur of the attention map over the <b>query</b> spatial grid. The map A [n, heads, T, T] (rows = queries
/// q = y·W + x of the layer's H×W token grid, <see cref="AttentionContext.Height"/> × <see cref="AttentionContext.Width"/>;
/// columns = keys) is viewed, for every (entry, head, key), as an H×W image over the query positions and blurred
/// with σ in token-grid units (<see cref="GaussianBlur"/>, reflect padding, kernel size 2·⌈3σ⌉ + 1 clamped per axis
/// to 2·(axis − 1) + 1 so the padding fits): A′[q, k] = Σ_q′ G(q, q′)·A[q′, k]. Keys are not mixed. Each row is then
/// divided by its sum, so every query's weights sum to 1 again (the blur already nearly preserves that; the
/// renormalisation removes rounding). Neighbouring queries thus share their attention distributions.
/// <para>
/// The official PAG code's <c>QKVAttentionLegacyBlur</c> differs: it blurs the T×T matrix as one image over the
/// flattened query index and key index (kernel 5 by default), ignoring the 2-D grid, and does not renormalise.
/// </para>
/// Spec <c>blur:σ</c>; needs a spatial layer (Height·Width = T).
/// </summary>
public sealed class BlurPerturbation : IAttentionPerturbation
{
    public BlurPerturbation(double sigma)
    {
        if (double.IsNaN(sigma) || double.IsInfinity(sigma) || sigma <= 0)
            throw new PagSharpException($"blur σ must be a finite number > 0 in token-grid units (got {sigma.ToString(CultureInfo.InvariantCulture)})");
        Sigma = sigma;
    }

    public double Sigma { get; }

    public string Spec => "blur:" + Sigma.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>Kernel size used along an axis of <paramref name="length"/> tokens: 2·min(⌈3σ⌉, length − 1) + 1.</summary>
    public int KernelSize(long length) => 2 * (int)Math.Min(Math.Ceiling(3 * Sigma), length - 1) + 1;

    /// <summary>The blurred, row-renormalised map for a map <paramref name="a"/> [n, heads, H·W, T].</summary>
    public Tensor BlurMap(Tensor a, int height, int width)
    {
        long n = a.shape[0], heads = a.shape[1], t = a.shape[2], keys = a.shape[3];
        if (height <= 0 || width <= 0 || (long)height * width != t)
            throw new PagSharpException($"blur perturbation needs a spatial attention layer whose {t} queries form its token grid (got {height}×{width})");
        var grid = a.reshape(n, heads, height, width, keys).permute(0, 1, 4, 2, 3); // [n, heads, keys, H, W]
        var blurred = GaussianBlur.Apply(grid, KernelSize(height), KernelSize(width), Sigma, Sigma)
            .permute(0, 1, 3, 4, 2).reshape(n, heads, t, keys);
        return blurred / blurred.sum(-1, keepdim: true);
    }

    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context)
    {
        var a = AttentionMath.Map(q, k);
        return matmul(BlurMap(a, context.Height, context.Width), v);
    }
}
