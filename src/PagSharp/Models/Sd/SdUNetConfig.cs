using PagSharp.IO;
namespace PagSharp.Models.Sd;

/// <summary>
/// The <c>unet/config.json</c> of a diffusers <c>UNet2DConditionModel</c>, restricted to what Stable Diffusion 1.x,
/// 2.x and SDXL (base and refiner) use. Absent or null keys take diffusers' defaults. Features this port does not implement (class or added
/// embeddings, time-conditioning projections, dual cross-attention, …) are rejected with the key that asks for them.
/// <para>
/// <b>Heads.</b> diffusers' <c>attention_head_dim</c> is, despite its name, the <b>number of heads</b> of each block
/// (<c>num_attention_heads = num_attention_heads or attention_head_dim</c>); the head size is channels / heads. SD 1.x:
/// 8 heads everywhere; SD 2.x: [5, 10, 20, 20] heads of 64 channels.
/// </para>
/// </summary>
public sealed record SdUNetConfig
{
    public int? SampleSize { get; init; }
    public int InChannels { get; init; } = 4;
    public int OutChannels { get; init; } = 4;
    public bool CenterInputSample { get; init; }
    public bool FlipSinToCos { get; init; } = true;
    public double FreqShift { get; init; }
    public string[] DownBlockTypes { get; init; } = { "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D" };
    public string MidBlockType { get; init; } = "UNetMidBlock2DCrossAttn";
    public string[] UpBlockTypes { get; init; } = { "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D" };
    public int[] BlockOutChannels { get; init; } = { 320, 640, 1280, 1280 };
    /// <summary>Resnets per down block (up blocks have one more).</summary>
    public int[] LayersPerBlock { get; init; } = { 2, 2, 2, 2 };
    public int DownsamplePadding { get; init; } = 1;
    public double MidBlockScaleFactor { get; init; } = 1;
    public string ActFn { get; init; } = "silu";
    public int NormNumGroups { get; init; } = 32;
    public double NormEps { get; init; } = 1e-5;
    /// <summary>Per down block (the mid block uses the last, up blocks the reversed list).</summary>
    public int[] CrossAttentionDim { get; init; } = { 1280, 1280, 1280, 1280 };
    public int[] TransformerLayersPerBlock { get; init; } = { 1, 1, 1, 1 };
    /// <summary>Heads per down block (see the class remarks).</summary>
    public int[] AttentionHeads { get; init; } = { 8, 8, 8, 8 };
    public bool UseLinearProjection { get; init; }
    public bool UpcastAttention { get; init; }
    /// <summary><c>default</c> (the embedding is added) or <c>scale_shift</c>.</summary>
    public string ResnetTimeScaleShift { get; init; } = "default";
    /// <summary>Read for completeness; diffusers passes it only to block types SD does not use, so it has no effect here.</summary>
    public double ResnetOutScaleFactor { get; init; } = 1;
    public int ConvInKernel { get; init; } = 3;
    public int ConvOutKernel { get; init; } = 3;
    public double Dropout { get; init; }
    /// <summary>
    /// <c>text_time</c> for SDXL (the pooled text embedding and the micro-conditioning time ids are embedded and added
    /// to the time embedding), or null.
    /// </summary>
    public string? AdditionEmbedType { get; init; }
    /// <summary>Width of the sinusoidal embedding of each time id (SDXL: 256).</summary>
    public int? AdditionTimeEmbedDim { get; init; }
    /// <summary>Input width of <c>add_embedding</c>: pooled width + time ids · addition_time_embed_dim (SDXL base: 2816, refiner: 2560).</summary>
    public int? ProjectionClassEmbeddingsInputDim { get; init; }

    /// <summary>Whether the UNet takes SDXL's added conditioning (<c>text_embeds</c> and <c>time_ids</c>).</summary>
    public bool UsesTextTime => AdditionEmbedType == "text_time";

    /// <summary>Time embedding width: block_out_channels[0] · 4.</summary>
    public int TimeEmbedDim => BlockOutChannels[0] * 4;

    /// <summary>Latent downsampling factor from the input to the lowest resolution: 2^(number of downsamplers).</summary>
    public int DownFactor => 1 << (BlockOutChannels.Length - 1);

    public static SdUNetConfig Load(string path) => FromJson(File.Exists(path) ? File.ReadAllText(path)
        : throw new PagSharpException($"{path} does not exist: a diffusers UNet needs its config.json"), path);

