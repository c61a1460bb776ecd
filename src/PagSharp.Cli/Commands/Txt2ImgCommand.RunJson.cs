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

/// <summary>The settings of a Stable Diffusion run as run.json records them (resume compares them).</summary>
public sealed partial class Txt2ImgCommand
{
    private static JsonObject Settings(Txt2ImgSettings s, string mode, StableDiffusion sd, string scheduler, GuidanceSettings g, int count, int width, int height,
                                       SdControl? control, string? controlNetPath, double strength)
    {
        var o = BaseSettings(s, sd, scheduler, g, count, width, height, control);
        foreach (var (key, value) in RunManifest.Guidance(g, sd.Unet.AttentionLayers)) o[key] = value;
        // Only SDXL and editing runs carry these, so run.json of earlier runs still matches on resume.
        if (sd.IsXl)
        {
            var m = s.MicroConditioning();
            static JsonNode? Pair((int, int)? p) => p is { } v ? new JsonArray(v.Item1, v.Item2) : null;
            o["prompt_2"] = s.Prompt2;
            o["negative_prompt_2"] = s.NegativePrompt2;
            o["pooled_prompt_embeds"] = s.PooledPromptEmbeds is null ? null : FullSpec(s.PooledPromptEmbeds);
            o["negative_pooled_prompt_embeds"] = s.NegativePooledPromptEmbeds is null ? null : FullSpec(s.NegativePooledPromptEmbeds);
            o["original_size"] = Pair(m.OriginalSize);
            o["crops_coords_top_left"] = Pair(m.CropsCoordsTopLeft);
            o["target_size"] = Pair(m.TargetSize);
            o["negative_original_size"] = Pair(m.NegativeOriginalSize);
            o["negative_crops_coords_top_left"] = Pair(m.NegativeCropsCoordsTopLeft);
            o["negative_target_size"] = Pair(m.NegativeTargetSize);
            o["force_zeros_for_empty_prompt"] = sd.Folder.ForceZerosForEmptyPrompt;
            if (sd.Folder.RequiresAestheticsScore)
            {
                o["aesthetic_score"] = m.AestheticScore;
                o["negative_aesthetic_score"] = m.NegativeAestheticScore;
            }
            o["denoising_end"] = s.DenoisingEnd;
        }
        if (s.VaeTiling) o["vae_tiling"] = true;
        if (s.Embedding is { Length: > 0 }) o["embeddings"] = new JsonArray(s.Embedding.Select(e => (JsonNode)e).ToArray());
        if (s.Lora is { Length: > 0 })
            o["lora"] = new JsonArray(s.Lora.Select(l => { var (f, sc) = ParseLora(l); return (JsonNode)new JsonObject { ["file"] = Path.GetFullPath(f), ["scale"] = sc }; }).ToArray());
        if (sd.Folder.SingleFile is { } single)
        {
            o["single_file_family"] = single.Family.ToString();
            o["config"] = Path.GetFullPath(sd.Folder.Root);
            o["tokenizer"] = s.Tokenizer is null ? null : Path.GetFullPath(s.Tokenizer);
        }
        if (s is Img2ImgSettings e)
        {
            o["mode"] = mode;
            o["image"] = FullSpec(e.Image!);
            o["strength"] = strength;
            o["denoising_start"] = e.DenoisingStart;
            if (e is InpaintSettings ip)
            {
                o["mask_image"] = FullSpec(ip.MaskImage!);
                o["masked_image_latents"] = ip.MaskedImageLatents is null ? null : FullSpec(ip.MaskedImageLatents);
                o["mask_blur"] = ip.MaskBlur;
                o["padding_mask_crop"] = ip.PaddingMaskCrop;
            }
        }
        if (control is null) return o;
        // Only ControlNet runs carry these, so run.json of earlier runs still matches on resume.
        o["controlnet"] = FullSpec(controlNetPath!);
        o["control_image"] = FullSpec(s.ControlImage!);
        o["control_preprocessor"] = s.Canny ? $"canny:{s.CannyLow}:{s.CannyHigh}" : "none";
        o["controlnet_conditioning_scale"] = control.ConditioningScale;
        o["control_guidance_start"] = control.GuidanceStart;
        o["control_guidance_end"] = control.GuidanceEnd;
        o["guess_mode"] = control.EffectiveGuessMode;
        return o;
    }

    private static JsonObject BaseSettings(Txt2ImgSettings s, StableDiffusion sd, string scheduler, GuidanceSettings g, int count, int width, int height, SdControl? control) => new()
    {
        ["model"] = Path.GetFullPath(s.Model!),
        ["pipeline"] = sd.Folder.PipelineClass,
        ["prompt"] = s.Prompt,
        ["negative_prompt"] = s.NegativePrompt,
        ["prompt_embeds"] = s.PromptEmbeds is null ? null : FullSpec(s.PromptEmbeds),
        ["negative_prompt_embeds"] = s.NegativePromptEmbeds is null ? null : FullSpec(s.NegativePromptEmbeds),
        ["clip_skip"] = s.ClipSkip,
        ["scheduler"] = scheduler,
        ["dtype"] = s.Dtype,
        ["scheduler_config"] = JsonSerializer.SerializeToNode(sd.SchedulerFor(control)),
        ["num_inference_steps"] = s.Steps,
        ["eta"] = s.Eta,
        ["width"] = width,
        ["height"] = height,
        ["seed"] = s.Seed,
        ["count"] = count,
        ["batch_size"] = s.BatchSize,
        ["output_type"] = s.LatentOutput ? "latent" : "pil",
        ["init_noise"] = s.InitNoise is null ? null : FullSpec(s.InitNoise),
        ["shard"] = s.Shard ?? "0/1",
    };

    private static string FullSpec(string spec)
    {
        int colon = spec.LastIndexOf(':');
        return colon > 1 && File.Exists(spec[..colon]) ? Path.GetFullPath(spec[..colon]) + spec[colon..] : Path.GetFullPath(spec);
    }
}
