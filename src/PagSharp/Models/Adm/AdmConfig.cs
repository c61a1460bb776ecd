using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace PagSharp.Models.Adm;

/// <summary>
/// Model and diffusion settings with guided-diffusion's argument names (<c>model_and_diffusion_defaults()</c>), plus
/// UNetModel's own <c>in_channels</c>, <c>out_channels</c> and <c>num_classes</c>. Absent keys take
/// guided-diffusion's defaults.
/// </summary>
public sealed record AdmConfig
{
    [JsonPropertyName("image_size")] public int ImageSize { get; init; } = 64;
    [JsonPropertyName("num_channels")] public int NumChannels { get; init; } = 128;
    [JsonPropertyName("num_res_blocks")] public int NumResBlocks { get; init; } = 2;
    [JsonPropertyName("num_heads")] public int NumHeads { get; init; } = 4;
    [JsonPropertyName("num_heads_upsample")] public int NumHeadsUpsample { get; init; } = -1;
    [JsonPropertyName("num_head_channels")] public int NumHeadChannels { get; init; } = -1;
    [JsonPropertyName("attention_resolutions")] public string AttentionResolutions { get; init; } = "16,8";
    [JsonPropertyName("channel_mult")] public string ChannelMult { get; init; } = "";
    [JsonPropertyName("dropout")] public double Dropout { get; init; }
    [JsonPropertyName("class_cond")] public bool ClassCond { get; init; }
    [JsonPropertyName("use_checkpoint")] public bool UseCheckpoint { get; init; }
    [JsonPropertyName("use_scale_shift_norm")] public bool UseScaleShiftNorm { get; init; } = true;
    [JsonPropertyName("resblock_updown")] public bool ResblockUpdown { get; init; }
    [JsonPropertyName("use_fp16")] public bool UseFp16 { get; init; }
    [JsonPropertyName("use_new_attention_order")] public bool UseNewAttentionOrder { get; init; }
    [JsonPropertyName("conv_resample")] public bool ConvResample { get; init; } = true;
    [JsonPropertyName("in_channels")] public int InChannels { get; init; } = 3;
    /// <summary>Null: in_channels, doubled with learn_sigma (guided-diffusion fixes 3 or 6).</summary>
    [JsonPropertyName("out_channels")] public int? OutChannels { get; init; }
    /// <summary>Null: 1000 when class_cond, else unconditional.</summary>
    [JsonPropertyName("num_classes")] public int? NumClasses { get; init; }
    /// <summary>Index of the "no class" label of a model trained with label dropout (enables CFG), or null.</summary>
    [JsonPropertyName("null_class")] public int? NullClass { get; init; }

    /// <summary>The guidance the model's authors recommend (built-in model: chosen by a sweep on validation seeds), or null.</summary>
    [JsonPropertyName("guidance_defaults")] public GuidanceDefaults? GuidanceDefaults { get; init; }

    /// <summary>The sampler and step count the model's authors recommend (built-in model: chosen by a sweep), or null.</summary>
    [JsonPropertyName("sampling_defaults")] public SamplingDefaults? SamplingDefaults { get; init; }

    /// <summary>The sampler and steps to use when none is asked for: <see cref="SamplingDefaults"/>, else DDIM-50.</summary>
    [JsonIgnore] public SamplingDefaults Sampling => SamplingDefaults ?? Adm.SamplingDefaults.Fallback;

    /// <summary>This config without the recommendations (<see cref="GuidanceDefaults"/>, <see cref="SamplingDefaults"/>): the network and process only.</summary>
    public AdmConfig WithoutRecommendations() => this with { GuidanceDefaults = null, SamplingDefaults = null };

    // Diffusion keys.
    [JsonPropertyName("learn_sigma")] public bool LearnSigma { get; init; }
    [JsonPropertyName("diffusion_steps")] public int DiffusionSteps { get; init; } = 1000;
    [JsonPropertyName("noise_schedule")] public string NoiseSchedule { get; init; } = "linear";
    [JsonPropertyName("timestep_respacing")] public string TimestepRespacing { get; init; } = "";
    [JsonPropertyName("use_kl")] public bool UseKl { get; init; }
    [JsonPropertyName("predict_xstart")] public bool PredictXstart { get; init; }
    [JsonPropertyName("rescale_timesteps")] public bool RescaleTimesteps { get; init; }
    [JsonPropertyName("rescale_learned_sigmas")] public bool RescaleLearnedSigmas { get; init; }

    [JsonIgnore] public int ModelChannels => NumChannels;
    [JsonIgnore] public int ResolvedOutChannels => OutChannels ?? (LearnSigma ? 2 * InChannels : InChannels);
    [JsonIgnore] public int? ResolvedNumClasses => NumClasses ?? (ClassCond ? 1000 : null);
    [JsonIgnore] public int ResolvedHeadsUpsample => NumHeadsUpsample == -1 ? NumHeads : NumHeadsUpsample;

