using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Adm;

/// <summary>guided-diffusion's <c>normalization(ch)</c>: GroupNorm(32, ch, eps 1e-5), computed in float32.</summary>
internal static class AdmNorm
{
    public static GroupNorm Create(long channels)
    {
        var norm = GroupNorm(32, channels, eps: 1e-5);
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

    public Tensor Forward(Tensor x, Tensor emb)
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
        return (skip_connection is null ? x : skip_connection.forward(x)) + EmbedAndOut(h, emb);
    }

    /// <summary>
    /// The same result as <c>Forward(cat([h, widen(skip)], 1), emb)</c> for a decoder block after a shared-prefix fork,
    /// where <paramref name="skip"/> still has the pre-fork batch and the fork's copies are appended by
    /// <paramref name="widen"/>. Everything that depends on the skip channels alone is computed once on the pre-fork
    /// batch: convolutions are linear in their input channels, and GroupNorm normalises each group of channels on its
    /// own, so the groups made only of skip channels (all but at most one straddling group) are normalised, activated
    /// and convolved once, then widened and added. The 1×1 (or 3×3) skip connection splits the same way.
    /// Returns null where this does not apply (resampling blocks, an identity skip connection).
    /// </summary>
    public Tensor? ForwardSplitSkip(Tensor h, Tensor skip, Func<Tensor, Tensor> widen, Tensor emb)
    {
        if (_hUpd is not null || skip_connection is not Conv2d sc) return null;
        var norm = (GroupNorm)in_layers[0];
        var conv = (Conv2d)in_layers[2];
        long ch = h.shape[1], total = ch + skip.shape[1], groups = 32, gs = total / groups;
        long k = (ch + gs - 1) / gs * gs;  // first channel of the first group made only of skip channels
        if (k >= total) return null;
        long mixed = k - ch;

        // Per branch: h plus the skip channels of the straddling group (if any).
        var a = mixed == 0 ? h : cat(new[] { h, widen(skip.narrow(1, 0, mixed)) }, 1);
        var na = functional.group_norm(a, k / gs, norm.weight!.narrow(0, 0, k), norm.bias!.narrow(0, 0, k), 1e-5);
        var perBranch = functional.conv2d(functional.silu(na), conv.weight!.narrow(1, 0, k), conv.bias, padding: [1, 1]);
        // Once, on the pre-fork batch: the pure-skip groups.
        var s = skip.narrow(1, mixed, total - k);
        var ns = functional.group_norm(s, groups - k / gs, norm.weight!.narrow(0, k, total - k), norm.bias!.narrow(0, k, total - k), 1e-5);
        var shared = functional.conv2d(functional.silu(ns), conv.weight!.narrow(1, k, total - k), null, padding: [1, 1]);
        var hIn = perBranch + widen(shared);

        long pad = sc.weight!.shape[2] / 2; // 1×1 (default) or 3×3 (use_conv skip) with "same" padding
        var skipOut = functional.conv2d(h, sc.weight!.narrow(1, 0, ch), sc.bias, padding: [pad, pad])
                    + widen(functional.conv2d(skip, sc.weight!.narrow(1, ch, total - ch), null, padding: [pad, pad]));
        return skipOut + EmbedAndOut(hIn, emb);
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
