using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// PAG's perturbation (Ahn et al. 2024, §3.2): the attention map is replaced by the identity, so the layer outputs V
/// (and the block outputs x + proj_out(V)). QKᵀ is never formed.
/// </summary>
public sealed class IdentityPerturbation : IAttentionPerturbation
{
    public static readonly IdentityPerturbation Instance = new();
    public string Spec => "identity";
    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context) => v.alias();
}
