using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Adm;

/// <summary>guided-diffusion's <c>normalization(ch)</c>: GroupNorm(32, ch, eps 1e-5), computed in float32.</summary>
internal static class AdmNorm
{
    public const int Groups = 32;

    public static GroupNorm Create(long channels)
    {
        var norm = GroupNorm(Groups, channels, eps: 1e-5);
        // TorchSharp 0.107 leaves GroupNorm's affine parameters uninitialised: set PyTorch's defaults (1, 0).
        using (no_grad())
        {
            norm.weight!.fill_(1);
            norm.bias!.zero_();
        }
        return norm;
    }

    /// <summary>guided-diffusion's <c>zero_module</c>: parameters start at zero (residual branches begin as identity).</summary>
    public static T Zero<T>(T module) where T : Module
    {
        using (no_grad())
            foreach (var p in module.parameters()) p.zero_();
        return module;
    }
}

/// <summary>Nearest ×2 upsampling, optionally followed by a 3×3 conv (key <c>conv</c>).</summary>
internal sealed class Upsample : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006 // field names are checkpoint keys
    private readonly Conv2d? conv;
#pragma warning restore IDE1006

    public Upsample(long channels, bool useConv, long outChannels) : base(nameof(Upsample))
    {
        if (useConv) conv = Conv2d(channels, outChannels, 3, padding: 1);
        RegisterComponents();
    }

    /// <summary>The 3×3 conv after upsampling, if any.</summary>
    internal Conv2d? Conv => conv;

    public override Tensor forward(Tensor x)
    {
        var h = functional.interpolate(x, scale_factor: new[] { 2.0, 2.0 }, mode: InterpolationMode.Nearest);
        return conv is null ? h : conv.forward(h);
    }
}

/// <summary>Stride-2 3×3 conv (key <c>op</c>) or 2×2 average pooling.</summary>
internal sealed class Downsample : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv2d? op;
#pragma warning restore IDE1006

    public Downsample(long channels, bool useConv, long outChannels) : base(nameof(Downsample))
    {
        if (useConv) op = Conv2d(channels, outChannels, 3, stride: 2, padding: 1);
        else if (channels != outChannels) throw new ArgumentException("average-pool downsampling keeps the channel count");
        RegisterComponents();
    }

    /// <summary>The stride-2 conv, if any (else average pooling).</summary>
    internal Conv2d? Conv => op;

    public override Tensor forward(Tensor x) => op is null ? functional.avg_pool2d(x, 2, 2) : op.forward(x);
}

/// <summary>
/// guided-diffusion's ResBlock: GN→SiLU→conv, timestep-embedding injection (scale-shift norm or addition),
/// GN→SiLU→dropout→conv, plus a skip (identity, 1×1 conv, or 3×3 conv). Optional up/down resampling inside.
/// </summary>
internal sealed class ResBlock : Module
{
#pragma warning disable IDE1006
    private readonly Sequential in_layers;
    private readonly Sequential emb_layers;
    private readonly Sequential out_layers;
    private readonly Module<Tensor, Tensor>? skip_connection;
#pragma warning restore IDE1006
    private readonly Module<Tensor, Tensor>? _hUpd, _xUpd;
    private readonly bool _scaleShift;

    public ResBlock(long channels, long embChannels, double dropout, long outChannels, bool useScaleShiftNorm,
                    bool up = false, bool down = false, bool useConvSkip = false) : base(nameof(ResBlock))
    {
        in_layers = Sequential(AdmNorm.Create(channels), SiLU(), Conv2d(channels, outChannels, 3, padding: 1));
        if (up) { _hUpd = new Upsample(channels, false, channels); _xUpd = new Upsample(channels, false, channels); }
        else if (down) { _hUpd = new Downsample(channels, false, channels); _xUpd = new Downsample(channels, false, channels); }
        emb_layers = Sequential(SiLU(), Linear(embChannels, useScaleShiftNorm ? 2 * outChannels : outChannels));
        out_layers = Sequential(AdmNorm.Create(outChannels), SiLU(), Dropout(dropout), AdmNorm.Zero(Conv2d(outChannels, outChannels, 3, padding: 1)));
        if (outChannels != channels)
            skip_connection = useConvSkip ? Conv2d(channels, outChannels, 3, padding: 1) : Conv2d(channels, outChannels, 1);
        _scaleShift = useScaleShiftNorm;
        RegisterComponents();
    }

