using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Models.Sd;
using PagSharp.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>
/// What image-to-image and inpainting start from (diffusers' <c>…PAGImg2ImgPipeline</c> and <c>…PAGInpaintPipeline</c>
/// arguments). Images are [B, 3, H, W] with values in [0, 1] (mapped to [−1, 1] for the VAE; values below 0 are taken
/// as already in [−1, 1], as diffusers' image processor does), or image latents [B, latent channels, h, w], used as
/// they are.
/// </summary>
public sealed record SdImageEdit
{
    /// <summary>The input image, or its latents.</summary>
    public required Tensor Image { get; init; }
    /// <summary>Inpainting mask [B, 1, H, W] in [0, 1] at the image size: white (≥ 0.5) is repainted, black kept. Null = image-to-image.</summary>
    public Tensor? Mask { get; init; }
    /// <summary>Latents of the masked image (9-channel inpainting U-Nets), instead of encoding image · (mask &lt; 0.5).</summary>
    public Tensor? MaskedImageLatents { get; init; }
    /// <summary>How much of the schedule runs: the first ⌊steps · strength⌋ steps are skipped from the end (diffusers' get_timesteps), in (0, 1].</summary>
    public double Strength { get; init; } = 0.8;
    /// <summary>SDXL refiner hand-off: start at the step whose timestep falls below (1 − DenoisingStart)·T, without adding noise (the image latents are the base's output). Overrides <see cref="Strength"/>.</summary>
    public double? DenoisingStart { get; init; }
    /// <summary>SDXL: stop once timesteps fall below (1 − DenoisingEnd)·T (hand the latents to a refiner).</summary>
    public double? DenoisingEnd { get; init; }
    /// <summary>The noise added at the start step (diffusers draws it from the samples' generators after the image latents); null = drawn.</summary>
    public Tensor? Noise { get; init; }
}

