using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Skip-layer guidance's perturbation (SLG, as in Stable Diffusion 3.5's recipe): the chosen self-attention layer
/// contributes nothing for the perturbed entries, so its block outputs the residual input there. The attention
/// modules handle it (<see cref="PerturbationPlan.SkippedEntries"/>): an ADM attention block returns its input, a
/// diffusers self-attention returns zeros before its residual is added. Spec <c>skip</c>.
/// </summary>
public sealed class SkipPerturbation : IAttentionPerturbation
{
    public static readonly SkipPerturbation Instance = new();
    public string Spec => "skip";
    /// <summary>Zero attention output (the modules also drop their output projection for these entries).</summary>
    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context) => zeros_like(v);
}
