using System.Globalization;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Interpolation between normal attention and PAG's identity map: A_λ = (1 − λ)·A + λ·I, so the output is
/// (1 − λ)·(A·V) + λ·V. λ = 1 is exactly <see cref="IdentityPerturbation"/> (the output is V), λ = 0 exactly normal
/// attention (same operations as the attention block). Rows of A_λ still sum to 1. Not in the official code; an
/// ablation of how far the map has to move from A before the guidance signal appears. Spec <c>soft:λ</c>.
/// </summary>
public sealed class SoftPerturbation : IAttentionPerturbation
{
    public SoftPerturbation(double lambda)
    {
        if (double.IsNaN(lambda) || lambda < 0 || lambda > 1)
            throw new PagSharpException($"soft λ must be in [0, 1] (got {lambda.ToString(CultureInfo.InvariantCulture)}); 1 = identity (PAG), 0 = normal attention");
        Lambda = lambda;
    }

    public double Lambda { get; }

    public string Spec => "soft:" + Lambda.ToString("R", CultureInfo.InvariantCulture);

    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context)
    {
        if (Lambda == 1) return v.alias();
        var a = AttentionMath.Normal(q, k, v);
        if (Lambda == 0) return a;
        return (1 - Lambda) * a + Lambda * v;
    }
}
