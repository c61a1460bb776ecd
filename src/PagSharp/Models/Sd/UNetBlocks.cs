using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>Settings every resnet and transformer of a UNet shares.</summary>
internal sealed record SdBlockSettings(long TembChannels, int Groups, double Eps, string Act, double Dropout, string TimeNorm,
                                       double OutScale, bool LinearProjection);

/// <summary>
/// diffusers' <c>CrossAttnDownBlock2D</c> (with <c>attentions</c>) and <c>DownBlock2D</c> (without): resnets, each
/// followed by its Transformer2D, then an optional stride-2 downsampler. Every resnet(+attention) output and the
/// downsampler output are skip connections.
/// </summary>
internal sealed class SdDownBlock : Module
{
    /// <summary>
    /// The encoder's down blocks as UNet2DConditionModel and ControlNetModel build them (named <c>down_blocks.i</c>):
    /// block i maps block_out_channels[i−1] (or [0]) to [i], with cross-attention for CrossAttnDownBlock2D and a
    /// downsampler on every block but the last.
    /// </summary>
    public static List<SdDownBlock> Encoder(int[] blockOutChannels, string[] types, int[] layersPerBlock, int[] heads,
                                            int[] transformerLayers, int[] crossAttentionDim, int downsamplePadding, SdBlockSettings s)
    {
        int n = blockOutChannels.Length;
        var downs = new List<SdDownBlock>(n);
        long outCh = blockOutChannels[0];
        for (int i = 0; i < n; i++)
        {
            long inCh = outCh;
            outCh = blockOutChannels[i];
            downs.Add(new SdDownBlock($"down_blocks.{i}", inCh, outCh, layersPerBlock[i], types[i] == "CrossAttnDownBlock2D",
                heads[i], transformerLayers[i], crossAttentionDim[i], i < n - 1, downsamplePadding, s));
        }
        return downs;
    }

#pragma warning disable IDE1006
    private readonly ModuleList<Transformer2D>? attentions;
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Downsample2D>? downsamplers;
#pragma warning restore IDE1006

    public SdDownBlock(string path, long inCh, long outCh, int layers, bool crossAttn, int heads, int tLayers, long crossDim,
                       bool addDownsample, int downsamplePadding, SdBlockSettings s) : base(nameof(SdDownBlock))
    {
        resnets = SdModuleList.Of(Enumerable.Range(0, layers).Select(i =>
            new ResnetBlock2D(i == 0 ? inCh : outCh, outCh, s.TembChannels, s.Groups, s.Eps, s.Act, s.Dropout, s.TimeNorm, s.OutScale)));
        if (crossAttn)
            attentions = SdModuleList.Of(Enumerable.Range(0, layers).Select(i =>
                new Transformer2D($"{path}.attentions.{i}", outCh, heads, tLayers, crossDim, s.Groups, s.LinearProjection, s.Dropout)));
        if (addDownsample) downsamplers = SdModuleList.Of(new[] { new Downsample2D(outCh, outCh, downsamplePadding) });
        RegisterComponents();
    }

    public IEnumerable<Transformer2D> Transformers => attentions ?? Enumerable.Empty<Transformer2D>();

    /// <summary>Resnets with their Transformer2D (null in a DownBlock2D), in forward order, and the downsampler if any.</summary>
    internal (IReadOnlyList<(ResnetBlock2D Resnet, Transformer2D? Attention)> Layers, Downsample2D? Downsampler) Parts =>
        (resnets.Select((r, i) => (r, attentions?[i])).ToList(), downsamplers?[0]);

    public Tensor Forward(Tensor h, SdForwardState state, List<Tensor> skips)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var a = attentions?[i];
            h = state.BeforeResnet(a, h);
            h = resnets[i].Forward(h, state.Emb, state.SkippedResnetEntries(a, h.shape[0]));
            if (a is not null) h = a.Forward(state.BeforeTransformer(a.Path, h), state.Context, state.Plan);
            skips.Add(h);
        }
        if (downsamplers is not null)
        {
            h = downsamplers[0].forward(h);
            skips.Add(h);
        }
        return h;
    }
}

/// <summary>diffusers' <c>UNetMidBlock2DCrossAttn</c>: resnet, then (Transformer2D, resnet) pairs.</summary>
internal sealed class SdMidBlock : Module
{
#pragma warning disable IDE1006
    private readonly ModuleList<Transformer2D> attentions;
    private readonly ModuleList<ResnetBlock2D> resnets;
#pragma warning restore IDE1006

    public SdMidBlock(long ch, int heads, int tLayers, long crossDim, double outputScaleFactor, SdBlockSettings s) : base(nameof(SdMidBlock))
    {
        resnets = SdModuleList.Of(Enumerable.Range(0, 2).Select(_ =>
            new ResnetBlock2D(ch, ch, s.TembChannels, s.Groups, s.Eps, s.Act, s.Dropout, s.TimeNorm, outputScaleFactor)));
        attentions = SdModuleList.Of(new[] { new Transformer2D("mid_block.attentions.0", ch, heads, tLayers, crossDim, s.Groups, s.LinearProjection, s.Dropout) });
        RegisterComponents();
    }

