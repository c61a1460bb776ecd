using TorchSharp;
using PagSharp.Runtime;
using PagSharp.Runs;
using PagSharp.Guidance;
using PagSharp.Denoisers;
using PagSharp.Pipelines;
using PagSharp.Diffusion;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Sampling;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using Grid = PagSharp.Imaging.Grid;

namespace PagSharp.Cli.Commands;

/// <summary>What the Stable Diffusion commands read: prompts or embeddings, images, masks, LoRA specs, ControlNets and control images.</summary>
public sealed partial class Txt2ImgCommand
{
    /// <summary>"FILE" or "FILE:SCALE" (the scale after the last colon, when what precedes it is a file).</summary>
    internal static (string File, double Scale) ParseLora(string spec)
    {
        int colon = spec.LastIndexOf(':');
        if (colon > 0 && File.Exists(spec[..colon]))
        {
            string v = spec[(colon + 1)..];
            return double.TryParse(v, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double sc) && double.IsFinite(sc)
                ? (spec[..colon], sc)
                : throw new PagSharpException($"--lora '{spec}': '{v}' is not a scale (a number such as 0.8)");
        }
        return File.Exists(spec) ? (spec, 1.0) : throw new PagSharpException($"--lora '{spec}': the file does not exist");
    }

    /// <summary>Prompt embeddings (and SDXL's pooled ones) for the run, from text or tensors, checked against the model.</summary>
    private sealed record Texts(Tensor Prompt, Tensor? Negative, Tensor? Pooled, Tensor? NegativePooled) : IDisposable
    {
        public void Dispose()
        {
            Prompt.Dispose();
            Negative?.Dispose();
            Pooled?.Dispose();
            NegativePooled?.Dispose();
        }
    }

