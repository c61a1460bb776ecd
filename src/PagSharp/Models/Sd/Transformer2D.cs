using PagSharp.Attention;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>diffusers' <c>GEGLU</c>: proj(x) split in two halves a, g; a · gelu(g) (exact, erf-based GELU).</summary>
internal sealed class Geglu : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear proj;
#pragma warning restore IDE1006

    public Geglu(long dimIn, long dimOut) : base(nameof(Geglu))
    {
        proj = Linear(dimIn, dimOut * 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var parts = proj.forward(x).chunk(2, -1);
        return parts[0] * functional.gelu(parts[1]);
    }
}

/// <summary>diffusers' <c>FeedForward</c> with GEGLU: <c>net.0</c> GEGLU(dim → 4·dim), <c>net.1</c> Dropout, <c>net.2</c> Linear(4·dim → dim).</summary>
internal sealed class FeedForward : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Sequential net;
#pragma warning restore IDE1006

    public FeedForward(long dim, double dropout) : base(nameof(FeedForward))
    {
        long inner = dim * 4;
        net = Sequential(new Geglu(dim, inner), Dropout(dropout), Linear(inner, dim));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => net.forward(x);
}

/// <summary>
/// diffusers' <c>BasicTransformerBlock</c> (norm_type layer_norm): h += attn1(norm1(h)); h += attn2(norm2(h), text);
/// h += ff(norm3(h)). LayerNorms have eps 1e-5 and affine parameters; attn1 is the perturbable self-attention.
/// </summary>
internal sealed class BasicTransformerBlock : Module
{
#pragma warning disable IDE1006
    private readonly LayerNorm norm1;
    private readonly SdAttention attn1;
    private readonly LayerNorm norm2;
    private readonly SdAttention attn2;
    private readonly LayerNorm norm3;
    private readonly FeedForward ff;
#pragma warning restore IDE1006

    public BasicTransformerBlock(string path, long dim, int heads, int headDim, long crossAttentionDim, double dropout)
        : base(nameof(BasicTransformerBlock))
    {
        norm1 = SdNn.LayerNorm(dim, 1e-5);
        attn1 = new SdAttention(dim, null, heads, headDim, bias: false, path: path + ".attn1", dropout: dropout);
        norm2 = SdNn.LayerNorm(dim, 1e-5);
        attn2 = new SdAttention(dim, crossAttentionDim, heads, headDim, bias: false, dropout: dropout);
        norm3 = SdNn.LayerNorm(dim, 1e-5);
        ff = new FeedForward(dim, dropout);
        RegisterComponents();
    }

    public string SelfAttentionPath => attn1.Path!;

    public Tensor Forward(Tensor h, Tensor context, int height, int width, PerturbationPlan? plan)
    {
        // Intermediates are freed at the end of the block (TorchSharp frees on dispose, not on the last reference).
        using var scope = NewDisposeScope();
        var input = h;
        h = attn1.Forward(norm1.forward(h), null, height, width, plan) + h;
        h = attn2.Forward(norm2.forward(h), context, height, width, null) + h;
        var outp = ff.forward(norm3.forward(h)) + h;
        if (plan?.SkippedBlockEntries(SelfAttentionPath, input.shape[0]) is { } skipped)
        {
            // Skip-layer guidance on the whole block: it passes its input on for these entries.
            using var idx = tensor(skipped, device: input.device);
            outp = outp.index_copy(0, idx, input.index_select(0, idx));
        }
        return outp.MoveToOuterDisposeScope();
    }
}

/// <summary>
/// diffusers' <c>Transformer2DModel</c> for continuous inputs: GroupNorm(groups, C, eps 1e-6) → proj_in (1×1 conv,
/// or Linear on tokens with use_linear_projection) → transformer blocks on H·W tokens → proj_out → + input.
/// </summary>
internal sealed class Transformer2D : Module
{
#pragma warning disable IDE1006
    private readonly GroupNorm norm;
    private readonly Module<Tensor, Tensor> proj_in;
    private readonly ModuleList<BasicTransformerBlock> transformer_blocks;
    private readonly Module<Tensor, Tensor> proj_out;
#pragma warning restore IDE1006
    private readonly bool _linear;
    private readonly long _inner;

    /// <summary>Module path, e.g. <c>down_blocks.1.attentions.0</c>.</summary>
    public string Path { get; }

    public Transformer2D(string path, long channels, int heads, int layers, long crossAttentionDim, int groups, bool useLinearProjection, double dropout)
        : base(nameof(Transformer2D))
    {
        Path = path;
        int headDim = (int)(channels / heads);
        _inner = (long)heads * headDim;
        _linear = useLinearProjection;
        norm = SdNn.GroupNorm(groups, channels, 1e-6);
        proj_in = useLinearProjection ? Linear(channels, _inner) : Conv2d(channels, _inner, 1);
        transformer_blocks = SdModuleList.Of(Enumerable.Range(0, layers)
            .Select(i => new BasicTransformerBlock($"{path}.transformer_blocks.{i}", _inner, heads, headDim, crossAttentionDim, dropout)));
        proj_out = useLinearProjection ? Linear(_inner, channels) : Conv2d(_inner, channels, 1);
        RegisterComponents();
    }

    /// <summary>The self-attention layer names inside, in forward order.</summary>
    public IEnumerable<string> SelfAttentionPaths => transformer_blocks.Select(b => b.SelfAttentionPath);

    public Tensor Forward(Tensor x, Tensor context, PerturbationPlan? plan)
    {
        using var scope = NewDisposeScope();
        long b = x.shape[0], hh = x.shape[2], ww = x.shape[3];
        var residual = x;
        var h = norm.forward(x);
        if (!_linear)
            h = proj_in.forward(h).permute(0, 2, 3, 1).reshape(b, hh * ww, _inner);
        else
            h = proj_in.forward(h.permute(0, 2, 3, 1).reshape(b, hh * ww, h.shape[1]));
        foreach (var block in transformer_blocks)
            h = block.Forward(h, context, (int)hh, (int)ww, plan);
        if (!_linear)
            h = proj_out.forward(h.reshape(b, hh, ww, _inner).permute(0, 3, 1, 2).contiguous());
        else
            h = proj_out.forward(h).reshape(b, hh, ww, -1).permute(0, 3, 1, 2).contiguous();
        return (h + residual).MoveToOuterDisposeScope();
    }
}
