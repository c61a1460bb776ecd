using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Skip-layer guidance's perturbation (SLG, as in Stable Diffusion 3.5's recipe): the chosen self-attention layer
/// contributes nothing for the perturbed entries, so its block outputs the residual input there. The attention
/// modules handle it (<see cref="PerturbationPlan.SkippedEntries"/>): an ADM attention block returns its input, a
/// diffusers self-attention returns zeros before its residual is added. Spec <c>skip</c>.
/// <see cref="Block"/> (spec <c>skip-block</c>) skips the whole transformer block the self-attention belongs to
/// (self-attention, cross-attention and feed-forward: the block outputs its input); on ADM, whose attention layers are
/// whole blocks already, the two are the same.
/// </summary>
public sealed class SkipPerturbation : IAttentionPerturbation
{
    /// <summary>The self-attention is skipped.</summary>
    public static readonly SkipPerturbation Instance = new(false);
    /// <summary>The whole transformer block is skipped.</summary>
    public static readonly SkipPerturbation Block = new(true);

    private SkipPerturbation(bool wholeBlock) => WholeBlock = wholeBlock;

    /// <summary>Whether the whole transformer block is skipped, not only its self-attention.</summary>
    public bool WholeBlock { get; }
    public string Spec => WholeBlock ? "skip-block" : "skip";
    /// <summary>Zero attention output (the modules also drop their output projection for these entries).</summary>
    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context) => zeros_like(v);
}