    /// <summary>channel_mult as guided-diffusion's create_model resolves it (defaults by image size when empty).</summary>
    [JsonIgnore]
    public double[] ChannelMultTuple
    {
        get
        {
            if (string.IsNullOrWhiteSpace(ChannelMult))
                return ImageSize switch
                {
                    512 => new[] { 0.5, 1, 1, 2, 2, 4, 4 },
                    256 => new double[] { 1, 1, 2, 2, 4, 4 },
                    128 => new double[] { 1, 1, 2, 3, 4 },
                    64 => new double[] { 1, 2, 3, 4 },
                    _ => throw new PagSharpException($"channel_mult is empty and image_size {ImageSize} has no default; valid defaults exist for 64, 128, 256, 512 — set channel_mult, e.g. \"1,2,2\""),
                };
            return ChannelMult.Split(',').Select(s => double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && v > 0
                ? v : throw new PagSharpException($"channel_mult '{ChannelMult}' is not a comma-separated list of positive numbers")).ToArray();
        }
    }

    /// <summary>Downsampling factors ds at which attention is used (image_size / resolution).</summary>
    [JsonIgnore]
    public HashSet<int> AttentionDs => AttentionResolutions.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
        .Select(r => int.TryParse(r, out var res) && res > 0 && ImageSize % res == 0 ? ImageSize / res
            : throw new PagSharpException($"attention_resolutions '{AttentionResolutions}': '{r}' is not a positive resolution dividing image_size {ImageSize}"))
        .ToHashSet();

    private static readonly JsonSerializerOptions Json = new()
    {
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        WriteIndented = true,
        NumberHandling = JsonNumberHandling.AllowReadingFromString,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };

    /// <summary>All JSON keys this config understands.</summary>
    public static IReadOnlyList<string> Keys { get; } = typeof(AdmConfig).GetProperties()
        .Select(p => p.GetCustomAttributes(typeof(JsonPropertyNameAttribute), false).OfType<JsonPropertyNameAttribute>().FirstOrDefault()?.Name)
        .OfType<string>().ToArray();

    public static AdmConfig FromJson(string json, string source)
    {
        try
        {
            var cfg = JsonSerializer.Deserialize<AdmConfig>(json, Json) ?? throw new PagSharpException($"{source}: the config is null; expected a JSON object");
            cfg.Validate(source);
            return cfg;
        }
        catch (JsonException e)
        {
            throw new PagSharpException($"{source}: invalid model config: {e.Message}. Valid keys: {string.Join(", ", Keys)}", e);
        }
    }

    public static AdmConfig Load(string path)
    {
        if (!File.Exists(path)) throw new PagSharpException($"config file '{path}' does not exist");
        return FromJson(File.ReadAllText(path), path);
    }

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public void Validate(string source)
    {
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        Require(ImageSize > 0, $"image_size must be positive (got {ImageSize})");
        Require(NumChannels > 0 && NumChannels % 32 == 0, $"num_channels must be a positive multiple of 32 for GroupNorm(32) (got {NumChannels})");
        Require(NumResBlocks >= 1, $"num_res_blocks must be ≥ 1 (got {NumResBlocks})");
        Require(InChannels >= 1, $"in_channels must be ≥ 1 (got {InChannels})");
        Require(NumHeads >= 1 || NumHeadChannels > 0, $"num_heads must be ≥ 1 unless num_head_channels is set (got {NumHeads})");
        Require(DiffusionSteps >= 1, $"diffusion_steps must be ≥ 1 (got {DiffusionSteps})");
        Require(NoiseSchedule is "linear" or "cosine", $"noise_schedule '{NoiseSchedule}' is not supported; valid: linear, cosine");
        Require(ResolvedNumClasses is null or > 0, $"num_classes must be positive (got {NumClasses})");
        Require(NullClass is null || (ResolvedNumClasses is int n && NullClass >= 0 && NullClass < n), $"null_class {NullClass} must be a class index below num_classes {ResolvedNumClasses}");
        int levels = ChannelMultTuple.Length;
        Require(ImageSize % (1 << (levels - 1)) == 0, $"image_size {ImageSize} is not divisible by 2^{levels - 1} for {levels} resolution levels");
        _ = AttentionDs;
    }
}

/// <summary>
/// A model's recommended guidance (config key <c>guidance_defaults</c>): PAG scale s (paper convention), the PAG
/// layer spec, and the CFG scale w.
/// </summary>
public sealed record GuidanceDefaults
{
    [JsonPropertyName("pag_scale")] public double PagScale { get; init; }
    [JsonPropertyName("pag_layers")] public string PagLayers { get; init; } = "middle";
    [JsonPropertyName("guidance_scale")] public double GuidanceScale { get; init; } = 1;
}

/// <summary>
/// A model's recommended sampler (config key <c>sampling_defaults</c>): the scheduler name (ddpm, ddim, euler, euler-a,
/// dpmpp-2m, unipc) and its number of steps.
/// </summary>
public sealed record SamplingDefaults
{
    /// <summary>What a model without recommendations samples with: DDIM, 50 steps (SamplingOptions' own defaults).</summary>
    public static readonly SamplingDefaults Fallback = new();

    [JsonPropertyName("scheduler")] public string Scheduler { get; init; } = "ddim";
    [JsonPropertyName("steps")] public int Steps { get; init; } = 50;
}
