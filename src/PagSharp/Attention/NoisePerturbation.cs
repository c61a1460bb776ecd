using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>Where <see cref="NoisePerturbation"/> adds its noise.</summary>
public enum NoiseTarget
{
    /// <summary>
    /// To the softmax probabilities, after the softmax, with no renormalisation or clamping: the official PAG ADM
    /// code's <c>QKVAttentionLegacyNoise</c> (<c>weight = softmax(...) + randn_like(weight)·noise_scale</c>). Rows no
    /// longer sum to 1 and weights can be negative. Spec <c>noise:S</c>.
    /// </summary>
    Probabilities,
    /// <summary>To the logits, before the softmax: rows stay a probability distribution. Spec <c>noise-logits:S</c>.</summary>
    Logits,
}

/// <summary>
/// Additive Gaussian noise on the attention map: N(0, σ²) drawn independently per (batch entry, head, query, key),
/// one <c>randn</c> of shape [n, heads, T, T] from <see cref="AttentionContext.Generator"/> (torch's global generator
/// when that is null). By default (<see cref="NoiseTarget.Probabilities"/>) the noise is added to the
/// <b>probabilities after the softmax</b>, because that is what the official PAG code's noise variant does; the
/// logits-before-softmax form is available as <see cref="NoiseTarget.Logits"/>. σ = 0 is normal attention.
/// </summary>
public sealed class NoisePerturbation : IAttentionPerturbation
{
    public NoisePerturbation(double sigma, NoiseTarget target = NoiseTarget.Probabilities)
    {
        if (double.IsNaN(sigma) || double.IsInfinity(sigma) || sigma < 0)
            throw new PagSharpException($"noise σ must be a finite number ≥ 0 (got {sigma.ToString(CultureInfo.InvariantCulture)})");
        Sigma = sigma;
        Target = target;
    }

    public double Sigma { get; }
    public NoiseTarget Target { get; }

    public string Spec => (Target == NoiseTarget.Probabilities ? "noise:" : "noise-logits:") + Sigma.ToString("R", CultureInfo.InvariantCulture);

    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context)
    {
        var logits = AttentionMath.Logits(q, k);
        var noise = randn(logits.shape, logits.dtype, device: logits.device, generator: context.Generator) * Sigma;
        var w = Target == NoiseTarget.Logits
            ? AttentionMath.Softmax(logits + noise)
            : AttentionMath.Softmax(logits) + noise;
        return matmul(w, v);
    }
}
