namespace PagSharp.Models.Adm;

/// <summary>Configurations of OpenAI's released guided-diffusion checkpoints (flags from guided-diffusion's README).</summary>
public static class AdmPresets
{
    private static readonly AdmConfig Base256 = new()
    {
        AttentionResolutions = "32,16,8", DiffusionSteps = 1000, LearnSigma = true, NoiseSchedule = "linear",
        NumChannels = 256, NumHeadChannels = 64, NumResBlocks = 2, ResblockUpdown = true, UseFp16 = true,
        UseScaleShiftNorm = true, ImageSize = 256,
    };

    /// <summary>
    /// The official PAG code's ADM ImageNet-256 setting (its sampling scripts for the conditional and unconditional
    /// checkpoints): <c>--guide_scale 4.0</c> in its convention, s = 3 in the paper's, at the two deepest encoder levels'
    /// attention and the middle block.
    /// </summary>
    public static readonly GuidanceDefaults OfficialPag256 = new()
    {
        PagScale = 3, PagLayers = "input_blocks.14.1,input_blocks.16.1,input_blocks.17.1,middle_block.1", GuidanceScale = 1,
    };

    /// <summary>Preset name → (config, checkpoint file it belongs to).</summary>
    public static IReadOnlyDictionary<string, (AdmConfig Config, string Checkpoint)> All { get; } =
        new Dictionary<string, (AdmConfig, string)>(StringComparer.OrdinalIgnoreCase)
        {
            ["adm-64-cond"] = (new AdmConfig
            {
                AttentionResolutions = "32,16,8", ClassCond = true, DiffusionSteps = 1000, Dropout = 0.1, ImageSize = 64,
                LearnSigma = true, NoiseSchedule = "cosine", NumChannels = 192, NumHeadChannels = 64, NumResBlocks = 3,
                ResblockUpdown = true, UseNewAttentionOrder = true, UseFp16 = true, UseScaleShiftNorm = true,
            }, "64x64_diffusion.pt"),
            ["adm-128-cond"] = (new AdmConfig
            {
                AttentionResolutions = "32,16,8", ClassCond = true, DiffusionSteps = 1000, ImageSize = 128, LearnSigma = true,
                NoiseSchedule = "linear", NumChannels = 256, NumHeads = 4, NumResBlocks = 2, ResblockUpdown = true,
                UseFp16 = true, UseScaleShiftNorm = true,
            }, "128x128_diffusion.pt"),
            ["adm-256-cond"] = (Base256 with { ClassCond = true, GuidanceDefaults = OfficialPag256 }, "256x256_diffusion.pt"),
            ["adm-256-uncond"] = (Base256 with { GuidanceDefaults = OfficialPag256 }, "256x256_diffusion_uncond.pt"),
            ["adm-512-cond"] = (Base256 with { ClassCond = true, ImageSize = 512, UseFp16 = false }, "512x512_diffusion.pt"),
            ["lsun-bedroom"] = (Base256 with { Dropout = 0.1 }, "lsun_bedroom.pt"),
            ["lsun-cat"] = (Base256 with { Dropout = 0.1 }, "lsun_cat.pt"),
            ["lsun-horse"] = (Base256 with { Dropout = 0.1 }, "lsun_horse.pt"),
        };

    public static AdmConfig Get(string name) => All.TryGetValue(name, out var p) ? p.Config
        : throw new PagSharpException($"unknown preset '{name}'; valid presets: {string.Join(", ", All.Keys)}");
}
