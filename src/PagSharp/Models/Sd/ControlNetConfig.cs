using PagSharp.IO;
namespace PagSharp.Models.Sd;

/// <summary>
/// The <c>config.json</c> of a diffusers <c>ControlNetModel</c> for Stable Diffusion 1.x / 2.x. Absent or null keys
/// take diffusers' defaults; features this port does not implement (class or added embeddings, encoder projections,
/// other mid blocks) are rejected with the key that asks for them. As in diffusers, the head count of each block is
/// <c>num_attention_heads</c> when set, else <c>attention_head_dim</c> (see <see cref="SdUNetConfig"/>).
/// </summary>
public sealed record ControlNetConfig
{
    public int InChannels { get; init; } = 4;
    /// <summary>Channels of the control image (3 for the standard SD ControlNets).</summary>
    public int ConditioningChannels { get; init; } = 3;
    public bool FlipSinToCos { get; init; } = true;
    public double FreqShift { get; init; }
    public string[] DownBlockTypes { get; init; } = { "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D" };
    public string MidBlockType { get; init; } = "UNetMidBlock2DCrossAttn";
    public int[] BlockOutChannels { get; init; } = { 320, 640, 1280, 1280 };
    public int[] LayersPerBlock { get; init; } = { 2, 2, 2, 2 };
    public int DownsamplePadding { get; init; } = 1;
    public double MidBlockScaleFactor { get; init; } = 1;
    public string ActFn { get; init; } = "silu";
    public int NormNumGroups { get; init; } = 32;
    public double NormEps { get; init; } = 1e-5;
    public int[] CrossAttentionDim { get; init; } = { 1280, 1280, 1280, 1280 };
    public int[] TransformerLayersPerBlock { get; init; } = { 1, 1, 1, 1 };
    public int[] AttentionHeads { get; init; } = { 8, 8, 8, 8 };
    public bool UseLinearProjection { get; init; }
    public bool UpcastAttention { get; init; }
    public string ResnetTimeScaleShift { get; init; } = "default";
    /// <summary><c>controlnet_conditioning_channel_order</c>: rgb, or bgr (the control image's channels are flipped first).</summary>
    public string ChannelOrder { get; init; } = "rgb";
    /// <summary>Channels of the conditioning-embedding convs; each step after the first halves the resolution.</summary>
    public int[] ConditioningEmbeddingOutChannels { get; init; } = { 16, 32, 96, 256 };
    /// <summary>Residuals are averaged over space (shuffle-style ControlNets); implies guess mode in the pipeline.</summary>
    public bool GlobalPoolConditions { get; init; }
    /// <summary><c>text_time</c> for SDXL ControlNets (as the SDXL UNet), or null.</summary>
    public string? AdditionEmbedType { get; init; }
    public int? AdditionTimeEmbedDim { get; init; }
    public int? ProjectionClassEmbeddingsInputDim { get; init; }
    public bool UsesTextTime => AdditionEmbedType == "text_time";

    public int TimeEmbedDim => BlockOutChannels[0] * 4;

    /// <summary>Pixels of the control image per latent pixel: 2^(conditioning embedding levels − 1).</summary>
    public int ConditioningFactor => 1 << (ConditioningEmbeddingOutChannels.Length - 1);

    /// <summary>Channels of each down residual, in order: conv_in, then every resnet(+attention) and downsampler output.</summary>
    public IReadOnlyList<int> ResidualChannels
    {
        get
        {
            var r = new List<int> { BlockOutChannels[0] };
            for (int i = 0; i < BlockOutChannels.Length; i++)
            {
                for (int l = 0; l < LayersPerBlock[i]; l++) r.Add(BlockOutChannels[i]);
                if (i < BlockOutChannels.Length - 1) r.Add(BlockOutChannels[i]);
            }
            return r;
        }
    }

    public static ControlNetConfig Load(string path) => FromJson(File.Exists(path) ? File.ReadAllText(path)
        : throw new PagSharpException($"{path} does not exist: a diffusers ControlNet needs its config.json"), path);

