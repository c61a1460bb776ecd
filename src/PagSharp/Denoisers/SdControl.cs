using PagSharp.Models.Sd;
using static TorchSharp.torch;

namespace PagSharp.Denoisers;

/// <summary>
/// A ControlNet and its settings for a Stable Diffusion run, as diffusers' <c>StableDiffusionControlNetPAGPipeline</c>
/// arguments: the prepared control image (<c>image</c> after <c>prepare_image</c>: [1 or B, C, H, W] at the
/// generation size, [0, 1] for the standard SD ControlNets), <c>controlnet_conditioning_scale</c>,
/// <c>control_guidance_start</c>/<c>control_guidance_end</c> (fractions of the steps) and <c>guess_mode</c>.
/// </summary>
public sealed record SdControl(SdControlNet Net, Tensor Image)
{
    public double ConditioningScale { get; init; } = 1.0;
    public double GuidanceStart { get; init; }
    public double GuidanceEnd { get; init; } = 1.0;
    /// <summary>diffusers' guess_mode (forced on by a ControlNet with global_pool_conditions).</summary>
    public bool GuessMode { get; init; }

    public bool EffectiveGuessMode => GuessMode || Net.Config.GlobalPoolConditions;

    /// <summary>diffusers' <c>controlnet_keep</c> for step <paramref name="i"/> of <paramref name="n"/>: 0 outside [start, end], else 1.</summary>
    public float Keep(int i, int n) => (double)i / n < GuidanceStart || (double)(i + 1) / n > GuidanceEnd ? 0f : 1f;

    public void Validate()
    {
        if (double.IsNaN(ConditioningScale) || double.IsInfinity(ConditioningScale))
            throw new PagSharpException($"ControlNet conditioning scale must be a finite number (got {ConditioningScale})");
        if (!(GuidanceStart >= 0 && GuidanceStart <= 1 && GuidanceEnd >= 0 && GuidanceEnd <= 1))
            throw new PagSharpException($"control guidance start/end must be in [0, 1] (got {GuidanceStart}, {GuidanceEnd})");
        if (GuidanceStart >= GuidanceEnd)
            throw new PagSharpException($"control guidance start ({GuidanceStart}) must be below control guidance end ({GuidanceEnd}), as diffusers requires");
    }
}
