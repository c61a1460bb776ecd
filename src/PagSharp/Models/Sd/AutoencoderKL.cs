using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>diffusers' <c>UNetMidBlock2D</c> without time embedding: resnet, attention (one head, GroupNorm, residual), resnet.</summary>
internal sealed class VaeMidBlock : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ModuleList<SdAttention>? attentions;
    private readonly ModuleList<ResnetBlock2D> resnets;
#pragma warning restore IDE1006

    public VaeMidBlock(long ch, int groups, string act, bool addAttention) : base(nameof(VaeMidBlock))
    {
        resnets = SdModuleList.Of(Enumerable.Range(0, 2).Select(_ => new ResnetBlock2D(ch, ch, null, groups, 1e-6, act)));
        if (addAttention)
            attentions = SdModuleList.Of(new[] { new SdAttention(ch, null, 1, (int)ch, bias: true, groupNorm: (groups, 1e-6), residual: true) });
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        h = resnets[0].Forward(h, null);
        if (attentions is not null) h = attentions[0].ForwardSpatial(h);
        return resnets[1].Forward(h, null);
    }
}

/// <summary>diffusers' <c>DownEncoderBlock2D</c> (resnets, optional downsampler with padding 0) or <c>UpDecoderBlock2D</c> (resnets, optional upsampler).</summary>
internal sealed class VaeBlock : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly ModuleList<ResnetBlock2D> resnets;
    private readonly ModuleList<Downsample2D>? downsamplers;
    private readonly ModuleList<Upsample2D>? upsamplers;
#pragma warning restore IDE1006

    public VaeBlock(long inCh, long outCh, int layers, int groups, string act, bool down, bool resample) : base(nameof(VaeBlock))
    {
        resnets = SdModuleList.Of(Enumerable.Range(0, layers).Select(i => new ResnetBlock2D(i == 0 ? inCh : outCh, outCh, null, groups, 1e-6, act)));
        if (resample && down) downsamplers = SdModuleList.Of(new[] { new Downsample2D(outCh, outCh, 0) });
        if (resample && !down) upsamplers = SdModuleList.Of(new[] { new Upsample2D(outCh, outCh) });
        RegisterComponents();
    }

    public override Tensor forward(Tensor h)
    {
        foreach (var r in resnets) h = r.Forward(h, null);
        if (downsamplers is not null) h = downsamplers[0].forward(h);
        if (upsamplers is not null) h = upsamplers[0].Forward(h);
        return h;
    }
}

/// <summary>diffusers' VAE <c>Encoder</c>: conv_in, down blocks, mid block, GroupNorm → act → conv_out (2·latent channels).</summary>
internal sealed class VaeEncoder : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv2d conv_in;
    private readonly ModuleList<VaeBlock> down_blocks;
    private readonly VaeMidBlock mid_block;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;
#pragma warning restore IDE1006
    private readonly string _act;

    public VaeEncoder(SdVaeConfig c) : base(nameof(VaeEncoder))
    {
        var boc = c.BlockOutChannels;
        conv_in = SdNn.Conv(c.InChannels, boc[0]);
        down_blocks = SdModuleList.Of(Enumerable.Range(0, boc.Length).Select(i =>
            new VaeBlock(i == 0 ? boc[0] : boc[i - 1], boc[i], c.LayersPerBlock, c.NormNumGroups, c.ActFn, down: true, resample: i < boc.Length - 1)));
        mid_block = new VaeMidBlock(boc[^1], c.NormNumGroups, c.ActFn, c.MidBlockAddAttention);
        conv_norm_out = SdNn.GroupNorm(c.NormNumGroups, boc[^1], 1e-6);
        conv_out = SdNn.Conv(boc[^1], 2 * c.LatentChannels);
        _act = c.ActFn;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = conv_in.forward(x);
        foreach (var b in down_blocks) h = b.forward(h);
        h = mid_block.forward(h);
        return conv_out.forward(SdNn.Activation(_act, conv_norm_out.forward(h)));
    }
}

/// <summary>diffusers' VAE <c>Decoder</c>: conv_in, mid block, up blocks (layers_per_block + 1 resnets each), GroupNorm → act → conv_out.</summary>
internal sealed class VaeDecoder : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv2d conv_in;
    private readonly VaeMidBlock mid_block;
    private readonly ModuleList<VaeBlock> up_blocks;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;