public sealed partial class StableDiffusion
{
    /// <summary>
    /// Image-to-image, or inpainting when <paramref name="mask"/> is given, in one call (diffusers'
    /// <c>…PAGImg2ImgPipeline(prompt, image, strength, …)</c> / <c>…PAGInpaintPipeline(prompt, image, mask_image, …)</c>
    /// with <c>generator=[Generator().manual_seed(s) for s in seeds]</c>): one result per seed from
    /// <paramref name="image"/> ([1 or N, 3, H, W] in [0, 1]) and <paramref name="mask"/> ([1 or N, 1, H, W], white =
    /// repaint). Returns images in [0, 1] ([N, 3, H, W]), or the final latents when <paramref name="decode"/> is false.
    /// </summary>
    public Tensor ImageToImage(string prompt, Tensor image, IReadOnlyList<long> seeds, GuidanceSettings guidance, double strength = 0.8,
                               Tensor? mask = null, string? negativePrompt = null, string scheduler = "ddim", int steps = 50, double eta = 0,
                               int clipSkip = 0, bool decode = true, SdXlMicroConditioning? micro = null, CancellationToken cancellation = default)
    {
        if (seeds.Count == 0) throw new PagSharpException("give at least one seed");
        if (image.dim() != 4 || (image.shape[0] != 1 && image.shape[0] != seeds.Count))
            throw new PagSharpException($"the image has shape [{string.Join(",", image.shape)}]; expected [1 or {seeds.Count},3,H,W] (one, or one per seed)");
        int n = seeds.Count;
        Tensor Rows(Tensor t) => t.shape[0] == n ? t : t.expand(t.shape.Select((v, i) => i == 0 ? (long)n : v).ToArray()).contiguous();
        using var scope = NewDisposeScope();
        bool latents = image.shape[1] != 3;
        int h = (int)image.shape[2] * (latents ? VaeScaleFactor : 1), w = (int)image.shape[3] * (latents ? VaeScaleFactor : 1);
        var (pe, ne, xl) = EncodeForGeneration(prompt, negativePrompt, clipSkip, guidance.UsesCfg, n, h, w, micro, imageToImage: true);
        using var source = new NoiseSource(seeds);
        var edit = new SdImageEdit { Image = Rows(image), Mask = mask is null ? null : Rows(mask), Strength = strength };
        var result = Edit(scheduler, steps, eta, edit, source, pe, ne, guidance, seeds[0], xl, null, cancellation);
        return (decode ? Decode(result) : result).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// The first and end (exclusive) step indices of an edit on <paramref name="timesteps"/>: diffusers'
    /// <c>get_timesteps</c> (t_start = steps − min(⌊steps·strength⌋, steps); with denoising_start the steps whose
    /// timestep is below round(T − denoising_start·T)) and SDXL's denoising_end cut (timesteps ≥ round(T − end·T)).
    /// </summary>
    public static (int Start, int End) EditSteps(IReadOnlyList<float> timesteps, int numTrainTimesteps, double strength, double? denoisingStart, double? denoisingEnd)
    {
        int n = timesteps.Count;
        if (double.IsNaN(strength) || strength <= 0 || strength > 1)
            throw new PagSharpException($"Strength must be in (0, 1] (got {strength})");
        foreach (var (v, name) in new[] { (denoisingStart, "DenoisingStart"), (denoisingEnd, "DenoisingEnd") })
            if (v is { } d && (double.IsNaN(d) || d <= 0 || d >= 1)) throw new PagSharpException($"{name} must be in (0, 1) (got {d})");
        if (denoisingStart is { } ds && denoisingEnd is { } de && ds >= de)
            throw new PagSharpException($"DenoisingStart {ds} must be below DenoisingEnd {de}");
        int start;
        if (denoisingStart is { } s)
        {
            int cutoff = (int)Math.Round(numTrainTimesteps - s * numTrainTimesteps, MidpointRounding.ToEven);
            start = n - timesteps.Count(t => t < cutoff);
        }
        else start = n - Math.Min((int)(n * strength), n);
        int end = n;
        if (denoisingEnd is { } e)
        {
            int cutoff = (int)Math.Round(numTrainTimesteps - e * numTrainTimesteps, MidpointRounding.ToEven);
            end = timesteps.Count(t => t >= cutoff);
        }
        if (start >= end)
            throw new PagSharpException(denoisingStart is not null || denoisingEnd is not null
                ? $"DenoisingStart/DenoisingEnd leave no step of the {n} to run"
                : $"Strength {strength} with {n} steps leaves ⌊{n}·{strength}⌋ = 0 steps to run; raise the strength or the number of steps");
        return (start, end);
    }

    /// <summary>
    /// Image latents for images in [0, 1] (or [−1, 1]) [B, 3, H, W]: the VAE posterior sampled with each sample's
    /// generator (diffusers' <c>retrieve_latents(vae.encode(image[i:i+1]), generator[i])</c>), times the scaling factor.
    /// </summary>
    public Tensor EncodeImages(Tensor images, NoiseSource source)
    {
        if (Vae is null) throw new PagSharpException("this call was loaded without the VAE; give image latents");
        if (images.dim() != 4 || images.shape[1] != 3)
            throw new PagSharpException($"images have shape [{string.Join(",", images.shape)}]; expected [B,3,H,W]");
        if (images.shape[0] != source.Count)
            throw new PagSharpException($"{images.shape[0]} images for {source.Count} generators; give one image per sample");
        using var scope = NewDisposeScope();
        return EncodeNormalized(Normalize(images), source).MoveToOuterDisposeScope();
    }

    /// <summary>diffusers' VaeImageProcessor normalisation: 2x − 1, unless the values are already below 0 (then as they are).</summary>
    private static Tensor Normalize(Tensor images)
    {
        var x = images.to_type(ScalarType.Float32);
        return x.min().item<float>() >= 0 ? x * 2 - 1 : x;
    }

    private Tensor EncodeNormalized(Tensor x, NoiseSource source)
    {
        var vae = Vae ?? throw new PagSharpException("this call was loaded without the VAE; give image latents");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var vaeDevice = vae.parameters().First().device;
        if (x.device != vaeDevice) x = x.to(vaeDevice);
        var rows = new List<Tensor>();
        for (int i = 0; i < x.shape[0]; i++)
        {
            var d = vae.Encode(x.narrow(0, i, 1));
            rows.Add(d.Sample(source[i]));
        }
        return (cat(rows.ToArray(), 0) * (float)vae.Config.ScalingFactor).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Image-to-image or inpainting (<paramref name="edit"/> with a mask) for the samples of <paramref name="source"/>,
    /// as diffusers' <c>StableDiffusion(XL)PAGImg2ImgPipeline</c> / <c>…PAGInpaintPipeline</c>: the steps from
    /// <see cref="EditSteps"/>; the generators draw, in diffusers' order, the image's posterior sample (when the image
    /// latents are needed), the noise, then the masked image's posterior sample; the start latents are the image
    /// latents noised to the first step (pure noise at strength 1 when inpainting; none added after an SDXL
    /// denoising_start). A 9-channel U-Net gets [mask, masked-image latents] appended to its input; a 4-channel U-Net
    /// keeps the unmasked region by blending with the re-noised image latents after every step. Returns the final
    /// latents [B, C, h, w]. With <paramref name="control"/> (SD 1.x/2.x inpainting: diffusers'
    /// <c>StableDiffusionControlNetPAGInpaintPipeline</c>) the ControlNet gets the latents and the control image each
    /// step, and the scheduler settings are the ControlNet pipelines' (<see cref="ControlNetScheduler"/>).
    /// </summary>
    public Tensor Edit(string scheduler, int steps, double eta, SdImageEdit edit, NoiseSource source, Tensor promptEmbeds, Tensor? negativeEmbeds,
                       GuidanceSettings guidance, long policySeed, SdXlConditioning? xl = null, Action<LoopStep>? onStep = null,
                       CancellationToken cancellation = default, SdControl? control = null)
    {
        var s = Schedulers.Create(scheduler, SchedulerFor(control), steps, eta);
        using var policyGen = new Generator((ulong)policySeed ^ 0x5bd1e995UL);
        using var scope = NewDisposeScope();
        source.Device = Device;
        try
        {
            var (start, end) = EditSteps(s.Timesteps, SchedulerFor(control).NumTrainTimesteps, edit.Strength, edit.DenoisingStart, edit.DenoisingEnd);
            var prepared = PrepareEdit(s, edit, source, start, end);
            var latents = StableDiffusionPipeline.Denoise(Unet, s, prepared.Start, promptEmbeds, negativeEmbeds, guidance, source, onStep, policyGen,
                cancellation, control, SchedulerFor(control), Guide, xl, prepared.ExtraInput, prepared.Range);
            return latents.MoveToOuterDisposeScope();
        }
        finally
        {
            (s as IDisposable)?.Dispose();
        }
    }

    private sealed record PreparedEdit(Tensor Start, Tensor? ExtraInput, LoopRange Range);

    private PreparedEdit PrepareEdit(IScheduler s, SdImageEdit edit, NoiseSource source, int start, int end)
    {
        int latentC = Vae?.Config.LatentChannels ?? VaeConfig?.LatentChannels ?? 4;
        int unetC = Unet.Config.InChannels;
        bool inpaint = edit.Mask is not null;
        long b = source.Count;
        if (!inpaint && unetC != latentC)
            throw new PagSharpException($"this UNet takes {unetC} input channels (an inpainting UNet): image-to-image needs a {latentC}-channel UNet; use inpainting with a mask");
        if (inpaint && unetC != latentC && unetC != 2 * latentC + 1)
            throw new PagSharpException($"this UNet takes {unetC} input channels; inpainting needs {latentC} (latents) or {2 * latentC + 1} (latents, mask, masked-image latents)");
        var img = edit.Image.device == Device ? edit.Image : edit.Image.to(Device);
        if (img.dim() != 4 || (img.shape[1] != 3 && img.shape[1] != latentC))
            throw new PagSharpException($"the image has shape [{string.Join(",", img.shape)}]; expected [B,3,H,W] (pixels in [0, 1]) or [B,{latentC},h,w] (image latents)");
        if (img.shape[0] != b) throw new PagSharpException($"{img.shape[0]} images for {b} samples; give one per sample");
        if (!img.is_floating_point()) throw new PagSharpException($"the image holds {img.dtype} values; expected floating-point values");
        bool isLatents = img.shape[1] == latentC && img.shape[1] != 3;
        int f = VaeScaleFactor;
        long h = isLatents ? img.shape[2] : img.shape[2] / f, w = isLatents ? img.shape[3] : img.shape[3] / f;
        if (!isLatents) CheckSize((int)img.shape[2], (int)img.shape[3]);
        bool strengthMax = edit.Strength == 1.0 && edit.DenoisingStart is null;
        bool addNoise = edit.DenoisingStart is null;
        bool unet4 = unetC == latentC;
        if (inpaint && strengthMax && start != 0) throw new PagSharpException("internal: strength 1 must start at step 0");

        // 1. Image latents, when needed (diffusers: img2img always; inpainting for a 4-channel UNet or strength < 1).
        Tensor? imageLatents = null;
        if (!inpaint || unet4 || !strengthMax)
            imageLatents = isLatents ? img.to_type(ScalarType.Float32) : EncodeImages(img, source);

        // 2. Noise (drawn unless given; image-to-image after a denoising_start draws none).
        long[] shape = [latentC, h, w];
        Tensor? noise = edit.Noise?.to_type(ScalarType.Float32).to(Device);
        if (imageLatents is not null && imageLatents.device != Device) imageLatents = imageLatents.to(Device);
        if (noise is not null && !noise.shape.SequenceEqual(new[] { b, latentC, h, w }))
            throw new PagSharpException($"the noise has shape [{string.Join(",", noise.shape)}]; expected [{b},{latentC},{h},{w}]");
        if (noise is null && (addNoise || inpaint)) noise = source.Randn(shape);

        // 3. Start latents.
        Tensor startLatents = inpaint && strengthMax ? noise!
            : addNoise ? s.AddNoise(imageLatents!, noise!, start)
            : imageLatents!;

        if (!inpaint) return new PreparedEdit(startLatents, null, new LoopRange(start, end, ScaleInitialNoise: false));

        // 4. Mask at image resolution, binarised (diffusers' mask processor), then nearest-resized to the latents.
        var m = edit.Mask!.to(Device);
        if (m.dim() == 3) m = m.unsqueeze(1);
        long H = isLatents ? h * f : img.shape[2], W = isLatents ? w * f : img.shape[3];
        if (m.dim() != 4 || m.shape[1] != 1 || (m.shape[0] != 1 && m.shape[0] != b) || m.shape[2] != H || m.shape[3] != W)
            throw new PagSharpException($"the mask has shape [{string.Join(",", edit.Mask!.shape)}]; expected [1 or {b},1,{H},{W}] (one channel, the image's size {W}×{H})");
        var maskFull = where(m.to_type(ScalarType.Float32) < 0.5, 0f, 1f);
        if (maskFull.shape[0] != b) maskFull = maskFull.expand(b, -1, -1, -1);
        var maskLatent = nn.functional.interpolate(maskFull, new long[] { h, w }, mode: InterpolationMode.Nearest);

        // 5. Masked-image latents (drawn after the noise, as diffusers; a 4-channel UNet does not use them).
        Tensor? maskedLatents = edit.MaskedImageLatents?.to_type(ScalarType.Float32).to(Device);
        if (maskedLatents is null)
        {
            if (isLatents)
            {
                if (!unet4) throw new PagSharpException("a 9-channel inpainting UNet given image latents also needs the masked-image latents");
            }
            else if (unet4)
            {
                // diffusers encodes image · (mask < 0.5) here too (unused by a 4-channel UNet); only its draws matter,
                // for stochastic schedulers that continue the generators' streams.
                for (int i = 0; i < b; i++) randn(new long[] { 1, latentC, h, w }, generator: source[i]).Dispose(); // CPU draws: only the streams matter
            }
            else maskedLatents = EncodeNormalized(Normalize(img) * (maskFull < 0.5), source).to(Device);
        }
        if (maskedLatents is not null && !maskedLatents.shape.SequenceEqual(new[] { b, latentC, h, w }))
            throw new PagSharpException($"the masked-image latents have shape [{string.Join(",", maskedLatents.shape)}]; expected [{b},{latentC},{h},{w}]");

        if (!unet4) return new PreparedEdit(startLatents, cat(new[] { maskLatent, maskedLatents! }, 1), new LoopRange(start, end, ScaleInitialNoise: strengthMax));

        var keep = imageLatents!;
        var n = noise!;
        var maskL = maskLatent;
        Tensor Blend(int i, Tensor x)
        {
            var proper = i < end - 1 ? s.AddNoise(keep, n, i + 1) : keep;
            return (1 - maskL) * proper + maskL * x;
        }
        return new PreparedEdit(startLatents, null, new LoopRange(start, end, ScaleInitialNoise: strengthMax, AfterStep: Blend));
    }
}
