using PagSharp.Sampling;
using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Models.Sd;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>
/// The denoising loop of diffusers' <c>StableDiffusionPAGPipeline.__call__</c> (and its ControlNet variant), on prompt
/// embeddings: a <see cref="UNetDenoiser"/> with the prompt and negative embeddings, the guidance engine
/// (<see cref="GuidedDenoiser"/>: diffusers' batch layouts [uncond, cond, cond_perturbed], identity self-attention for
/// the perturbed block, shared prefix) and the shared <see cref="SamplingLoop"/> over the scheduler.
/// </summary>
public static class StableDiffusionPipeline
{
    /// <summary>
    /// Denoises <paramref name="noise"/> (x_T, [B, C, h, w], unscaled: it is multiplied by the scheduler's
    /// init_noise_sigma, as diffusers' <c>prepare_latents</c>) and returns the final latents.
    /// </summary>
    /// <param name="unet">The U-Net.</param>
    /// <param name="scheduler">A fresh scheduler for this run.</param>
    /// <param name="noise">x_T.</param>
    /// <param name="promptEmbeds">Text conditioning [B, S, D].</param>
    /// <param name="negativeEmbeds">Unconditional embeddings [B, S, D]; required with CFG.</param>
    /// <param name="guidance">Guidance settings (CFG, PAG with its schedules, intervals and cache interval, guidance rescale).</param>
    /// <param name="noiseSource">Per-sample generators for stochastic schedulers (and eta &gt; 0).</param>
    /// <param name="onStep">Called after every step.</param>
    /// <param name="policyGenerator">Random source for stochastic perturbation policies.</param>
    /// <param name="cancellation">Checked between steps.</param>
    /// <param name="control">A ControlNet with its image and settings (see <see cref="UNetDenoiser"/>).</param>
    /// <param name="schedule">The model's training schedule (num_train_timesteps for scale ramps; ᾱ and the prediction
    /// type for SAG); default: diffusers' defaults.</param>
    /// <param name="guide">The weaker U-Net of autoguidance (same prompt embeddings and ControlNet); needed when <see cref="GuidanceSettings.AutoguidanceScale"/> is set.</param>
    /// <param name="xl">SDXL's pooled embeddings and time ids (SDXL U-Nets only).</param>
    /// <param name="extraInput">Channels appended to the model input (9-channel inpainting: mask and masked-image latents).</param>
    /// <param name="range">Which steps run and what follows each (image-to-image start, inpainting blend); default: all steps from x_T.</param>
    public static Tensor Denoise(SdUNet unet, IScheduler scheduler, Tensor noise, Tensor promptEmbeds, Tensor? negativeEmbeds,
                                 GuidanceSettings guidance, NoiseSource? noiseSource = null, Action<LoopStep>? onStep = null,
                                 Generator? policyGenerator = null, CancellationToken cancellation = default, SdControl? control = null,
                                 SchedulerConfig? schedule = null, SdUNet? guide = null, SdXlConditioning? xl = null, Tensor? extraInput = null,
                                 LoopRange? range = null)
    {
        schedule ??= SchedulerConfig.Default;
        if (guidance.UsesCfg && negativeEmbeds is null) throw new PagSharpException("CFG (guidance scale > 1) needs negative prompt embeddings");
        using var model = new UNetDenoiser(unet, promptEmbeds, guidance.UsesCfg ? negativeEmbeds : null, noise.shape, control, xl, extraInput);
        using var guideModel = guide is null || !guidance.UsesAutoguidance ? null : new UNetDenoiser(guide, promptEmbeds, null, noise.shape, control, xl, extraInput);
        var denoiser = CreateDenoiser(model, guidance, schedule, noise.shape, policyGenerator, guideModel);
        using var _ = denoiser as IDisposable;
        // Inference mode for the loop (no autograd bookkeeping); the result is cloned outside it, so the caller gets
        // an ordinary tensor.
        Tensor latents;
        using (inference_mode())
            latents = SamplingLoop.Run(scheduler, denoiser, noise, noiseSource, range ?? new LoopRange(), onStep, cancellation);
        var result = latents.clone();
        latents.Dispose();
        return result;
    }

    /// <summary>
    /// The guided denoiser for a U-Net: the guidance engine, or with SAG a <see cref="SagDenoiser"/> as diffusers'
    /// <c>StableDiffusionSAGPipeline</c> (x̂0 not clipped, ᾱ of the training schedule, SD's defaults — the mid block's
    /// map, blur kernel 9, σ = 1 — where the settings leave them open).
    /// </summary>
    public static IGuidedDenoiser CreateDenoiser(UNetDenoiser model, GuidanceSettings guidance, SchedulerConfig schedule, long[] latentShape,
                                                 Generator? policyGenerator = null, UNetDenoiser? guide = null)
    {
        if (!guidance.UsesSag) return new GuidedDenoiser(model, guidance, schedule.NumTrainTimesteps, policyGenerator, guide);
        var ac = DiffusersSchedule.AlphasCumprod(schedule).Select(a => (double)a).ToArray();
        var sag = new SagDenoiser(model, guidance with { Sag = SdSagDefaults(guidance.Sag!, model.AttentionLayers) }, ac, clipXstart: false, schedule.PredictionType);
        sag.CheckImageSize(latentShape[^2], latentShape[^1]);
        return sag;
    }

    /// <summary>diffusers' SAG pipeline defaults for what <paramref name="s"/> leaves open: the mid block's self-attention, kernel 9, σ = 1.</summary>
    public static SagSettings SdSagDefaults(SagSettings s, IReadOnlyList<PagSharp.Attention.AttentionLayerInfo> layers) => s with
    {
        Layer = s.Layer ?? layers.FirstOrDefault(l => l.Group == "middle")?.Name ?? throw new PagSharpException("SAG needs a mid-block self-attention layer; this UNet has none"),
    };
}
