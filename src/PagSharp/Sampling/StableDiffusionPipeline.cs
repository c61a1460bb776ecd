using PagSharp.Attention;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Models.Sd;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Sampling;

/// <summary>One finished denoising step: its index, the model timestep, and the latents after it.</summary>
public sealed record SdStep(int Index, int Count, float Timestep, Tensor Latents);

/// <summary>
/// The denoising loop of diffusers' <c>StableDiffusionPAGPipeline.__call__</c>, on prompt embeddings. The U-Net
/// batch is laid out as diffusers does: [cond]; CFG [uncond, cond]; PAG [cond, cond_perturbed]; CFG+PAG
/// [uncond, cond, cond_perturbed] (each block B entries), the perturbed block getting the plan's policy in the chosen
/// self-attention layers. With <see cref="SdGuidance.SharedPrefix"/> the perturbed block is not fed in; the U-Net
/// forks it from the cond block at the first perturbed layer, which gives the same result.
/// </summary>
public static class StableDiffusionPipeline
{
    /// <summary>
    /// Denoises <paramref name="noise"/> (x_T, [B, C, h, w], unscaled: it is multiplied by the scheduler's
    /// init_noise_sigma here, as diffusers' <c>prepare_latents</c>) and returns the final latents.
    /// </summary>
    /// <param name="unet">The U-Net.</param>
    /// <param name="scheduler">A fresh scheduler for this run.</param>
    /// <param name="noise">x_T.</param>
    /// <param name="promptEmbeds">Text conditioning [B, S, D].</param>
    /// <param name="negativeEmbeds">Unconditional embeddings [B, S, D]; required with CFG.</param>
    /// <param name="guidance">CFG / PAG settings.</param>
    /// <param name="noiseSource">Per-sample generators for stochastic schedulers (and eta &gt; 0).</param>
    /// <param name="onStep">Called after every step.</param>
    /// <param name="policyGenerator">Random source for stochastic perturbation policies.</param>
    /// <param name="cancellation">Checked between steps.</param>
    /// <param name="control">
    /// A ControlNet (diffusers' <c>StableDiffusionControlNetPAGPipeline</c>): each step it runs once, with normal
    /// attention, on the U-Net's batch with the control image in every branch (uncond, cond, perturbed) and the same
    /// text conditioning; its residuals go to the U-Net. With a shared prefix the perturbed branch is not fed to it:
    /// the forked entries get the cond branch's residuals, which are what a full pass computes for them. Outside
    /// [GuidanceStart, GuidanceEnd] it is not run (diffusers runs it with scale 0, which adds zeros). In guess mode
    /// with CFG it runs on the cond (and perturbed) entries only and the uncond entries get no residual, as
    /// diffusers' StableDiffusionControlNetPipeline.
    /// </param>
    public static Tensor Denoise(SdUNet unet, IScheduler scheduler, Tensor noise, Tensor promptEmbeds, Tensor? negativeEmbeds,
                                 SdGuidance guidance, NoiseSource? noiseSource = null, Action<SdStep>? onStep = null,
                                 Generator? policyGenerator = null, CancellationToken cancellation = default, SdControl? control = null)
    {
        guidance.Validate();
        CheckInputs(unet, noise, promptEmbeds, negativeEmbeds, guidance);
        Tensor? controlImage = control is null ? null : PrepareControl(unet, control, noise);
        bool cfg = guidance.UsesCfg, pag = guidance.UsesPag;
        long b = noise.shape[0];
        int condBlock = cfg ? 1 : 0;
        using var full = BatchLayout.Create(guidance, promptEmbeds, negativeEmbeds, b, pag, policyGenerator);
        // With a PAG cache interval, the steps that reuse the cached direction run without the perturbed block.
        using var pagCache = new PagSharp.Guidance.PagDirectionCache(guidance.PagCacheInterval);
        using var withoutPag = pag && guidance.PagCacheInterval > 1
            ? BatchLayout.Create(guidance, promptEmbeds, negativeEmbeds, b, false, null) : null;

        var latents = (noise * scheduler.InitNoiseSigma).DetachFromDisposeScope();
        var timesteps = scheduler.Timesteps;
        // Inference mode for the loop (no autograd bookkeeping); the result is cloned outside it, so the caller
        // gets an ordinary tensor.
        using (inference_mode())
        {
            for (int i = 0; i < timesteps.Count; i++)
            {
                cancellation.ThrowIfCancellationRequested();
                var scope = NewDisposeScope();
                float t = timesteps[i];
                bool reuse = pag && !pagCache.ComputesAt(t, latents.shape);
                var (emb, fed, blocks, plan) = reuse ? withoutPag! : full;
                var input = fed == 1 ? latents : cat(Enumerable.Repeat(latents, fed).ToArray(), 0);
                input = scheduler.ScaleModelInput(input, i);
                using var tt = tensor(t);
                ControlNetResiduals? residuals = null;
                float keep = control?.Keep(i, timesteps.Count) ?? 0f;
                if (control is not null && keep > 0)
                {
                    double scale = control.ConditioningScale * keep;
                    if (control.EffectiveGuessMode && cfg)
                    {
                        // Only the cond (and fed perturbed) entries; the uncond entries get zero residuals.
                        long rest = input.shape[0] - b;
                        using var part = control.Net.Forward(input.narrow(0, b, rest), tt, emb.narrow(0, b, rest),
                            Repeat(controlImage!, (int)(rest / b)), scale, true);
                        residuals = new ControlNetResiduals(
                            part.Down.Select(d => cat(new[] { zeros_like(d.narrow(0, 0, b)), d }, 0)).ToList(),
                            cat(new[] { zeros_like(part.Mid.narrow(0, 0, b)), part.Mid }, 0));
                    }
                    else
                        residuals = control.Net.Forward(input, tt, emb, Repeat(controlImage!, fed), scale, control.EffectiveGuessMode);
                }
                var output = unet.Forward(input, tt, emb, plan, residuals);
                residuals?.Dispose();
                var chunks = output.chunk(blocks, 0);
                Tensor guided;
                var c = chunks[condBlock];
                if (pag)
                {
                    // c − p; with a cache interval, computed at one PAG step in N and reused in between.
                    float s = guidance.PagScaleAt(t);
                    var direction = reuse ? pagCache.Direction : c - chunks[blocks - 1];
                    if (!reuse) pagCache.Store(direction);
                    guided = cfg
                        ? chunks[0] + (float)guidance.GuidanceScale * (c - chunks[0]) + s * direction
                        : c + s * direction;
                }
                else if (cfg)
                    guided = chunks[0] + (float)guidance.GuidanceScale * (c - chunks[0]);
                else
                    guided = output;
                if (cfg && guidance.GuidanceRescale > 0) guided = RescaleNoiseCfg(guided, c, guidance.GuidanceRescale);

                var next = scheduler.Step(guided, i, latents, noiseSource).DetachFromDisposeScope();
                scope.Dispose();
                latents.Dispose();
                latents = next;
                onStep?.Invoke(new SdStep(i, timesteps.Count, t, latents));
            }
        }
        var result = latents.clone();
        latents.Dispose();
        return result;
    }

