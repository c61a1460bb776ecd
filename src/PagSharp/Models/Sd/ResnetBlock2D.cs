using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>
/// diffusers' <c>ResnetBlock2D</c> (pre-norm): h = conv1(act(norm1(x))); h += time_emb_proj(act(temb)) (or scale/shift
/// after norm2); h = conv2(dropout(act(norm2(h)))); out = (shortcut(x) + h) / output_scale_factor, with a 1×1
/// <c>conv_shortcut</c> when the channel count changes. Without a time embedding (the VAE) there is no
/// <c>time_emb_proj</c>.
/// </summary>
internal sealed class ResnetBlock2D : Module
{
#pragma warning disable IDE1006 // field names are checkpoint keys
    private readonly GroupNorm norm1;
    private readonly Conv2d conv1;
    private readonly Linear? time_emb_proj;
    private readonly GroupNorm norm2;
    private readonly Dropout dropout;
    private readonly Conv2d conv2;
    private readonly Conv2d? conv_shortcut;
#pragma warning restore IDE1006
    private readonly string _act;
    private readonly bool _scaleShift;
    private readonly double _outScale;
    private readonly long _groups;
    /// <summary>norm1's group count.</summary>
    public long Groups => _groups;
    /// <summary>The first 3×3 conv (on the block input) and the 1×1 shortcut conv (null = identity).</summary>
    internal (Conv2d Conv1, Conv2d? Shortcut) InputConvs => (conv1, conv_shortcut);
    private readonly double _eps;

    public ResnetBlock2D(long inChannels, long outChannels, long? tembChannels, int groups, double eps, string act,
                         double dropoutP = 0, string timeEmbeddingNorm = "default", double outputScaleFactor = 1)
        : base(nameof(ResnetBlock2D))
    {
        _scaleShift = timeEmbeddingNorm == "scale_shift";
        norm1 = SdNn.GroupNorm(groups, inChannels, eps);
        conv1 = SdNn.Conv(inChannels, outChannels);
        if (tembChannels is long tc) time_emb_proj = Linear(tc, _scaleShift ? 2 * outChannels : outChannels);
        norm2 = SdNn.GroupNorm(groups, outChannels, eps);
        dropout = Dropout(dropoutP);
        conv2 = SdNn.Conv(outChannels, outChannels);
        if (inChannels != outChannels) conv_shortcut = Conv2d(inChannels, outChannels, 1);
        _act = act;
        _outScale = outputScaleFactor;
        _groups = groups;
        _eps = eps;
        RegisterComponents();
    }

    /// <param name="x">The input.</param>
    /// <param name="temb">The time embedding (null in the VAE).</param>
    /// <param name="skipped">
    /// Batch entries for which the block is skipped (skip-layer guidance on the resnet, <see cref="Attention.SkipTarget.ResBlock"/>):
    /// its residual branch h contributes nothing there, so they get <c>shortcut(x) / output_scale_factor</c> — the
    /// block's output with h = 0 (shortcut = conv_shortcut or the identity; the scale is 1 in the SD UNets). Null = none.
    /// </param>
    public Tensor Forward(Tensor x, Tensor? temb, long[]? skipped = null)
    {
        // TorchSharp frees a tensor when it is disposed, not when the last reference goes: without this scope every
        // intermediate of the block would live until the end of the sampling step.
        using var scope = NewDisposeScope();
        var h = conv1.forward(SdNn.Activation(_act, norm1.forward(x)));
        return Finish(conv_shortcut is null ? x : conv_shortcut.forward(x), h, temb, skipped).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The same result as <c>Forward(cat([h, widen(skip)], 1), temb, skipped)</c> in an up block after a shared-prefix
    /// fork, with the skip-only part computed once on the pre-fork batch (<see cref="SplitSkip"/>). Null where this does
    /// not apply (no conv_shortcut, no group of skip channels alone).
    /// </summary>
    public Tensor? ForwardSplitSkip(Tensor h, Tensor skip, SkipWidening widen, Tensor? temb, long[]? skipped = null)
    {
        if (conv_shortcut is null) return null;
        var hIn = SplitSkip.NormActConv(h, skip, widen, norm1, _groups, _eps, x => SdNn.Activation(_act, x), conv1);
        return hIn is null ? null : Finish(SplitSkip.Conv(h, skip, widen, conv_shortcut), hIn, temb, skipped);
    }

    /// <summary>Time-embedding injection, norm2, conv2, and the shortcut sum (with h zeroed on the skipped entries).</summary>
    private Tensor Finish(Tensor shortcut, Tensor h, Tensor? temb, long[]? skipped)
    {
        Tensor? t = null;
        if (time_emb_proj is not null && temb is not null)
            t = time_emb_proj.forward(SdNn.Activation(_act, temb)).unsqueeze(-1).unsqueeze(-1);
        if (!_scaleShift)
        {
            if (t is not null) h = h + t;
            h = norm2.forward(h);
        }
        else
        {
            if (t is null) throw new PagSharpException("a scale_shift resnet needs a time embedding");
            var ss = t.chunk(2, 1);
            h = norm2.forward(h) * (1 + ss[0]) + ss[1];
        }
        h = conv2.forward(dropout.forward(SdNn.Activation(_act, h)));
        if (skipped is not null)
        {
            using var idx = tensor(skipped, device: h.device);
            h = h.index_fill(0, idx, 0);
        }
        var o = shortcut + h;
        return _outScale == 1 ? o : o / _outScale;
    }
}

/// <summary>
/// diffusers' <c>Downsample2D</c> with a conv (key <c>conv</c>): a 3×3 stride-2 conv with the given padding; with
/// padding 0 the input is first zero-padded by one on the right and bottom (<c>F.pad(x, (0, 1, 0, 1))</c>, the VAE).
/// </summary>
internal sealed class Downsample2D : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv2d conv;
#pragma warning restore IDE1006
    private readonly long _padding;

    public Downsample2D(long channels, long outChannels, long padding) : base(nameof(Downsample2D))
    {
        conv = Conv2d(channels, outChannels, 3, stride: 2, padding: padding);
        _padding = padding;
        RegisterComponents();
    }

    /// <summary>The stride-2 conv and its padding (0: the input is padded right and bottom by one first).</summary>
    internal (Conv2d Conv, long Padding) Layout => (conv, _padding);

    public override Tensor forward(Tensor x)
    {
        if (_padding == 0) x = functional.pad(x, new long[] { 0, 1, 0, 1 }, mode: TorchSharp.PaddingModes.Constant, value: 0);
        return conv.forward(x);
    }
}

/// <summary>
/// diffusers' <c>Upsample2D</c> with a conv (key <c>conv</c>): nearest-neighbour ×2 (or to an explicit size, as the
/// UNet asks for when the input was not a multiple of its downsampling factor), then a 3×3 conv.
/// </summary>
internal sealed class Upsample2D : Module
{
#pragma warning disable IDE1006
    private readonly Conv2d conv;
#pragma warning restore IDE1006

    public Upsample2D(long channels, long outChannels) : base(nameof(Upsample2D))
    {
        conv = SdNn.Conv(channels, outChannels);
        RegisterComponents();
    }

    /// <summary>The 3×3 conv after upsampling.</summary>
    internal Conv2d Conv => conv;

    public Tensor Forward(Tensor x, long[]? size = null)
    {
        var h = size is null
            ? functional.interpolate(x, scale_factor: new[] { 2.0, 2.0 }, mode: InterpolationMode.Nearest)
            : functional.interpolate(x, size: size, mode: InterpolationMode.Nearest);
        return conv.forward(h);
    }
}
