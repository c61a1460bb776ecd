using PagSharp.Guidance;
using System.ComponentModel;
using PagSharp.Attention;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using PagSharp.Pipelines;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary>Options of <c>pag txt2img</c> (diffusers' StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline arguments in kebab-case).</summary>
public class Txt2ImgSettings : CommandSettings, IPerturbedBranchOptions
{
    [CommandOption("--model <DIR>")][Description("diffusers Stable Diffusion 1.x/2.x or SDXL folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/; SDXL also text_encoder_2/, tokenizer_2/), or an original single-file checkpoint (.safetensors, .ckpt) as A1111/ComfyUI use them. SDXL is detected from model_index.json or the file's keys.")]
    public string? Model { get; init; }
    [CommandOption("--config <DIR>")][Description("With --model FILE (a single-file .safetensors/.ckpt checkpoint): a diffusers pipeline folder whose configs give the architecture (as diffusers' from_single_file(config=...)). Default: the built-in configs of the detected family (SD 1.5, SD 1.5 inpainting, SD 2.1-v, SDXL base and refiner).")]
    public string? Config { get; init; }
    [CommandOption("--tokenizer <DIR>")][Description("With --model FILE: the CLIP tokenizer (a folder with vocab.json and merges.txt, or a diffusers folder with tokenizer/ and tokenizer_2/); single files carry none.")]
    public string? Tokenizer { get; init; }
    [CommandOption("--lora <FILE[[:SCALE]]>")][Description("A LoRA to merge into the UNet and text encoders (kohya/A1111 or diffusers/PEFT keys; repeatable), at SCALE (default 1), as diffusers' load_lora_weights + fuse_lora(lora_scale=SCALE).")]
    public string[]? Lora { get; init; }
    [CommandOption("--embedding <FILE[[:TOKEN]]>")][Description("A textual-inversion embedding (A1111 emb_params, SDXL clip_l/clip_g, or diffusers format; repeatable) usable in prompts as TOKEN (default: the file name without extension), as diffusers' load_textual_inversion.")]
    public string[]? Embedding { get; init; }
    [CommandOption("--vae-tiling")][Description("Encode and decode images larger than the VAE's sample_size in overlapping tiles (diffusers' enable_tiling): memory bounded by the tile, small seam differences.")]
    public bool VaeTiling { get; init; }
    [CommandOption("--prompt <TEXT>")][Description("The prompt (truncated to 77 CLIP tokens, with a warning).")]
    public string? Prompt { get; init; }
    [CommandOption("--negative-prompt <TEXT>")][Description("Negative prompt for CFG (default: the empty prompt).")]
    public string? NegativePrompt { get; init; }
    [CommandOption("--prompt-embeds <TENSOR>")][Description("Prompt embeddings [[1 or N,S,D]] (FILE.npy or FILE.safetensors:KEY) instead of --prompt.")]
    public string? PromptEmbeds { get; init; }
    [CommandOption("--negative-prompt-embeds <TENSOR>")][Description("Negative prompt embeddings, the shape of --prompt-embeds.")]
    public string? NegativePromptEmbeds { get; init; }
    [CommandOption("--guidance-scale <W>")][Description("CFG scale (active when > 1). Default 7.5, as diffusers.")]
    public double GuidanceScale { get; init; } = 7.5;
    [CommandOption("--guidance-rescale <PHI>")][Description("diffusers' guidance_rescale in [[0, 1]] (with CFG).")]
    public double GuidanceRescale { get; init; }
    [CommandOption("--pag-scale <S>")][Description("PAG scale (0 = off). Default 3, as diffusers' StableDiffusionPAGPipeline (0 with --sag-scale).")]
    public double? PagScale { get; init; }
    [CommandOption("--sag-scale <S>")][Description("Self-Attention Guidance scale (diffusers' StableDiffusionSAGPipeline sag_scale, e.g. 0.75): eps + s*(eps_uncond - eps_degraded); instead of PAG.")]
    public double? SagScale { get; init; }
    [CommandOption("--sag-layer <NAME>")][Description("Self-attention layer whose map gives SAG's mask (default: the mid block's, as diffusers).")]
    public string? SagLayer { get; init; }
    [CommandOption("--sag-blur-sigma <SIGMA>")][Description("Sigma of SAG's Gaussian blur of the predicted latents (default 1, as diffusers).")]
    public double SagBlurSigma { get; init; } = 1.0;
    [CommandOption("--sag-kernel <K>")][Description("Odd kernel size of SAG's Gaussian blur (default 9, as diffusers).")]
    public int SagKernel { get; init; } = 9;
    [CommandOption("--pag-adaptive-scale <A>")][Description("diffusers' pag_adaptive_scale: s(t) = max(0, s - A*(1000 - t)).")]
    public double PagAdaptiveScale { get; init; }
    [CommandOption("--pag-scale-end <S>")][Description("Linear ramp of the PAG scale from --pag-scale at t = T-1 to this value at t = 0 (not in diffusers).")]
    public double? PagScaleEnd { get; init; }
    [CommandOption("--pag-interval <HI:LO>")][Description("Apply PAG only for model timesteps LO <= t <= HI, e.g. 999:500 (not in diffusers).")]
    public string? PagInterval { get; init; }
    [CommandOption("--guidance-scale-end <W>")][Description("Linear ramp of the CFG scale from --guidance-scale at t = T-1 to this value at t = 0 (not in diffusers).")]
    public double? GuidanceScaleEnd { get; init; }
    [CommandOption("--guidance-interval <HI:LO>")][Description("Apply CFG only for model timesteps LO <= t <= HI (Kynkäänniemi et al. 2024; not in diffusers).")]
    public string? GuidanceInterval { get; init; }
    [CommandOption("--guidance-start <F>")][Description("Apply CFG from this fraction of the steps on (diffusers' guider start; default 0).")]
    public double? GuidanceStart { get; init; }
    [CommandOption("--guidance-stop <F>")][Description("Apply CFG until this fraction of the steps (diffusers' guider stop; default 1).")]
    public double? GuidanceStop { get; init; }
    [CommandOption("--pag-start <F>")][Description("Apply PAG from this fraction of the steps on (default 0).")]
    public double? PagStart { get; init; }
    [CommandOption("--pag-stop <F>")][Description("Apply PAG until this fraction of the steps (default 1).")]
    public double? PagStop { get; init; }

        [CommandOption("--pag-cache-interval <N>")][Description("Approximation for speed (not in diffusers): run the perturbed branch at one step in N and reuse its direction eps - eps_perturbed at the others. Default 1 = exact PAG.")]
    public int PagCacheInterval { get; init; } = 1;
    [CommandOption("--pag-layers <SPEC>")][Description("Self-attention layers to perturb: diffusers identifiers (mid, down_blocks.1, up_blocks.0.attentions.1, regular expressions), groups input/middle/output/all, globs or exact names. Default mid.")]
    public string PagLayers { get; init; } = "mid";
    [CommandOption("--pag-layer-match <MODE>")][Description("How --pag-layers identifiers match: exact (default: literal dotted prefixes, down_blocks.1 never matches down_blocks.10; mid/down/up for mid_block/down_blocks/up_blocks) or diffusers (regular expressions searched in the names, as diffusers' pag_applied_layers, for parity).")]
    public string PagLayerMatch { get; init; } = "exact";
    [CommandOption("--perturbation <POLICY>")][Description("What the perturbed layers compute: identity (PAG), mask:R, mask-nodiag:R, noise:S, noise-logits:S, blur:S, soft:L.")]
    public string Perturbation { get; init; } = "identity";
    [CommandOption("--seg-scale <S>")][Description("Smoothed Energy Guidance (Hong 2024) as its own branch: eps + s*(eps - eps_seg), queries blurred at --seg-layers. Combines with CFG and PAG.")]
    public double? SegScale { get; init; }
    [CommandOption("--seg-blur-sigma <SIGMA>")][Description("SEG: Gaussian blur sigma of the queries in latent/pixel cells; 'inf' = the mean query (default 10, the paper's SDXL setting).")]
    public string? SegBlurSigma { get; init; }
    [CommandOption("--seg-layers <SPEC>")][Description("SEG: layers whose queries are blurred (same syntax as --pag-layers; default: the middle block).")]
    public string? SegLayers { get; init; }
    [CommandOption("--slg-scale <S>")][Description("Skip-layer guidance as its own branch: eps + s*(eps - eps_skip), with --slg-layers skipped (SD 3.5's recipe). Combines with CFG and PAG.")]
    public double? SlgScale { get; init; }
    [CommandOption("--slg-layers <SPEC>")][Description("SLG: attention layers to skip (same syntax as --pag-layers; default: the middle block).")]
    public string? SlgLayers { get; init; }
    [CommandOption("--slg-skip <WHAT>")][Description("SLG: what is skipped at each layer: attention (the self-attention, default), block (the whole transformer block: self-attention, cross-attention, feed-forward; the same on ADM) or resblock (the ResBlock feeding the layer in its block, which then outputs its skip connection; the attention runs normally).")]
    public string? SlgSkip { get; init; }
    [CommandOption("--slg-start <F>")][Description("Apply SLG from this fraction of the steps on (default 0.01, SD 3.5).")]
    public double? SlgStart { get; init; }
    [CommandOption("--slg-stop <F>")][Description("Apply SLG until this fraction of the steps (default 0.2, SD 3.5).")]
    public double? SlgStop { get; init; }
    [CommandOption("--guidance-model <DIR>")][Description("Autoguidance: a weaker version of the model (same latents and text encoder; e.g. an earlier fine-tune) to guide with: a diffusers pipeline folder (its unet/) or a U-Net folder.")]
    public string? GuidanceModel { get; init; }
    [CommandOption("--autoguidance-scale <S>")][Description("Autoguidance scale s (Karras et al. 2024): eps + s*(eps - eps_guide); needs --guidance-model. Combines with CFG, PAG, SEG and SLG.")]
    public double? AutoguidanceScale { get; init; }
    [CommandOption("--autoguidance-start <F>")][Description("Apply autoguidance from this fraction of the steps on (default 0).")]
    public double? AutoguidanceStart { get; init; }
    [CommandOption("--autoguidance-stop <F>")][Description("Apply autoguidance until this fraction of the steps (default 1).")]
    public double? AutoguidanceStop { get; init; }
    [CommandOption("--apg")][Description("Adaptive Projected Guidance instead of the plain CFG combination (Sadat et al. 2024; diffusers' AdaptiveProjectedGuidance); scale from --guidance-scale.")]
    public bool Apg { get; init; }
    [CommandOption("--apg-eta <E>")][Description("APG: weight of the update's component parallel to the conditional prediction (default 1, as diffusers; the paper uses 0).")]
    public double ApgEta { get; init; } = 1.0;
    [CommandOption("--apg-norm-threshold <R>")][Description("APG: cap on the norm of the update (default 15, as diffusers; 0 = no cap).")]
    public double ApgNormThreshold { get; init; } = 15.0;
    [CommandOption("--apg-momentum <B>")][Description("APG: momentum of the update (default none; the paper uses -0.5).")]
    public double? ApgMomentum { get; init; }
    [CommandOption("--cfg-zero-star")][Description("CFG-Zero* (Fan et al. 2025; diffusers' ClassifierFreeZeroStarGuidance): optimised scale of the unconditional prediction, and the first --zero-init-steps steps predict zero.")]
    public bool CfgZeroStar { get; init; }
    [CommandOption("--zero-init-steps <N>")][Description("CFG-Zero*: steps whose prediction is zeroed (default 1).")]
    public int ZeroInitSteps { get; init; } = 1;

    /// <summary>The APG settings these options mean, or null.</summary>
    public ApgSettings? BuildApg() => Apg ? ApgFromOptions() : null;
    /// <summary>APG settings from --apg-eta/--apg-norm-threshold/--apg-momentum (for --apg, and apg:W comparison columns).</summary>
    public ApgSettings ApgFromOptions() => new() { Eta = ApgEta, NormThreshold = ApgNormThreshold, Momentum = ApgMomentum };
    [CommandOption("--split-batch")][Description("Run the guidance branches (uncond, cond, perturbed) of a step as separate UNet calls instead of one batch: the same result, less peak memory (SDXL at 1024² with CFG+PAG needs it on a 24 GB machine), no shared prefix.")]
    public bool SplitBatch { get; init; }
    [CommandOption("--no-shared-prefix")][Description("Run the perturbed branch as a full pass instead of forking it at the first perturbed layer.")]
    public bool NoSharedPrefix { get; init; }
    [CommandOption("--steps|--num-inference-steps <N>")][Description("Denoising steps. Default 50.")]
    public int Steps { get; init; } = 50;
    [CommandOption("--scheduler <NAME>")][Description("ddpm, ddim, euler, euler-a, dpmpp-2m or unipc (diffusers semantics, settings from scheduler/scheduler_config.json). Default: the folder's own when it is one of these, else ddim.")]
    public string? Scheduler { get; init; }
    [CommandOption("--device <DEVICE>")][Description("cpu (default), cuda or cuda:N. CUDA needs a TorchSharp CUDA backend; this build ships the CPU one, and only cpu is tested here. Noise is drawn on the CPU from each image's seed and moved, as diffusers does with CPU generators.")]
    public string Device { get; init; } = "cpu";
    [CommandOption("--dtype <TYPE>")][Description("Type the U-Net (and ControlNet) compute in: float32 (default), bfloat16, float16; text encoder, VAE, guidance and scheduler stay float32.")]
    public string Dtype { get; init; } = "float32";
    [CommandOption("--karras-sigmas")][Description("Karras noise levels (use_karras_sigmas) for euler, dpmpp-2m and unipc, as \"DPM++ 2M Karras\" in A1111/ComfyUI. A folder whose scheduler config sets use_karras_sigmas uses them without this flag.")]
    public bool KarrasSigmas { get; init; }
    [CommandOption("--eta <ETA>")][Description("DDIM eta (0 = deterministic).")]
    public double Eta { get; init; }
    [CommandOption("--width <W>")][Description("Image width (multiple of 8). Default unet sample_size × VAE scale factor.")]
    public int? Width { get; init; }
    [CommandOption("--height <H>")][Description("Image height (multiple of 8).")]
    public int? Height { get; init; }
    [CommandOption("--clip-skip <K>")][Description("Encode the prompt with the text encoder's output K layers before the last (diffusers' clip_skip; the negative prompt is encoded in full, as diffusers).")]
    public int ClipSkip { get; init; }
    [CommandOption("--seed <N>")][Description("Run seed; sample i uses seed + i (= diffusers with generator=[[Generator().manual_seed(seed + i) ...]]).")]
    public long Seed { get; init; }
    [CommandOption("--count <N>")][Description("Number of images (default 4, or the batch of --init-noise).")]
    public int? Count { get; init; }
    [CommandOption("--batch-size <N>")][Description("Images per U-Net batch. Default 4.")]
    public int BatchSize { get; init; } = 4;
    [CommandOption("--output <DIR>")][Description("Output folder (default out/<command>: out/txt2img, out/img2img, out/inpaint).")]
    public string? Output { get; init; }

    [CommandOption("--prompt-2 <TEXT>")][Description("SDXL: the prompt for the second text encoder (default: --prompt).")]
    public string? Prompt2 { get; init; }
    [CommandOption("--negative-prompt-2 <TEXT>")][Description("SDXL: the negative prompt for the second text encoder (default: --negative-prompt).")]
    public string? NegativePrompt2 { get; init; }
    [CommandOption("--pooled-prompt-embeds <TENSOR>")][Description("SDXL: pooled prompt embeddings [[1 or N,P]] (with --prompt-embeds).")]
    public string? PooledPromptEmbeds { get; init; }
    [CommandOption("--negative-pooled-prompt-embeds <TENSOR>")][Description("SDXL: negative pooled prompt embeddings [[1 or N,P]] (with --negative-prompt-embeds).")]
    public string? NegativePooledPromptEmbeds { get; init; }
    [CommandOption("--original-size <H,W>")][Description("SDXL micro-conditioning original_size, height first (default: the generation size).")]
    public string? OriginalSize { get; init; }
    [CommandOption("--crops-coords-top-left <TOP,LEFT>")][Description("SDXL micro-conditioning crops_coords_top_left (default 0,0).")]
    public string? CropsCoordsTopLeft { get; init; }
    [CommandOption("--target-size <H,W>")][Description("SDXL micro-conditioning target_size, height first (default: the generation size).")]
    public string? TargetSize { get; init; }
    [CommandOption("--negative-original-size <H,W>")][Description("SDXL: original_size of the unconditional branch (txt2img: used together with --negative-target-size).")]
    public string? NegativeOriginalSize { get; init; }
    [CommandOption("--negative-crops-coords-top-left <TOP,LEFT>")][Description("SDXL: crops_coords_top_left of the unconditional branch (default 0,0).")]
    public string? NegativeCropsCoordsTopLeft { get; init; }
    [CommandOption("--negative-target-size <H,W>")][Description("SDXL: target_size of the unconditional branch.")]
    public string? NegativeTargetSize { get; init; }
    [CommandOption("--aesthetic-score <A>")][Description("SDXL refiner (requires_aesthetics_score): aesthetic score of the conditional branch (default 6).")]
    public double AestheticScore { get; init; } = 6.0;
    [CommandOption("--negative-aesthetic-score <A>")][Description("SDXL refiner: aesthetic score of the unconditional branch (default 2.5).")]
    public double NegativeAestheticScore { get; init; } = 2.5;
    [CommandOption("--denoising-end <F>")][Description("SDXL: stop once the timesteps fall below (1 - F)·T, to hand the latents to a refiner (use with --output-type latent).")]
    public double? DenoisingEnd { get; init; }

    /// <summary>The SDXL micro-conditioning these options give.</summary>
    public SdXlMicroConditioning MicroConditioning() => new()
    {
        OriginalSize = ParsePair(OriginalSize, "--original-size", true),
        CropsCoordsTopLeft = ParsePair(CropsCoordsTopLeft, "--crops-coords-top-left", false) ?? (0, 0),
        TargetSize = ParsePair(TargetSize, "--target-size", true),
        NegativeOriginalSize = ParsePair(NegativeOriginalSize, "--negative-original-size", true),
        NegativeCropsCoordsTopLeft = ParsePair(NegativeCropsCoordsTopLeft, "--negative-crops-coords-top-left", false) ?? (0, 0),
        NegativeTargetSize = ParsePair(NegativeTargetSize, "--negative-target-size", true),
        AestheticScore = AestheticScore,
        NegativeAestheticScore = NegativeAestheticScore,
    };

    /// <summary>The SDXL-only options that were given (for the error on other models).</summary>
    public IEnumerable<string> XlOnlyOptions()
    {
        if (Prompt2 is not null) yield return "--prompt-2";
        if (NegativePrompt2 is not null) yield return "--negative-prompt-2";
        if (PooledPromptEmbeds is not null) yield return "--pooled-prompt-embeds";
        if (NegativePooledPromptEmbeds is not null) yield return "--negative-pooled-prompt-embeds";
        if (OriginalSize is not null) yield return "--original-size";
        if (CropsCoordsTopLeft is not null) yield return "--crops-coords-top-left";
        if (TargetSize is not null) yield return "--target-size";
        if (NegativeOriginalSize is not null) yield return "--negative-original-size";
        if (NegativeCropsCoordsTopLeft is not null) yield return "--negative-crops-coords-top-left";
        if (NegativeTargetSize is not null) yield return "--negative-target-size";
        if (DenoisingEnd is not null) yield return "--denoising-end";
    }

    /// <summary>"A,B" as two integers (sizes ≥ 1 when <paramref name="size"/>, crop offsets ≥ 0), or null.</summary>
    public static (int, int)? ParsePair(string? text, string option, bool size)
    {
        if (text is null) return null;
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length == 2 && int.TryParse(parts[0], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int a)
            && int.TryParse(parts[1], System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out int b)
            && (size ? a >= 1 && b >= 1 : a >= 0 && b >= 0))
            return (a, b);
        throw new PagSharpException(size ? $"{option} '{text}' must be HEIGHT,WIDTH with two integers ≥ 1 (diffusers' order, height first), e.g. 1024,1024"
                                         : $"{option} '{text}' must be TOP,LEFT with two integers ≥ 0, e.g. 0,0");
    }
    [CommandOption("--output-type <TYPE>")][Description("pil (PNG images, default) or latent (final latents as .npy; the VAE is not needed).")]
    public string OutputType { get; init; } = "pil";
    [CommandOption("--init-noise <TENSOR>")][Description("Initial latents [[N,C,H/8,W/8]] (FILE.npy or FILE.safetensors:KEY), as diffusers' latents argument.")]
    public string? InitNoise { get; init; }
    [CommandOption("--save-tensor <FILE>")][Description("Also save float32 .npy: final latents, or the images in [[0, 1]] ([[N,3,H,W]]) with pixel output.")]
    public string? SaveTensor { get; init; }
    [CommandOption("--shard <K/N>")][Description("Produce only shard K (0-based) of N: batches b with b mod N = K.")]
    public string? Shard { get; init; }

    [CommandOption("--controlnet <PATH>")][Description("diffusers ControlNet (SD 1.x/2.x): a folder with config.json and diffusion_pytorch_model.safetensors, or such a weight file with config.json beside it, or an original ControlNet single file (control_model.*) with config.json beside it or the built-in SD 1.5 ControlNet config (default with --control-image: the model folder's controlnet/, as in a StableDiffusionControlNetPipeline folder). Needs --control-image. Runs as diffusers' StableDiffusionControlNetPAGPipeline (the control image goes to every branch; PAG perturbs only the U-Net).")]
    public string? ControlNet { get; init; }
    [CommandOption("--control-image <FILE>")][Description("Control image: PNG/JPEG (converted to RGB, resized with Lanczos to the generation size, values 0..1, as diffusers), or a prepared tensor [[1 or N,C,H,W]] (FILE.npy or FILE.safetensors:KEY) at the generation size. The generation size defaults to the image's (rounded down to the VAE scale factor).")]
    public string? ControlImage { get; init; }
    [CommandOption("--controlnet-scale|--controlnet-conditioning-scale <S>")][Description("controlnet_conditioning_scale: the ControlNet residuals are multiplied by S. Defaults as diffusers' pipelines: 1 (txt2img), 0.5 (inpaint), 0.8 (SDXL img2img).")]
    public double? ControlNetScale { get; init; }
    [CommandOption("--canny")][Description("Use the Canny edges of --control-image (an ordinary photo) instead of the image itself.")]
    public bool Canny { get; init; }
    [CommandOption("--canny-low <T>")][Description("Canny low threshold (default 100, as cv2.Canny(image, 100, 200)).")]
    public double CannyLow { get; init; } = 100;
    [CommandOption("--canny-high <T>")][Description("Canny high threshold (default 200).")]
    public double CannyHigh { get; init; } = 200;
    [CommandOption("--control-guidance-start <F>")][Description("Fraction of the steps after which the ControlNet starts (default 0).")]
    public double ControlGuidanceStart { get; init; }
    [CommandOption("--control-guidance-end <F>")][Description("Fraction of the steps after which the ControlNet stops (default 1).")]
    public double ControlGuidanceEnd { get; init; } = 1;
    [CommandOption("--guess-mode")][Description("diffusers' guess_mode: residuals scaled 0.1 → 1 from shallow to deep; with CFG the ControlNet feeds only the conditional branches.")]
    public bool GuessMode { get; init; }

    [CommandOption("--compare <METHODS>")][Description("Instead of single images, write OUTPUT/compare.png: rows = seeds (--count), columns = the control image (with --controlnet), then each method, all from the same noise. Methods: none, cfg:W, pag:S, sag:S, seg:S, slg:S, apg:W, cfgzero:W and + combinations such as cfg:W+pag:S (diffusers' guidance_scale / pag_scale), e.g. none,cfg:7.5,pag:3,cfg:7.5+pag:3,cfg:7.5+seg:3.")]
    public string? Compare { get; init; }

    public bool LatentOutput => OutputType switch
    {
        "latent" => true,
        "pil" or "png" => false,
        _ => throw new PagSharpException($"unknown --output-type '{OutputType}'; valid: pil, latent"),
    };

    /// <summary>The guidance these options mean for a U-Net with the given self-attention layers.</summary>
    public GuidanceSettings BuildGuidance(IReadOnlyList<AttentionLayerInfo> layers, double? guidanceScale = null, double? pagScale = null, double? sagScale = null,
                                          double? segScale = null, double? slgScale = null)
    {
        double? sagS = sagScale ?? SagScale;
        bool sag = sagS is > 0;
        if (sagScale is null && sag && PagScale is > 0) throw new PagSharpException("--sag-scale and --pag-scale are alternatives: give one of them");
        double pag = pagScale ?? PagScale ?? (sag ? 0 : 3);
        if (double.IsNaN(pag) || double.IsInfinity(pag) || pag < 0) throw new PagSharpException($"PAG scale must be a finite number ≥ 0 (got {pag}); 0 disables PAG");
        if (PagScaleEnd is not null && PagAdaptiveScale != 0) throw new PagSharpException("give --pag-scale-end or --pag-adaptive-scale, not both");
        var g = new GuidanceSettings
        {
            GuidanceScale = guidanceScale ?? GuidanceScale,
            GuidanceRescale = GuidanceRescale,
            PagScale = pag <= 0 ? null
                : PagScaleEnd is double e ? new ScaleSchedule.Linear(pag, e)
                : PagAdaptiveScale != 0 ? new ScaleSchedule.Adaptive(pag, PagAdaptiveScale)
                : new ScaleSchedule.Constant(pag),
            PagInterval = GuidanceOptionSettings.ParseInterval(PagInterval, "--pag-interval"),
            GuidanceSchedule = GuidanceScaleEnd is double we ? new ScaleSchedule.Linear(guidanceScale ?? GuidanceScale, we) : null,
            GuidanceInterval = GuidanceOptionSettings.ParseInterval(GuidanceInterval, "--guidance-interval"),
            Perturbation = PerturbationSpec.Parse(Perturbation),
            PagLayers = pag > 0 ? DiffusersLayerSpec.Resolve(PagLayers, layers, PagLayerMatch switch
            {
                "exact" => LayerMatch.Exact,
                "diffusers" => LayerMatch.Diffusers,
                _ => throw new PagSharpException($"--pag-layer-match '{PagLayerMatch}': valid: exact, diffusers"),
            }) : Array.Empty<string>(),
            SharedPrefix = !NoSharedPrefix,
            SplitBatch = SplitBatch,
            PagCacheInterval = PagCacheInterval,
            Apg = BuildApg(),
            CfgZeroStar = CfgZeroStar,
            ZeroInitSteps = ZeroInitSteps,
            GuidanceSteps = GuidanceOptionSettings.StepWindow(GuidanceStart, GuidanceStop),
            PagSteps = GuidanceOptionSettings.StepWindow(PagStart, PagStop),
            AutoguidanceScale = AutoguidanceScale is double a && a != 0 ? new ScaleSchedule.Constant(a) : null,
            AutoguidanceSteps = GuidanceOptionSettings.StepWindow(AutoguidanceStart, AutoguidanceStop),
            Perturbed = this.BuildPerturbed(spec => DiffusersLayerSpec.Resolve(spec, layers, LayerMatch.Exact), "mid", segScale, slgScale),
            Sag = !sag || pag > 0 ? null : new SagSettings
            {
                Scale = new ScaleSchedule.Constant(sagS!.Value),
                Layer = SagLayer is null ? null : DiffusersLayerSpec.Resolve(SagLayer, layers) is [var one] ? one
                    : throw new PagSharpException($"--sag-layer '{SagLayer}' must name exactly one self-attention layer"),
                BlurSigma = SagBlurSigma,
                KernelSize = SagKernel,
            },
        };
        g.Validate();
        return g;
    }
}