    /// <summary>
    /// diffusers' <c>rescale_noise_cfg</c>: x_r = x·(std(c)/std(x)) per sample (unbiased std over all but the batch
    /// axis), then φ·x_r + (1 − φ)·x.
    /// </summary>
    public static Tensor RescaleNoiseCfg(Tensor noiseCfg, Tensor noiseText, double phi)
    {
        var dims = Enumerable.Range(1, (int)noiseText.dim() - 1).Select(d => (long)d).ToArray();
        var stdText = noiseText.std(dims, unbiased: true, keepdim: true);
        var stdCfg = noiseCfg.std(dims, unbiased: true, keepdim: true);
        var rescaled = noiseCfg * (stdText / stdCfg);
        return (float)phi * rescaled + (float)(1 - phi) * noiseCfg;
    }

    /// <summary>
    /// One U-Net batch layout in diffusers' order, [uncond], cond, [perturbed], each block B entries: the text
    /// conditioning fed in, how many blocks are fed, how many come out, and the perturbation plan. With a shared
    /// prefix the perturbed block is not fed; the U-Net forks it from the cond block at the first perturbed layer.
    /// </summary>
    private sealed record BatchLayout(Tensor Embeddings, int Fed, int Blocks, PerturbationPlan? Plan) : IDisposable
    {
        public static BatchLayout Create(SdGuidance guidance, Tensor promptEmbeds, Tensor? negativeEmbeds, long b, bool pag, Generator? policyGenerator)
        {
            bool cfg = guidance.UsesCfg;
            var embList = new List<Tensor>();
            if (cfg) embList.Add(negativeEmbeds!);
            embList.Add(promptEmbeds);
            int blocks = embList.Count + (pag ? 1 : 0), condBlock = cfg ? 1 : 0;
            if (pag && !guidance.SharedPrefix) embList.Add(promptEmbeds);
            PerturbationPlan? plan = pag
                ? PerturbationPlan.Perturb(guidance.PagLayers, guidance.Perturbation, Range(b * (blocks - 1), b), policyGenerator,
                    guidance.SharedPrefix ? Range(b * condBlock, b) : null)
                : null;
            return new BatchLayout(cat(embList.ToArray(), 0), embList.Count, blocks, plan);
        }