    public static SdUNetConfig FromJson(string json, string source)
    {
        var c = JsonConfig.Parse(json, source);
        var down = c.Strings("down_block_types", new SdUNetConfig().DownBlockTypes);
        int n = down.Length;
        var cfg = new SdUNetConfig
        {
            SampleSize = c.IntOrNull("sample_size"),
            InChannels = c.Int("in_channels", 4),
            OutChannels = c.Int("out_channels", 4),
            CenterInputSample = c.Bool("center_input_sample", false),
            FlipSinToCos = c.Bool("flip_sin_to_cos", true),
            FreqShift = c.Double("freq_shift", 0),
            DownBlockTypes = down,
            MidBlockType = c.String("mid_block_type", "UNetMidBlock2DCrossAttn"),
            UpBlockTypes = c.Strings("up_block_types", new SdUNetConfig().UpBlockTypes),
            BlockOutChannels = c.Ints("block_out_channels", new[] { 320, 640, 1280, 1280 }),
            LayersPerBlock = c.IntOrList("layers_per_block", n, new[] { 2 }),
            DownsamplePadding = c.Int("downsample_padding", 1),
            MidBlockScaleFactor = c.Double("mid_block_scale_factor", 1),
            ActFn = c.String("act_fn", "silu"),
            NormNumGroups = c.Int("norm_num_groups", 32),
            NormEps = c.Double("norm_eps", 1e-5),
            CrossAttentionDim = c.IntOrList("cross_attention_dim", n, new[] { 1280 }),
            TransformerLayersPerBlock = c.IntOrList("transformer_layers_per_block", n, new[] { 1 }),
            AttentionHeads = c.IntOrList("attention_head_dim", n, new[] { 8 }),
            UseLinearProjection = c.Bool("use_linear_projection", false),
            UpcastAttention = c.Bool("upcast_attention", false),
            ResnetTimeScaleShift = c.String("resnet_time_scale_shift", "default"),
            ResnetOutScaleFactor = c.Double("resnet_out_scale_factor", 1),
            ConvInKernel = c.Int("conv_in_kernel", 3),
            ConvOutKernel = c.Int("conv_out_kernel", 3),
            Dropout = c.Double("dropout", 0),
            AdditionEmbedType = c.StringOrNull("addition_embed_type"),
            AdditionTimeEmbedDim = c.IntOrNull("addition_time_embed_dim"),
            ProjectionClassEmbeddingsInputDim = c.IntOrNull("projection_class_embeddings_input_dim"),
        };
        const string sd = "Stable Diffusion 1.x/2.x and SDXL UNets do not use it";
        if (c.Has("num_attention_heads"))
            throw new PagSharpException($"{source}: 'num_attention_heads' is set; diffusers' UNet2DConditionModel rejects it too (the head count comes from 'attention_head_dim')");
        SdEncoderChecks.RequireSdDefaults(c, sd, allowTextTime: true);
        c.RequireDefault("time_cond_proj_dim", null, sd + " (LCM does)");
        c.RequireDefault("time_embedding_type", "positional", sd);
        c.RequireDefault("time_embedding_dim", null, sd);
        c.RequireDefault("time_embedding_act_fn", null, sd);
        c.RequireDefault("timestep_post_act", null, sd);
        c.RequireDefault("dual_cross_attention", false, sd);
        c.RequireDefault("mid_block_only_cross_attention", null, sd);
        c.RequireDefault("attention_type", "default", sd);
        c.RequireDefault("resnet_skip_time_act", false, sd);
        c.RequireDefault("cross_attention_norm", null, sd);
        c.RequireDefault("reverse_transformer_layers_per_block", null, sd);
        c.RequireDefault("class_embeddings_concat", false, sd);
        cfg.Validate(source);
        return cfg;
    }

    public void Validate(string source)
    {
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        int n = DownBlockTypes.Length;
        Require(UpBlockTypes.Length == n, $"up_block_types has {UpBlockTypes.Length} entries but down_block_types has {n}");
        foreach (var t in UpBlockTypes)
            Require(t is "CrossAttnUpBlock2D" or "UpBlock2D", $"up block type '{t}' is not supported; valid: CrossAttnUpBlock2D, UpBlock2D");
        // Attention at level i: a cross-attention down block i, the up block n−1−i, or the mid block (last level).
        SdEncoderChecks.ValidateEncoder(source, DownBlockTypes, BlockOutChannels, MidBlockType, NormNumGroups, LayersPerBlock,
            TransformerLayersPerBlock, CrossAttentionDim, AttentionHeads,
            i => DownBlockTypes[i] == "CrossAttnDownBlock2D" || UpBlockTypes[n - 1 - i] == "CrossAttnUpBlock2D" || i == n - 1);
        Require(ResnetTimeScaleShift is "default" or "scale_shift", $"resnet_time_scale_shift '{ResnetTimeScaleShift}' is not supported; valid: default, scale_shift");
        Require(ConvInKernel % 2 == 1 && ConvOutKernel % 2 == 1, "conv_in_kernel and conv_out_kernel must be odd");
        Require(InChannels >= 1 && OutChannels >= 1, "in_channels and out_channels must be ≥ 1");
        Require(NormEps > 0, "norm_eps must be > 0");
        Require(AdditionEmbedType is null or "text_time", $"addition_embed_type '{AdditionEmbedType}' is not supported; valid: text_time (SDXL) or none");
        if (UsesTextTime)
            Require(AdditionTimeEmbedDim is >= 1 && ProjectionClassEmbeddingsInputDim is >= 1,
                "addition_embed_type 'text_time' needs addition_time_embed_dim and projection_class_embeddings_input_dim (≥ 1)");
        _ = SdNnCheck.Activation(ActFn, source);
    }
}

internal static class SdNnCheck
{
    public static string Activation(string name, string source) => name is "silu" or "swish" or "gelu" or "mish" or "relu" ? name
        : throw new PagSharpException($"{source}: act_fn '{name}' is not supported; valid: silu, swish, gelu, mish, relu");
}
