using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Random masking of attention logits, the official PAG ADM code's <c>QKVAttentionLegacyMask(drop_rate, retain_diag)</c>:
/// for every (batch entry, head, query, key) an independent u ~ U[0, 1) is drawn (one <c>rand</c> of shape
/// [n, heads, T, T] from <see cref="AttentionContext.Generator"/>, or torch's global generator when that is null);
/// a logit is masked when u &lt; <see cref="DropRate"/>; with <see cref="RetainDiagonal"/> the diagonal (a query's
/// own key) is never masked. Masked logits are set to −∞ before the float32 softmax, so they get weight exactly 0.
/// <para>
/// <c>mask:1</c> (with the diagonal) masks everything but the diagonal: the map is exactly the identity and the
/// output is V, which is how the official code implements PAG. <c>mask:0</c> is normal attention.
/// </para>
/// <para>
/// <b>Guard (not in the official code).</b> Without the diagonal a row can be masked completely; the official code
/// then takes the softmax of a row of −∞ and produces NaN. Here such a row keeps its diagonal entry instead, so
/// that query attends only to itself (its output is its own value vector) — the same result <c>mask:1</c> gives for
/// every row. Rows with at least one unmasked key are left exactly as the official code computes them.
/// </para>
/// </summary>
public sealed class MaskPerturbation : IAttentionPerturbation
{
    /// <param name="dropRate">Probability r ∈ [0, 1] that a logit is masked.</param>
    /// <param name="retainDiagonal">Never mask a query's own key (<c>mask:R</c>); false gives <c>mask-nodiag:R</c>.</param>
    public MaskPerturbation(double dropRate, bool retainDiagonal = true)
    {
        if (double.IsNaN(dropRate) || dropRate < 0 || dropRate > 1)
            throw new PagSharpException($"mask drop rate must be in [0, 1] (got {dropRate.ToString(CultureInfo.InvariantCulture)})");
        DropRate = dropRate;
        RetainDiagonal = retainDiagonal;
    }

    public double DropRate { get; }
    public bool RetainDiagonal { get; }

    public string Spec => (RetainDiagonal ? "mask:" : "mask-nodiag:") + DropRate.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>The boolean mask (true = masked) for a map of shape <paramref name="mapShape"/>, as <see cref="Attend"/> draws it.</summary>
    public Tensor DrawMask(long[] mapShape, Generator? generator, Device? device = null)
    {
        var u = rand(mapShape, ScalarType.Float32, device: device, generator: generator);
        var masked = u < DropRate;
        long t = mapShape[^1];
        using var eye = torch.eye(t, dtype: ScalarType.Bool, device: device);
        if (RetainDiagonal)
            return masked.logical_and(eye.logical_not());
        // Rows masked completely keep their diagonal (see the class documentation).
        using var fullRows = masked.all(-1, keepdim: true); // [.., T, 1]
        return masked.logical_and(eye.logical_and(fullRows).logical_not());
    }

    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context)
    {
        var logits = AttentionMath.Logits(q, k);
        using var mask = DrawMask(logits.shape, context.Generator, logits.device);
        var w = AttentionMath.Softmax(logits.masked_fill(mask, double.NegativeInfinity));
        return matmul(w, v);
    }
}