        public void Dispose() => Embeddings.Dispose();
    }

    private static Tensor Repeat(Tensor x, int times) => times == 1 ? x : cat(Enumerable.Repeat(x, times).ToArray(), 0);

    /// <summary>The control image at the batch of the latents ([B, C, H, W]), checked against the ControlNet and the UNet.</summary>
    private static Tensor PrepareControl(SdUNet unet, SdControl control, Tensor noise)
    {
        control.Validate();
        var cn = control.Net.Config;
        cn.CheckFits(unet.Config, "the ControlNet config");
        var img = control.Image;
        long b = noise.shape[0], f = cn.ConditioningFactor;
        if (img.dim() == 3) img = img.unsqueeze(0);
        if (img.dim() != 4 || img.shape[1] != cn.ConditioningChannels)
            throw new PagSharpException($"the control image has shape [{string.Join(",", control.Image.shape)}]; this ControlNet expects [1 or {b},{cn.ConditioningChannels},H,W] (conditioning_channels {cn.ConditioningChannels})");
        if (img.shape[0] != 1 && img.shape[0] != b)
            throw new PagSharpException($"{img.shape[0]} control images for {b} latents; give one, or one per sample");
        if (img.shape[2] != noise.shape[2] * f || img.shape[3] != noise.shape[3] * f)
            throw new PagSharpException($"the control image is {img.shape[3]}×{img.shape[2]} but latents of {noise.shape[3]}×{noise.shape[2]} need a {noise.shape[3] * f}×{noise.shape[2] * f} control image (width×height; this ControlNet downsamples by {f}); resize it to the generation size");
        if (!img.is_floating_point())
            throw new PagSharpException($"the control image holds {img.dtype} values; expected floating-point values (0..1 for the standard SD ControlNets)");
        img = img.to_type(noise.dtype);
        return img.shape[0] == b ? img : img.expand(b, -1, -1, -1).contiguous();
    }

    private static long[] Range(long start, long count) => Enumerable.Range(0, (int)count).Select(i => start + i).ToArray();

    private static void CheckInputs(SdUNet unet, Tensor noise, Tensor promptEmbeds, Tensor? negativeEmbeds, SdGuidance g)
    {
        var cfg = unet.Config;
        if (noise.dim() != 4 || noise.shape[1] != cfg.InChannels)
            throw new PagSharpException($"initial latents have shape [{string.Join(",", noise.shape)}]; this UNet expects [N,{cfg.InChannels},H,W]");
        long d = cfg.CrossAttentionDim[0];
        if (promptEmbeds.dim() != 3 || promptEmbeds.shape[2] != d)
            throw new PagSharpException($"prompt embeddings have shape [{string.Join(",", promptEmbeds.shape)}]; this UNet expects [N,S,{d}] (cross_attention_dim {d})");
        if (promptEmbeds.shape[0] != noise.shape[0])
            throw new PagSharpException($"{promptEmbeds.shape[0]} prompt embeddings for {noise.shape[0]} latents; give one per sample");
        if (g.UsesCfg)
        {
            if (negativeEmbeds is null) throw new PagSharpException("CFG (guidance scale > 1) needs negative prompt embeddings");
            if (!negativeEmbeds.shape.SequenceEqual(promptEmbeds.shape))
                throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", negativeEmbeds.shape)}] but the prompt embeddings [{string.Join(",", promptEmbeds.shape)}]; they must match (as diffusers requires)");
        }
        var valid = unet.AttentionLayers.Select(l => l.Name).ToHashSet();
        foreach (var l in g.PagLayers)
            if (!valid.Contains(l))
                throw new PagSharpException($"'{l}' is not a self-attention layer of this UNet; valid: {string.Join(", ", valid)}");
    }
}