    public IEnumerable<Transformer2D> Transformers => attentions;

    /// <summary>The first resnet, then (Transformer2D, resnet) pairs.</summary>
    internal (ResnetBlock2D First, IReadOnlyList<(Transformer2D Attention, ResnetBlock2D Resnet)> Pairs) Parts =>
        (resnets[0], attentions.Select((a, i) => (a, resnets[i + 1])).ToList());

    public Tensor Forward(Tensor h, SdForwardState state)
    {
        // Skip-layer guidance on a resnet (SkipTarget.ResBlock) skips the one before each attention: resnets[i] feeds attentions[i].
        var first = attentions[0];
        h = state.BeforeResnet(first, h);
        h = resnets[0].Forward(h, state.Emb, state.SkippedResnetEntries(first, h.shape[0]));
        for (int i = 0; i < attentions.Count; i++)
        {
            var a = attentions[i];
            h = a.Forward(state.BeforeTransformer(a.Path, h), state.Context, state.Plan);
            var next = i + 1 < attentions.Count ? attentions[i + 1] : null;
            h = state.BeforeResnet(next, h);
            h = resnets[i + 1].Forward(h, state.Emb, state.SkippedResnetEntries(next, h.shape[0]));
        }
        return h;
    }
}

/// <summary>
/// diffusers' <c>CrossAttnUpBlock2D</c> / <c>UpBlock2D</c>: for each resnet, concatenate the last skip connection on
/// channels, resnet, then its Transformer2D; then an optional nearest-×2 upsampler.
/// </summary>
internal sealed class SdUpBlock : Module
{
#pragma warning disable IDE1006
    private readonly ModuleList<Transformer2D>? attentions;
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Upsample2D>? upsamplers;
#pragma warning restore IDE1006

    public SdUpBlock(string path, long inCh, long prevOutCh, long outCh, int layers, bool crossAttn, int heads, int tLayers, long crossDim,
                     bool addUpsample, SdBlockSettings s) : base(nameof(SdUpBlock))
    {
        resnets = SdModuleList.Of(Enumerable.Range(0, layers).Select(i =>
        {
            long skipCh = i == layers - 1 ? inCh : outCh;
            long resIn = i == 0 ? prevOutCh : outCh;
            return new ResnetBlock2D(resIn + skipCh, outCh, s.TembChannels, s.Groups, s.Eps, s.Act, s.Dropout, s.TimeNorm, s.OutScale);
        }));
        if (crossAttn)
            attentions = SdModuleList.Of(Enumerable.Range(0, layers).Select(i =>
                new Transformer2D($"{path}.attentions.{i}", outCh, heads, tLayers, crossDim, s.Groups, s.LinearProjection, s.Dropout)));
        if (addUpsample) upsamplers = SdModuleList.Of(new[] { new Upsample2D(outCh, outCh) });
        RegisterComponents();
    }

    public int Layers => resnets.Count;
    public IEnumerable<Transformer2D> Transformers => attentions ?? Enumerable.Empty<Transformer2D>();

    /// <summary>Resnets (each on cat([h, skip])) with their Transformer2D (null in an UpBlock2D), and the upsampler if any.</summary>
    internal (IReadOnlyList<(ResnetBlock2D Resnet, Transformer2D? Attention)> Layers, Upsample2D? Upsampler) Parts =>
        (resnets.Select((r, i) => (r, attentions?[i])).ToList(), upsamplers?[0]);

    /// <summary>Consumes <see cref="Layers"/> skip connections from the end of <paramref name="skips"/>.</summary>
    public Tensor Forward(Tensor h, List<Tensor> skips, SdForwardState state, long[]? upsampleSize)
    {
        for (int i = 0; i < resnets.Count; i++)
        {
            var skip = skips[^1];
            skips.RemoveAt(skips.Count - 1);
            // A skipped resnet (skip-layer guidance, SkipTarget.ResBlock) may need the fork before it: fork h, then the
            // skip (stored before the fork) is widened or split like any other.
            var a = attentions?[i];
            h = state.BeforeResnet(a, h);
            var skipped = state.SkippedResnetEntries(a, h.shape[0]);
            h = (state.SharesSkip(h, skip, resnets[i].Groups) ? resnets[i].ForwardSplitSkip(h, skip, state.Widening, state.Emb, skipped) : null)
                ?? resnets[i].Forward(cat(new[] { h, state.Widen(skip) }, 1), state.Emb, skipped);
            if (a is not null) h = a.Forward(state.BeforeTransformer(a.Path, h), state.Context, state.Plan);
        }
        return upsamplers is null ? h : upsamplers[0].Forward(h, upsampleSize);
    }
}
