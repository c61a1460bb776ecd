using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>What skip-layer guidance skips at each chosen self-attention layer (<see cref="SkipPerturbation"/>).</summary>
public enum SkipTarget
{
    /// <summary>The self-attention (spec <c>skip</c>).</summary>
    Attention,
    /// <summary>The whole transformer block the self-attention belongs to (spec <c>skip-block</c>).</summary>
    Block,
    /// <summary>The ResBlock that feeds the attention layer; the attention itself runs normally (spec <c>skip-resblock</c>).</summary>
    ResBlock,
}

/// <summary>
/// Skip-layer guidance's perturbation (SLG, as in Stable Diffusion 3.5's recipe): the chosen self-attention layer
/// contributes nothing for the perturbed entries, so its block outputs the residual input there. The attention
/// modules handle it (<see cref="PerturbationPlan.SkippedEntries"/>): an ADM attention block returns its input, a
/// diffusers self-attention returns zeros before its residual is added. Spec <c>skip</c>.
/// <see cref="Block"/> (spec <c>skip-block</c>) skips the whole transformer block the self-attention belongs to
/// (self-attention, cross-attention and feed-forward: the block outputs its input); on ADM, whose attention layers are
/// whole blocks already, the two are the same.
/// <see cref="ResBlock"/> (spec <c>skip-resblock</c>) leaves the attention alone and skips the ResBlock before it in
/// the same block (<see cref="PerturbationPlan.SkippedResBlockEntries(string, long)"/>): its residual branch contributes
/// nothing, so it outputs its skip-connection path — guided-diffusion: <c>skip_connection(x)</c> (after the block's
/// resampling, if any); diffusers' ResnetBlock2D: <c>shortcut(x) / output_scale_factor</c> with shortcut =
/// <c>conv_shortcut</c> or the identity (output_scale_factor is 1 in the Stable Diffusion UNets). ADM
/// <c>input_blocks.N.1</c> → <c>input_blocks.N.0</c>, <c>middle_block.1</c> → <c>middle_block.0</c>; SD
/// <c>…attentions.j.transformer_blocks.k.attn1</c> → <c>…resnets.j</c> of the same block (once, however many of its
/// transformer blocks are chosen).
/// </summary>
public sealed class SkipPerturbation : IAttentionPerturbation
{
    /// <summary>The self-attention is skipped.</summary>
    public static readonly SkipPerturbation Instance = new(SkipTarget.Attention);
    /// <summary>The whole transformer block is skipped.</summary>
    public static readonly SkipPerturbation Block = new(SkipTarget.Block);
    /// <summary>The ResBlock feeding the attention layer is skipped; the attention runs normally.</summary>
    public static readonly SkipPerturbation ResBlock = new(SkipTarget.ResBlock);

    private SkipPerturbation(SkipTarget target) => Target = target;

    /// <summary>The policy for <paramref name="target"/>.</summary>
    public static SkipPerturbation Of(SkipTarget target) => target switch
    {
        SkipTarget.Attention => Instance,
        SkipTarget.Block => Block,
        SkipTarget.ResBlock => ResBlock,
        _ => throw new ArgumentOutOfRangeException(nameof(target), target, null),
    };

    /// <summary>What is skipped.</summary>
    public SkipTarget Target { get; }
    /// <summary>Whether the whole transformer block is skipped, not only its self-attention.</summary>
    public bool WholeBlock => Target == SkipTarget.Block;
    /// <summary>Whether this is an attention perturbation at all: false for <see cref="SkipTarget.ResBlock"/>, which attention layers ignore.</summary>
    public bool PerturbsAttention => Target != SkipTarget.ResBlock;
    public string Spec => Target switch { SkipTarget.Block => "skip-block", SkipTarget.ResBlock => "skip-resblock", _ => "skip" };

    /// <summary>
    /// Zero attention output (the modules also drop their output projection for these entries). For
    /// <see cref="SkipTarget.ResBlock"/> the attention layer never asks (<see cref="PerturbableAttention"/> runs normal
    /// attention there); called anyway, it returns the normal attention.
    /// </summary>
    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context) =>
        PerturbsAttention ? zeros_like(v) : AttentionMath.Normal(q, k, v);
}