    /// <summary>GN→SiLU→<b>conv</b> of in_layers.</summary>
    internal Conv2d InConv => (Conv2d)in_layers[2];
    /// <summary>The zero-initialised conv that ends out_layers.</summary>
    internal Conv2d OutConv => (Conv2d)out_layers[3];
    /// <summary>The timestep-embedding projection.</summary>
    internal Linear EmbLinear => (Linear)emb_layers[1];
    /// <summary>The skip connection's conv (null = identity).</summary>
    internal Conv2d? SkipConv => skip_connection as Conv2d;
    /// <summary>Resampling inside the block: −1 down (÷2), +1 up (×2), 0 none.</summary>
    internal int Resample => _hUpd switch { Downsample => -1, Upsample => 1, _ => 0 };

    /// <param name="x">The input.</param>
    /// <param name="emb">The timestep embedding.</param>
    /// <param name="skipped">
    /// Batch entries for which the block is skipped (skip-layer guidance on the ResBlock, <see cref="Attention.SkipTarget.ResBlock"/>):
    /// its residual branch contributes nothing there, so they get the skip-connection path alone,
    /// <c>skip_connection(x)</c> (after the resampling of an up/down block). Null = none.
    /// </param>
    public Tensor Forward(Tensor x, Tensor emb, long[]? skipped = null)
    {
        Tensor h;
        if (_hUpd is not null)
        {
            // in_rest = GN, SiLU; then resample h and x; then in_conv.
            h = in_layers[1].call(in_layers[0].call(x));
            h = in_layers[2].call(_hUpd.forward(h));
            x = _xUpd!.forward(x);
        }
        else h = in_layers.forward(x);
        return (skip_connection is null ? x : skip_connection.forward(x)) + Skip(EmbedAndOut(h, emb), skipped);
    }

    /// <summary>
    /// The same result as <c>Forward(cat([h, widen(skip)], 1), emb, skipped)</c> for a decoder block after a shared-prefix
    /// fork, with the skip-only part computed once on the pre-fork batch (<see cref="SplitSkip"/>). Null where this does
    /// not apply (resampling blocks, an identity skip connection, no group of skip channels alone). Skipped entries get
    /// the skip connection of cat([h, widen(skip)]), as in <see cref="Forward"/>.
    /// </summary>
    public Tensor? ForwardSplitSkip(Tensor h, Tensor skip, SkipWidening widen, Tensor emb, long[]? skipped = null)
    {
        if (_hUpd is not null || skip_connection is not Conv2d sc) return null;
        var hIn = SplitSkip.NormActConv(h, skip, widen, (GroupNorm)in_layers[0], AdmNorm.Groups, 1e-5, x => functional.silu(x), (Conv2d)in_layers[2]);
        return hIn is null ? null : SplitSkip.Conv(h, skip, widen, sc) + Skip(EmbedAndOut(hIn, emb), skipped);
    }

    /// <summary>The residual branch <paramref name="h"/> with the <paramref name="skipped"/> entries zeroed (skip + 0 = skip exactly).</summary>
    private static Tensor Skip(Tensor h, long[]? skipped)
    {
        if (skipped is null) return h;
        using var idx = tensor(skipped, device: h.device);
        return h.index_fill(0, idx, 0);
    }

    /// <summary>The timestep-embedding injection (scale-shift norm or addition) and out_layers.</summary>
    private Tensor EmbedAndOut(Tensor h, Tensor emb)
    {
        var embOut = emb_layers.forward(emb).unsqueeze(-1).unsqueeze(-1);
        if (_scaleShift)
        {
            var ss = embOut.chunk(2, 1); // scale first, then shift
            h = out_layers[0].call(h) * (1 + ss[0]) + ss[1];
            for (int i = 1; i < 4; i++) h = out_layers[i].call(h);
        }
        else
        {
            h = out_layers.forward(h + embOut);
        }
        return h;
    }
}

internal static class ModuleCallExtensions
{
    public static Tensor call(this Module m, Tensor x) => ((Module<Tensor, Tensor>)m).call(x);
}