#pragma warning restore IDE1006
    private readonly string _act;

    public VaeDecoder(SdVaeConfig c) : base(nameof(VaeDecoder))
    {
        var rev = c.BlockOutChannels.Reverse().ToArray();
        conv_in = SdNn.Conv(c.LatentChannels, rev[0]);
        mid_block = new VaeMidBlock(rev[0], c.NormNumGroups, c.ActFn, c.MidBlockAddAttention);
        up_blocks = SdModuleList.Of(Enumerable.Range(0, rev.Length).Select(i =>
            new VaeBlock(i == 0 ? rev[0] : rev[i - 1], rev[i], c.LayersPerBlock + 1, c.NormNumGroups, c.ActFn, down: false, resample: i < rev.Length - 1)));
        conv_norm_out = SdNn.GroupNorm(c.NormNumGroups, c.BlockOutChannels[0], 1e-6);
        conv_out = SdNn.Conv(c.BlockOutChannels[0], c.OutChannels);
        _act = c.ActFn;
        RegisterComponents();
    }

    public override Tensor forward(Tensor z)
    {
        var h = mid_block.forward(conv_in.forward(z));
        foreach (var b in up_blocks) h = b.forward(h);
        return conv_out.forward(SdNn.Activation(_act, conv_norm_out.forward(h)));
    }
}

/// <summary>The posterior of <see cref="AutoencoderKL.Encode"/>: mean and log-variance (clamped to [−30, 20]).</summary>
public sealed record LatentDistribution(Tensor Mean, Tensor LogVar)
{
    /// <summary>mean + exp(½·logvar)·ε with ε = randn from <paramref name="generator"/> (the global generator when null).</summary>
    public Tensor Sample(Generator? generator = null)
    {
        // A CPU generator draws on the CPU; the noise then moves to the mean's device (diffusers' randn_tensor).
        using var drawn = generator is null ? randn(Mean.shape, Mean.dtype, Mean.device) : randn(Mean.shape, Mean.dtype, generator: generator);
        using var eps = drawn.device == Mean.device ? drawn.alias() : drawn.to(Mean.device);
        return Mean + exp(0.5 * LogVar) * eps;
    }

    /// <summary>The mode (= mean).</summary>
    public Tensor Mode() => Mean;
}

/// <summary>
/// Port of diffusers' <c>AutoencoderKL</c> (the Stable Diffusion VAE). Parameter names equal the diffusers state-dict
/// keys (<c>encoder.conv_in.weight</c>, <c>decoder.mid_block.attentions.0.to_q.weight</c>, <c>quant_conv.weight</c>, …).
/// </summary>
public sealed class AutoencoderKL : Module
{
#pragma warning disable IDE1006
    private readonly VaeEncoder encoder;
    private readonly VaeDecoder decoder;
    private readonly Conv2d? quant_conv;
    private readonly Conv2d? post_quant_conv;
#pragma warning restore IDE1006

    public SdVaeConfig Config { get; }

    public AutoencoderKL(SdVaeConfig config) : base(nameof(AutoencoderKL))
    {
        Config = config;
        encoder = new VaeEncoder(config);
        decoder = new VaeDecoder(config);
        int l = config.LatentChannels;
        if (config.UseQuantConv) quant_conv = Conv2d(2 * l, 2 * l, 1);
        if (config.UsePostQuantConv) post_quant_conv = Conv2d(l, l, 1);
        RegisterComponents();
    }

    /// <summary>
    /// diffusers' <c>enable_tiling()</c>: images larger than a tile (the config's sample_size, in pixels; its
    /// 2^(levels−1)-th part in latents) are encoded and decoded in tiles overlapping by a quarter, blended linearly
    /// across the overlap — memory bounded by the tile size instead of the image, at the price of small seam
    /// differences. Off by default.
    /// </summary>
    public bool Tiling { get; set; }

    /// <summary>Tile size in pixels (diffusers' tile_sample_min_size): sample_size, 512 when the config has none.</summary>
    public int TileSampleSize => Config.SampleSize ?? 512;

    /// <summary>Tile size in latents (diffusers' tile_latent_min_size).</summary>
    public int TileLatentSize => TileSampleSize / (1 << (Config.BlockOutChannels.Length - 1));

    private const double TileOverlap = 0.25;

    /// <summary>The raw moments quant_conv(encoder(x)) [B, 2·latent, h, w] for images x in [−1, 1].</summary>
    public Tensor Moments(Tensor x)
    {
        if (Tiling && (x.shape[^1] > TileSampleSize || x.shape[^2] > TileSampleSize))
            return Tiled(x, TileSampleSize, TileLatentSize, t => EncodeTile(t));
        return EncodeTile(x);
    }

    private Tensor EncodeTile(Tensor x)
    {
        var h = encoder.forward(x);
        return quant_conv is null ? h : quant_conv.forward(h);
    }

