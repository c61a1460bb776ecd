using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// The pieces of guided-diffusion's attention that perturbation policies share, in the same operation order as
/// <c>AttentionBlock</c>'s normal attention, so that a policy that degenerates to normal attention reproduces it bit
/// for bit. Tensors are [n, heads, tokens, headDim]; maps are [n, heads, queries, keys].
/// </summary>
public static class AttentionMath
{
    /// <summary>Attention logits (q·s)(k·s)ᵀ with s = d^(−1/4) on both sides, as guided-diffusion.</summary>
    public static Tensor Logits(Tensor q, Tensor k)
    {
        double s = 1.0 / Math.Sqrt(Math.Sqrt(q.shape[^1]));
        return matmul(q * s, (k * s).transpose(2, 3));
    }

    /// <summary>Softmax over keys (the last axis), computed in float32 and cast back to the logits' dtype.</summary>
    public static Tensor Softmax(Tensor logits)
    {
        if (logits.dtype == ScalarType.Float32) return logits.softmax(-1);
        return logits.to_type(ScalarType.Float32).softmax(-1).to_type(logits.dtype);
    }

    /// <summary>The normal attention map softmax((q·s)(k·s)ᵀ).</summary>
    public static Tensor Map(Tensor q, Tensor k) => Softmax(Logits(q, k));

    /// <summary>Normal attention: softmax((q·s)(k·s)ᵀ)·v.</summary>
    public static Tensor Normal(Tensor q, Tensor k, Tensor v) => matmul(Map(q, k), v);

    /// <summary>
    /// The one attention core of every network: with <paramref name="fused"/> and no map wanted, libtorch's fused
    /// scaled_dot_product_attention (scale 1/√d applied once; equal to the reference order within float32 rounding);
    /// otherwise softmax((q·s)(k·s)ᵀ)·v in the reference order, handing out the map when <paramref name="wantMap"/>.
    /// </summary>
    public static Tensor Attend(Tensor q, Tensor k, Tensor v, bool fused, bool wantMap, out Tensor? map)
    {
        if (!wantMap && fused)
        {
            map = null;
            return nn.functional.scaled_dot_product_attention(q, k, v);
        }
        var w = Map(q, k);
        map = wantMap ? w : null;
        return matmul(w, v);
    }
}
