using PagSharp.Attention;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>
/// diffusers' <c>Attention</c> with <c>AttnProcessor2_0</c>: q = to_q(h), k = to_k(c), v = to_v(c) with c = h for
/// self-attention or the encoder hidden states for cross-attention; heads split as [B, heads, T, d];
/// softmax(q kᵀ/√d) v; heads merged; <c>to_out.0</c> (Linear) and <c>to_out.1</c> (Dropout).
/// <para>
/// A self-attention layer created with a <see cref="Path"/> goes through <see cref="PerturbableAttention"/>: a plan
/// can replace its attention for some batch entries. PAG's identity policy returns v, so the layer outputs
/// to_out(to_v(h)), exactly diffusers' <c>PAGIdentitySelfAttnProcessor2_0</c> / <c>PAGCFGIdentitySelfAttnProcessor2_0</c>
/// for the perturbed chunk. Cross-attention is never perturbed.
/// </para>
/// </summary>
internal sealed class SdAttention : Module
{
#pragma warning disable IDE1006 // field names are checkpoint keys
    private readonly GroupNorm? group_norm;
    private readonly Linear to_q;
    private readonly Linear to_k;
    private readonly Linear to_v;
    private readonly Sequential to_out;
#pragma warning restore IDE1006
    private readonly bool _residual;

    /// <summary>Module path for perturbable self-attention (e.g. <c>mid_block.attentions.0.transformer_blocks.0.attn1</c>), or null.</summary>
    public string? Path { get; }
    public int Heads { get; }
    public int HeadDim { get; }

    /// <param name="queryDim">Channels of the tokens.</param>
    /// <param name="crossAttentionDim">Channels of the encoder hidden states, or null for self-attention.</param>
    /// <param name="heads">Number of heads.</param>
    /// <param name="dimHead">Channels per head.</param>
    /// <param name="bias">Biases on to_q/to_k/to_v (the UNet has none, the VAE has them).</param>
    /// <param name="path">Module path when this is a perturbable self-attention layer.</param>
    /// <param name="groupNorm">(groups, eps) of a GroupNorm over channels before the projections (VAE), or null.</param>
    /// <param name="residual">Add the input to the output (VAE).</param>
    /// <param name="dropout">Dropout of to_out.1 (inactive in eval mode).</param>
    public SdAttention(long queryDim, long? crossAttentionDim, int heads, int dimHead, bool bias, string? path = null,
                       (int Groups, double Eps)? groupNorm = null, bool residual = false, double dropout = 0)
        : base(nameof(SdAttention))
    {
        long inner = (long)heads * dimHead, kvDim = crossAttentionDim ?? queryDim;
        if (groupNorm is { } gn) group_norm = SdNn.GroupNorm(gn.Groups, queryDim, gn.Eps);
        to_q = Linear(queryDim, inner, hasBias: bias);
        to_k = Linear(kvDim, inner, hasBias: bias);
        to_v = Linear(kvDim, inner, hasBias: bias);
        to_out = Sequential(Linear(inner, queryDim, hasBias: true), Dropout(dropout));
        _residual = residual;
        Path = path;
        Heads = heads;
        HeadDim = dimHead;
        RegisterComponents();
    }

    /// <summary>
    /// Attention on tokens <paramref name="h"/> [B, T, C]. <paramref name="context"/> [B, S, C'] for cross-attention.
    /// <paramref name="height"/> × <paramref name="width"/> is the token grid (for perturbation policies that need it).
    /// </summary>
    public Tensor Forward(Tensor h, Tensor? context, int height, int width, PerturbationPlan? plan)
    {
        var residual = h;
        if (group_norm is not null) h = group_norm.forward(h.transpose(1, 2)).transpose(1, 2);
        long b = h.shape[0];
        var ctx = context ?? h;
        var q = SplitHeads(to_q.forward(h), b);
        var k = SplitHeads(to_k.forward(ctx), b);
        var v = SplitHeads(to_v.forward(ctx), b);
        var a = Path is not null
            ? PerturbableAttention.Attend(Path, q, k, v, height, width, plan, FusedAttention)
            : AttentionMath.Attend(q, k, v, FusedAttention, false, out _);
        var o = to_out.forward(a.transpose(1, 2).reshape(b, -1, (long)Heads * HeadDim));
        if (Path is not null && plan?.SkippedEntries(Path, b) is { } skipped)
        {
            // Skip-layer guidance: no contribution for these entries (the transformer block adds its residual).
            using var idx = tensor(skipped, device: o.device);
            o = o.index_fill(0, idx, 0);
        }
        return _residual ? o + residual : o;
    }

    /// <summary>The VAE form: x [B, C, H, W] as H·W tokens, then back to [B, C, H, W].</summary>
    public Tensor ForwardSpatial(Tensor x)
    {
        long b = x.shape[0], c = x.shape[1], hh = x.shape[2], ww = x.shape[3];
        var tokens = x.reshape(b, c, hh * ww).transpose(1, 2);
        var o = Forward(tokens, null, (int)hh, (int)ww, null);
        return o.transpose(1, 2).reshape(b, c, hh, ww);
    }

    private Tensor SplitHeads(Tensor t, long b) => t.view(b, -1, Heads, HeadDim).transpose(1, 2);

    /// <summary>Unperturbed attention through libtorch's fused kernel when no map is needed (<see cref="AttentionMath.Attend"/>); set per network by <see cref="SdUNet.FusedAttention"/>.</summary>
    public bool FusedAttention { get; set; } = true;
}