    /// <summary>
    /// diffusers' <c>_tiled_encode</c> / <c>tiled_decode</c>: tiles of <paramref name="inTile"/> every
    /// inTile·(1 − ¼) input pixels, each blended with its upper and left neighbour over outTile·¼ rows/columns
    /// (weights y/extent), then cropped to outTile − extent and concatenated.
    /// </summary>
    private static Tensor Tiled(Tensor x, int inTile, int outTile, Func<Tensor, Tensor> run)
    {
        using var scope = NewDisposeScope();
        int step = (int)(inTile * (1 - TileOverlap));
        int extent = (int)(outTile * TileOverlap), limit = outTile - extent;
        var rows = new List<List<Tensor>>();
        for (long i = 0; i < x.shape[2]; i += step)
        {
            var row = new List<Tensor>();
            for (long j = 0; j < x.shape[3]; j += step)
                row.Add(run(x[.., .., (int)i..(int)Math.Min(i + inTile, x.shape[2]), (int)j..(int)Math.Min(j + inTile, x.shape[3])]));
            rows.Add(row);
        }
        var resultRows = new List<Tensor>();
        for (int i = 0; i < rows.Count; i++)
        {
            var parts = new List<Tensor>();
            for (int j = 0; j < rows[i].Count; j++)
            {
                var tile = rows[i][j];
                if (i > 0) tile = Blend(rows[i - 1][j], tile, extent, 2);
                if (j > 0) tile = Blend(rows[i][j - 1], tile, extent, 3);
                rows[i][j] = tile;
                parts.Add(tile[.., .., ..(int)Math.Min(limit, tile.shape[2]), ..(int)Math.Min(limit, tile.shape[3])]);
            }
            resultRows.Add(cat(parts.ToArray(), 3));
        }
        return cat(resultRows.ToArray(), 2).MoveToOuterDisposeScope();
    }

    /// <summary>diffusers' blend_v (dim 2) / blend_h (dim 3): the first rows of b fade in from the last rows of a.</summary>
    private static Tensor Blend(Tensor a, Tensor b, int extent, int dim)
    {
        int e = (int)Math.Min(Math.Min(a.shape[dim], b.shape[dim]), extent);
        if (e <= 0) return b;
        b = b.clone();
        for (int y = 0; y < e; y++)
        {
            var av = a.narrow(dim, a.shape[dim] - e + y, 1);
            var bv = b.narrow(dim, y, 1);
            bv.copy_(av * (1 - (double)y / e) + bv * ((double)y / e));
        }
        return b;
    }

    /// <summary><c>vae.encode(x).latent_dist</c>: mean and clamped log-variance.</summary>
    public LatentDistribution Encode(Tensor x)
    {
        var parts = Moments(x).chunk(2, 1);
        return new LatentDistribution(parts[0], parts[1].clamp(-30.0, 20.0));
    }

    /// <summary><c>vae.decode(z).sample</c>: decoder(post_quant_conv(z)), images ≈ [−1, 1] (in tiles with <see cref="Tiling"/>).</summary>
    public Tensor Decode(Tensor z)
    {
        if (Tiling && (z.shape[^1] > TileLatentSize || z.shape[^2] > TileLatentSize))
            return Tiled(z, TileLatentSize, TileSampleSize, DecodeTile);
        return DecodeTile(z);
    }

    private Tensor DecodeTile(Tensor z) => decoder.forward(post_quant_conv is null ? z : post_quant_conv.forward(z));

    /// <summary>What SD pipelines do with final latents: decode(latents / scaling_factor) (a float32 division).</summary>
    public Tensor DecodeLatents(Tensor latents) => Decode(latents / (float)Config.ScalingFactor);

    /// <summary>diffusers' <c>VaeImageProcessor.postprocess(…, "pt")</c>: (x/2 + 0.5).clamp(0, 1).</summary>
    public static Tensor ToUnitRange(Tensor images) => (images / 2 + 0.5).clamp(0.0, 1.0);

    /// <summary>
    /// Renames the pre-0.14 diffusers VAE attention keys (<c>query</c>, <c>key</c>, <c>value</c>, <c>proj_attn</c>) to
    /// the current ones, as diffusers does when it loads such a checkpoint (1×1-conv shaped weights are flattened).
    /// </summary>
    public static Dictionary<string, Tensor> UpgradeLegacyKeys(Dictionary<string, Tensor> weights)
    {
        var map = new[] { (".query.", ".to_q."), (".key.", ".to_k."), (".value.", ".to_v."), (".proj_attn.", ".to_out.0.") };
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        foreach (var (k, v) in weights)
        {
            string key = k;
            var value = v;
            if (k.Contains(".attentions."))
                foreach (var (from, to) in map)
                    if (k.Contains(from))
                    {
                        key = k.Replace(from, to);
                        if (v.dim() == 4 && k.EndsWith(".weight", StringComparison.Ordinal)) value = v.reshape(v.shape[0], v.shape[1]);
                        break;
                    }
            result[key] = value;
        }
        return result;
    }
}