    private static Texts EncodeTexts(Txt2ImgSettings s, StableDiffusion sd, bool cfg, int count)
    {
        if (!sd.IsXl)
        {
            var pe = s.Prompt is not null ? Encode(sd, s.Prompt, s.ClipSkip) : LoadEmbeds(s.PromptEmbeds!, "--prompt-embeds", sd, count);
            var ne = !cfg ? null
                : s.NegativePromptEmbeds is not null ? LoadEmbeds(s.NegativePromptEmbeds, "--negative-prompt-embeds", sd, count)
                : Encode(sd, s.NegativePrompt ?? "", 0); // diffusers applies clip_skip to the prompt only
            if (ne is not null && !ne.shape[1..].SequenceEqual(pe.shape[1..]))
                throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", ne.shape)}] but the prompt embeddings [{string.Join(",", pe.shape)}]; they must match");
            return new Texts(pe, ne, null, null);
        }
        Tensor prompt, pooled;
        if (s.Prompt is not null)
        {
            (prompt, pooled) = sd.EncodePromptXl(s.Prompt, s.Prompt2, s.ClipSkip, out var warning);
            if (warning is not null) AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(warning)}");
        }
        else
        {
            prompt = LoadEmbeds(s.PromptEmbeds!, "--prompt-embeds", sd, count);
            pooled = LoadPooled(s.PooledPromptEmbeds!, "--pooled-prompt-embeds", count);
        }
        Tensor? neg = null, negPooled = null;
        if (cfg && s.NegativePromptEmbeds is not null)
        {
            neg = LoadEmbeds(s.NegativePromptEmbeds, "--negative-prompt-embeds", sd, count);
            negPooled = LoadPooled(s.NegativePooledPromptEmbeds!, "--negative-pooled-prompt-embeds", count);
        }
        else if (cfg && s.NegativePrompt is null && sd.Folder.ForceZerosForEmptyPrompt)
            (neg, negPooled) = (zeros_like(prompt), zeros_like(pooled));
        else if (cfg)
            (neg, negPooled) = sd.EncodePromptXl(s.NegativePrompt ?? "", s.NegativePrompt2, 0, out _);
        if (neg is not null && !neg.shape[1..].SequenceEqual(prompt.shape[1..]))
            throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", neg.shape)}] but the prompt embeddings [{string.Join(",", prompt.shape)}]; they must match");
        if (negPooled is not null && negPooled.shape[1] != pooled.shape[1])
            throw new PagSharpException($"negative pooled prompt embeddings have width {negPooled.shape[1]} but the pooled prompt embeddings {pooled.shape[1]}; they must match");
        return new Texts(prompt, neg, pooled, negPooled);
    }

    /// <summary>Pooled embeddings [1 or count, P] from a tensor spec.</summary>
    private static Tensor LoadPooled(string spec, string option, int count)
    {
        var t = TensorSpec.Load(spec);
        if (!t.is_floating_point()) throw new PagSharpException($"{option} '{spec}' holds {t.dtype} values; expected floating-point embeddings");
        if (t.dim() == 1) t = t.unsqueeze(0);
        if (t.dim() != 2 || (t.shape[0] != 1 && t.shape[0] != count))
            throw new PagSharpException($"{option} '{spec}' has shape [{string.Join(",", t.shape)}]; expected [1,P] or [{count},P] (one row, or one per image)");
        return t.to_type(ScalarType.Float32);
    }

    private static bool IsTensorSpec(string spec) => Path.GetExtension(spec.Split(':')[0]).ToLowerInvariant() is not (".png" or ".jpg" or ".jpeg")
        || !File.Exists(spec) && spec.Contains(':');

    private static Tensor LoadImageTensor(string spec)
    {
        var t = TensorSpec.Load(spec);
        if (!t.is_floating_point()) throw new PagSharpException($"--image '{spec}' holds {t.dtype} values; expected floating-point values (pixels in [0, 1], or latents)");
        if (t.dim() == 3) t = t.unsqueeze(0);
        if (t.dim() != 4) throw new PagSharpException($"--image '{spec}' has shape [{string.Join(",", t.shape)}]; expected [N,3,H,W] (pixels) or [N,C,h,w] (latents)");
        return t.to_type(ScalarType.Float32);
    }

    /// <summary>A tensor image checked against the model: 3 channels (pixels at the generation size) or the latent channels.</summary>
    private static Tensor CheckTensorImage(Tensor t, string spec, Txt2ImgSettings s, StableDiffusion sd)
    {
        long c = sd.Unet.Config.OutChannels;
        if (t.shape[1] != 3 && t.shape[1] != c)
            throw new PagSharpException($"--image '{spec}' has {t.shape[1]} channels; expected 3 (pixels in [0, 1]) or {c} (image latents of this model)");
        int f = t.shape[1] == 3 ? 1 : sd.VaeScaleFactor;
        if ((s.Height is { } h && h != t.shape[2] * f) || (s.Width is { } w && w != t.shape[3] * f))
            throw new PagSharpException($"--image '{spec}' gives {t.shape[3] * f}×{t.shape[2] * f} images but --width/--height ask for {s.Width ?? (int)(t.shape[3] * f)}×{s.Height ?? (int)(t.shape[2] * f)}; a tensor image must already have the generation size (give a PNG to have it resized)");
        return t.alias();
    }

    /// <summary>
    /// The inpainting mask [1 or N, 1, H, W] in [0, 1]: a PNG/JPEG converted to grey (ITU-R 601 luma, as PIL's "L") and
    /// Lanczos-resized to the image size, or a tensor at the image size; blurred with --mask-blur (before the pipeline binarises it).
    /// </summary>
    private static Tensor LoadMask(InpaintSettings s, int height, int width, int count)
    {
        string spec = s.MaskImage!;
        Tensor m;
        if (IsTensorSpec(spec))
        {
            var t = TensorSpec.Load(spec);
            if (!t.is_floating_point()) throw new PagSharpException($"--mask-image '{spec}' holds {t.dtype} values; expected floating-point values in [0, 1]");
            m = t.dim() == 2 ? t.unsqueeze(0).unsqueeze(0) : t.dim() == 3 ? t.unsqueeze(1) : t;
            m = m.to_type(ScalarType.Float32);
        }
        else
        {
            var rgb = ControlImage.Load(spec, width, height, 1);
            m = (rgb[.., 0..1] * 0.299 + rgb[.., 1..2] * 0.587 + rgb[.., 2..3] * 0.114);
        }
        if (m.dim() != 4 || m.shape[1] != 1 || m.shape[2] != height || m.shape[3] != width)
            throw new PagSharpException($"--mask-image '{spec}' has shape [{string.Join(",", m.shape)}]; the mask must be one channel at the image size: [1 or {count},1,{height},{width}]");
        if (m.shape[0] != 1 && m.shape[0] != count)
            throw new PagSharpException($"--mask-image '{spec}' holds {m.shape[0]} masks but --count is {count}; give one, or one per image");
        if (s.MaskBlur > 0)
        {
            int k = 2 * (int)Math.Ceiling(3 * s.MaskBlur) + 1;
            k = Math.Min(k, 2 * (Math.Min(height, width) / 2) - 1);
            if (k >= 3) m = GaussianBlur.Apply(m, k, s.MaskBlur);
        }
        return m;
    }

    /// <summary>diffusers' padding_mask_crop: the full image and mask, the crop region, and the crop at the generation size.</summary>
    private sealed record MaskCrop(byte[] Original, byte[] MaskL, int W, int H, (int X1, int Y1, int X2, int Y2) Region, Tensor Image, Tensor Mask)
    {
        /// <summary>Generated images [N, 3, h, w] in [0, 1] pasted back into the original: [N, 3, H, W].</summary>
        public Tensor PasteBack(Tensor images)
        {
            var rows = new List<Tensor>();
            for (int i = 0; i < images.shape[0]; i++)
            {
                var bytes = InpaintCrop.ToBytes(images[i]);
                var merged = InpaintCrop.Overlay(Original, MaskL, W, H, bytes, (int)images.shape[3], (int)images.shape[2], Region);
                rows.Add(InpaintCrop.ToTensor(merged, W, H, 3));
            }
            return cat(rows.ToArray(), 0);
        }
    }

    private static MaskCrop PrepareCrop(InpaintSettings s, int width, int height, int pad)
    {
        var rgb = Png.LoadRgb8(s.Image!, out int w, out int h);
        var maskRgb = Png.LoadRgb8(s.MaskImage!, out int mw, out int mh);
        if (mw != w || mh != h)
            throw new PagSharpException($"--mask-image '{s.MaskImage}' is {mw}×{mh} but --image is {w}×{h}; with --padding-mask-crop the mask must have the image's size");
        var maskL = InpaintCrop.Luma(maskRgb, w, h);
        var region = InpaintCrop.Region(maskL, w, h, width, height, pad);
        int cw = region.X2 - region.X1, ch = region.Y2 - region.Y1;
        var img = InpaintCrop.ToTensor(InpaintCrop.ResizeAndFill(InpaintCrop.Crop(rgb, w, 3, region), cw, ch, 3, width, height), width, height, 3);
        var m = InpaintCrop.ToTensor(InpaintCrop.ResizeAndFill(InpaintCrop.Crop(maskL, w, 1, region), cw, ch, 1, width, height), width, height, 1);
        if (s.MaskBlur > 0) m = GaussianBlur.Apply(m, Math.Min(2 * (int)Math.Ceiling(3 * s.MaskBlur) + 1, 2 * (Math.Min(height, width) / 2) - 1), s.MaskBlur);
        AnsiConsole.MarkupLine($"padding mask crop: region x {region.X1}..{region.X2}, y {region.Y1}..{region.Y2} of the {w}×{h} image, inpainted at {width}×{height}");
        return new MaskCrop(rgb, maskL, w, h, region, img, m);
    }

    /// <summary>The input-image column of a comparison grid ([count, 3, H, W] in [0, 1]); image latents are decoded.</summary>
    private static Tensor InputColumn(StableDiffusion sd, Tensor image, int count)
    {
        var idx = Enumerable.Range(0, count).ToArray();
        var img = image.shape[1] == 3 ? image.clamp(0, 1) : sd.Decode(image);
        return Rows(img, idx);
    }

    private static Tensor Encode(StableDiffusion sd, string prompt, int clipSkip)
    {
        var e = sd.EncodePrompt(prompt, clipSkip, out var warning);
        if (warning is not null) AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(warning)}");
        return e;
    }

    /// <summary>Embeddings [1 or count, S, D] from a tensor spec, checked against the UNet.</summary>
    private static Tensor LoadEmbeds(string spec, string option, StableDiffusion sd, int count)
    {
        var t = TensorSpec.Load(spec);
        if (!t.is_floating_point()) throw new PagSharpException($"{option} '{spec}' holds {t.dtype} values; expected floating-point embeddings");
        t = t.to_type(ScalarType.Float32);
        long d = sd.Unet.Config.CrossAttentionDim[0];
        if (t.dim() == 2) t = t.unsqueeze(0);
        if (t.dim() != 3 || t.shape[2] != d || (t.shape[0] != 1 && t.shape[0] != count))
            throw new PagSharpException($"{option} '{spec}' has shape [{string.Join(",", t.shape)}]; this model expects [1,S,{d}] or [{count},S,{d}] (cross_attention_dim {d}; one row, or one per image)");
        return t;
    }

    private static Tensor Rows(Tensor emb, int[] idx) =>
        emb.shape[0] == 1 ? emb.expand(Enumerable.Repeat(-1L, (int)emb.dim()).Select((v, i) => i == 0 ? idx.Length : v).ToArray()).contiguous()
                          : emb.narrow(0, idx[0], idx.Length);

    /// <summary>The ControlNet, checked against the model's UNet (latent channels, cross-attention width, residuals).</summary>
    private static SdControlNet LoadControlNet(string path, StableDiffusion sd)
    {
        var net = SdControlNet.Load(path);
        try
        {
            string cfg = Directory.Exists(path) ? Path.Combine(path, "config.json") : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "config.json");
            net.Config.CheckFits(sd.Unet.Config, cfg, Path.Combine(sd.Folder.Root, "unet", "config.json"));
            if (net.Config.ConditioningFactor != sd.VaeScaleFactor)
                throw new PagSharpException($"{cfg}: conditioning_embedding_out_channels downsample the control image by {net.Config.ConditioningFactor} but the model's VAE scale factor is {sd.VaeScaleFactor}; this ControlNet does not belong to {sd.Folder.Root}");
            return net;
        }
        catch
        {
            net.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The control image as [1 or N, C, H, W] float32: a PNG/JPEG prepared as diffusers does (RGB, Lanczos-resized to
    /// --width/--height when given, else the image's size rounded down to the VAE scale factor, values 0..1), or a
    /// tensor at the generation size, used as it is.
    /// </summary>
    private static Tensor LoadControlImage(Txt2ImgSettings s, StableDiffusion sd, SdControlNet net)
    {
        string spec = s.ControlImage!;
        int f = sd.VaeScaleFactor, cc = net.Config.ConditioningChannels;
        string ext = Path.GetExtension(spec).ToLowerInvariant();
        bool tensorSpec = ext is not (".png" or ".jpg" or ".jpeg");
        Tensor img;
        if (tensorSpec)
        {
            if (s.Canny) throw new PagSharpException($"--canny takes edges of a PNG/JPEG photo; '{spec}' is a tensor");
            var t = TensorSpec.Load(spec);
            if (!t.is_floating_point()) throw new PagSharpException($"--control-image '{spec}' holds {t.dtype} values; expected floating-point values (0..1)");
            img = t.dim() == 3 ? t.unsqueeze(0) : t;
            img = img.to_type(ScalarType.Float32);
            if (img.dim() != 4 || img.shape[1] != cc)
                throw new PagSharpException($"--control-image '{spec}' has shape [{string.Join(",", t.shape)}]; this ControlNet expects [1 or N,{cc},H,W] (conditioning_channels {cc})");
            if ((s.Height is { } h && h != img.shape[2]) || (s.Width is { } w && w != img.shape[3]))
                throw new PagSharpException($"--control-image '{spec}' is {img.shape[3]}×{img.shape[2]} but --width/--height ask for {s.Width ?? (int)img.shape[3]}×{s.Height ?? (int)img.shape[2]}; a tensor control image must already have the generation size (give a PNG to have it resized)");
            if (img.shape[2] % f != 0 || img.shape[3] % f != 0)
                throw new PagSharpException($"--control-image '{spec}' is {img.shape[3]}×{img.shape[2]}; the generation size must be a multiple of the VAE scale factor {f}");
        }
        else
        {
            if (cc != 3)
                throw new PagSharpException($"this ControlNet takes {cc}-channel control images (conditioning_channels {cc}); a PNG gives 3 (RGB): give a prepared tensor [1,{cc},H,W] instead");
            img = ControlImage.Load(spec, s.Width, s.Height, f, s.Canny ? ControlPreprocessor.Canny : ControlPreprocessor.None, s.CannyLow, s.CannyHigh);
        }
        sd.CheckSize((int)img.shape[2], (int)img.shape[3]);
        return img;
    }
}