    public static ControlNetConfig FromJson(string json, string source)
    {
        var c = JsonConfig.Parse(json, source);
        var d = new ControlNetConfig();
        var down = c.Strings("down_block_types", d.DownBlockTypes);
        int n = down.Length;
        var heads = c.IntOrList("attention_head_dim", n, new[] { 8 });
        if (c.Has("num_attention_heads")) heads = c.IntOrList("num_attention_heads", n, heads);
        var cfg = new ControlNetConfig
        {
            InChannels = c.Int("in_channels", 4),
            ConditioningChannels = c.Int("conditioning_channels", 3),
            FlipSinToCos = c.Bool("flip_sin_to_cos", true),
            FreqShift = c.Double("freq_shift", 0),
            DownBlockTypes = down,
            MidBlockType = c.String("mid_block_type", "UNetMidBlock2DCrossAttn"),
            BlockOutChannels = c.Ints("block_out_channels", d.BlockOutChannels),
            LayersPerBlock = c.IntOrList("layers_per_block", n, new[] { 2 }),
            DownsamplePadding = c.Int("downsample_padding", 1),
            MidBlockScaleFactor = c.Double("mid_block_scale_factor", 1),
            ActFn = c.String("act_fn", "silu"),
            NormNumGroups = c.Int("norm_num_groups", 32),
            NormEps = c.Double("norm_eps", 1e-5),
            CrossAttentionDim = c.IntOrList("cross_attention_dim", n, new[] { 1280 }),
            TransformerLayersPerBlock = c.IntOrList("transformer_layers_per_block", n, new[] { 1 }),
            AttentionHeads = heads,
            UseLinearProjection = c.Bool("use_linear_projection", false),
            UpcastAttention = c.Bool("upcast_attention", false),
            ResnetTimeScaleShift = c.String("resnet_time_scale_shift", "default"),
            ChannelOrder = c.String("controlnet_conditioning_channel_order", "rgb"),
            ConditioningEmbeddingOutChannels = c.Ints("conditioning_embedding_out_channels", d.ConditioningEmbeddingOutChannels),
            GlobalPoolConditions = c.Bool("global_pool_conditions", false),
            AdditionEmbedType = c.StringOrNull("addition_embed_type"),
            AdditionTimeEmbedDim = c.IntOrNull("addition_time_embed_dim"),
            ProjectionClassEmbeddingsInputDim = c.IntOrNull("projection_class_embeddings_input_dim"),
        };
        const string sd = "Stable Diffusion 1.x/2.x and SDXL ControlNets do not use it";
        SdEncoderChecks.RequireSdDefaults(c, sd, allowTextTime: true);
        if (cfg.AdditionEmbedType is not (null or "text_time"))
            throw new PagSharpException($"{source}: addition_embed_type '{cfg.AdditionEmbedType}' is not supported; valid: text_time (SDXL) or none");
        if (cfg.UsesTextTime && (cfg.AdditionTimeEmbedDim is not >= 1 || cfg.ProjectionClassEmbeddingsInputDim is not >= 1))
            throw new PagSharpException($"{source}: addition_embed_type 'text_time' needs addition_time_embed_dim and projection_class_embeddings_input_dim (≥ 1)");
        cfg.Validate(source);
        return cfg;
    }

    public void Validate(string source)
    {
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        int n = DownBlockTypes.Length;
        SdEncoderChecks.ValidateEncoder(source, DownBlockTypes, BlockOutChannels, MidBlockType, NormNumGroups, LayersPerBlock,
            TransformerLayersPerBlock, CrossAttentionDim, AttentionHeads, i => DownBlockTypes[i] == "CrossAttnDownBlock2D" || i == n - 1);
        Require(ResnetTimeScaleShift is "default" or "scale_shift", $"resnet_time_scale_shift '{ResnetTimeScaleShift}' is not supported; valid: default, scale_shift");
        Require(ChannelOrder is "rgb" or "bgr", $"controlnet_conditioning_channel_order '{ChannelOrder}' is not supported; valid: rgb, bgr");
        Require(ConditioningEmbeddingOutChannels.Length >= 1 && ConditioningEmbeddingOutChannels.All(ch => ch >= 1),
            "conditioning_embedding_out_channels must list at least one positive channel count");
        Require(InChannels >= 1 && ConditioningChannels >= 1, "in_channels and conditioning_channels must be ≥ 1");
        Require(NormEps > 0, "norm_eps must be > 0");
        _ = SdNnCheck.Activation(ActFn, source);
    }

    /// <summary>
    /// Checks that this ControlNet's residuals fit <paramref name="unet"/>: the same latent channels (the UNet's
    /// out_channels, which an inpainting UNet's in_channels exceed), cross-attention
    /// width, levels and residual channels. <paramref name="source"/> names the ControlNet config in the error.
    /// </summary>
    public void CheckFits(SdUNetConfig unet, string source, string unetSource = "the UNet config")
    {
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}; this ControlNet does not belong to the UNet ({unetSource})"); }
        // The ControlNet sees the latents only (out_channels of the UNet): a 9-channel inpainting UNet gets the mask and
        // masked-image latents appended after the ControlNet, as diffusers' ControlNet inpainting pipelines do.
        Require(InChannels == unet.OutChannels, $"in_channels {InChannels} but the UNet's latents have {unet.OutChannels} channels");
        Require(CrossAttentionDim[0] == unet.CrossAttentionDim[0], $"cross_attention_dim {CrossAttentionDim[0]} but the UNet's is {unet.CrossAttentionDim[0]}");
        Require(UsesTextTime == unet.UsesTextTime, UsesTextTime ? "it is an SDXL ControlNet (addition_embed_type text_time) but the UNet is not" : "the UNet is an SDXL UNet (addition_embed_type text_time) but the ControlNet is not");
        Require(!UsesTextTime || ProjectionClassEmbeddingsInputDim == unet.ProjectionClassEmbeddingsInputDim,
            $"projection_class_embeddings_input_dim {ProjectionClassEmbeddingsInputDim} but the UNet's is {unet.ProjectionClassEmbeddingsInputDim}");
        Require(BlockOutChannels.Length == unet.BlockOutChannels.Length,
            $"{BlockOutChannels.Length} down blocks but the UNet has {unet.BlockOutChannels.Length}");
        var mine = ResidualChannels;
        var theirs = new ControlNetConfig { BlockOutChannels = unet.BlockOutChannels, LayersPerBlock = unet.LayersPerBlock }.ResidualChannels;
        Require(mine.SequenceEqual(theirs),
            $"its down residuals have channels [{string.Join(", ", mine)}] but the UNet's skip connections have [{string.Join(", ", theirs)}] (block_out_channels, layers_per_block)");
    }
}
