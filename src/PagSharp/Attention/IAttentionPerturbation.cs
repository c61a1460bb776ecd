using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// What a perturbed self-attention layer computes instead of softmax(QKᵀ/√d)·V. Implementations are policies handed
/// to attention layers through a <see cref="PerturbationPlan"/>: the U-Net code never learns which one is in use.
/// </summary>
public interface IAttentionPerturbation
{
    /// <summary>Short spec string, e.g. <c>identity</c> or <c>mask:0.5</c>, as accepted by the CLI.</summary>
    string Spec { get; }

    /// <summary>
    /// Attention for the perturbed batch entries. <paramref name="q"/>, <paramref name="k"/>, <paramref name="v"/>
    /// are [n, heads, tokens, headDim]; the result has the shape of <paramref name="v"/>.
    /// </summary>
    Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context);
}

/// <summary>Facts about the layer a policy is applied in.</summary>
/// <param name="Layer">Module path of the attention block (a checkpoint key prefix).</param>
/// <param name="Height">Spatial height of the token grid (tokens = Height × Width), or 0 when not spatial.</param>
/// <param name="Width">Spatial width of the token grid.</param>
/// <param name="Generator">Random source for stochastic policies (seeded from the run seed), or null.</param>
public sealed record AttentionContext(string Layer, int Height, int Width, Generator? Generator);
