using PagSharp.Models.Sd;
using PagSharp.Denoisers;
using PagSharp.Guidance;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Sampling;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>What a Stable Diffusion call needs from the folder.</summary>
/// <param name="Vae">Decode to pixels.</param>
/// <param name="TextEncoder">Encode prompts (tokenizer and text encoder).</param>
/// <param name="UnetType">The type the U-Net's weights are held and computed in (float32, bfloat16, float16): built
/// in that type and filled from the file without a float32 copy, so fp16 files stay half-sized in memory.</param>
public sealed record SdComponents(bool Vae, bool TextEncoder, ScalarType UnetType = ScalarType.Float32);

/// <summary>
/// The loaded components of a diffusers Stable Diffusion folder and the text-to-image steps of diffusers'
/// <c>StableDiffusionPAGPipeline</c> around the denoising loop: prompt encoding (<c>encode_prompt</c>), initial
/// latents, and decoding (<c>vae.decode(latents / scaling_factor)</c>, then (x/2 + 0.5).clamp(0, 1)).
/// </summary>
public sealed partial class StableDiffusion : IDisposable
{
    public required DiffusersFolder Folder { get; init; }
    public required SdUNet Unet { get; init; }
    public AutoencoderKL? Vae { get; init; }
    public ClipTextModel? TextEncoder { get; init; }
    public ClipTokenizer? Tokenizer { get; init; }
    /// <summary>SDXL's second text encoder (CLIPTextModelWithProjection), when loaded.</summary>
    public ClipTextModel? TextEncoder2 { get; init; }
    /// <summary>SDXL's second tokenizer, when loaded.</summary>
    public ClipTokenizer? Tokenizer2 { get; init; }
    public required SchedulerConfig Scheduler { get; init; }

    /// <summary>The device the U-Net is on (see <see cref="ToDevice"/>); what the pipeline makes follows it.</summary>
    public Device Device => Unet.parameters().First().device;

    /// <summary>Moves every loaded network (U-Net, guide, VAE, text encoders) to <paramref name="device"/>.</summary>
    public void ToDevice(Device device)
    {
        Unet.to(device);
        Guide?.to(device);
        Vae?.to(device);
        TextEncoder?.to(device);
        TextEncoder2?.to(device);
    }

    /// <summary>An SDXL model (its U-Net takes pooled embeddings and time ids).</summary>
    public bool IsXl => Unet.Config.UsesTextTime;

    /// <summary>
    /// The scheduler settings of ControlNet runs: scheduler_config.json without the StableDiffusionPipeline
    /// fix-ups, as diffusers' ControlNet pipelines (so a folder with steps_offset 0 keeps it). Null: <see cref="Scheduler"/>.
    /// </summary>
    public SchedulerConfig? ControlNetScheduler { get; init; }

    /// <summary>The folder's VAE config (read even when the VAE weights are not loaded), or null when it has no VAE.</summary>
    public SdVaeConfig? VaeConfig { get; init; }

    /// <summary>Pixels per latent: 2^(VAE levels − 1), or 8 for a folder without a VAE (as diffusers).</summary>
    public int VaeScaleFactor => (Vae?.Config ?? VaeConfig)?.ScaleFactor ?? 8;

    /// <summary>Default image size: unet.sample_size · vae_scale_factor.</summary>
    public int DefaultSize => (Unet.Config.SampleSize ?? 64) * VaeScaleFactor;

    /// <summary>Loads the components <paramref name="needs"/> asks for and checks that they fit together.</summary>
    public static StableDiffusion Load(string dir, SdComponents needs) => Load(DiffusersFolder.Open(dir), needs);

    /// <summary>
    /// Loads an original single-file checkpoint (<c>.safetensors</c> or <c>.ckpt</c>; A1111/ComfyUI layout) with the
    /// architecture from <paramref name="configDir"/> — a diffusers pipeline folder holding at least the configs, as
    /// diffusers' <c>from_single_file(config=…)</c> — and the tokenizer(s) from <paramref name="tokenizerDir"/> (or the
    /// config folder). The family (SD 1.x, 2.x, SDXL base/refiner, inpainting) is detected from the keys and must
    /// match the configs; components the file lacks can be skipped with <paramref name="needs"/>.
    /// </summary>
    public static StableDiffusion LoadSingleFile(string file, string configDir, string? tokenizerDir, SdComponents needs)
    {
        var single = SdSingleFile.Open(file);
        try
        {
            var sd = Load(DiffusersFolder.ForSingleFile(single, configDir, tokenizerDir), needs);
            sd._singleFile = single;
            return sd;
        }
        catch
        {
            single.Dispose();
            throw;
        }
    }

    private SdSingleFile? _singleFile;

    /// <summary>Loads the components <paramref name="needs"/> asks for from <paramref name="folder"/> and checks that they fit together.</summary>
    public static StableDiffusion Load(DiffusersFolder folder, SdComponents needs)
    {
        string dir = folder.Root;

        // StableDiffusionPipeline forces steps_offset 1 and clip_sample false; the SDXL pipelines take the config as it is.
        var scheduler = folder.SchedulerConfig(pipelineFixups: !folder.IsXl);
        var controlScheduler = folder.SchedulerConfig(pipelineFixups: false);
        SdUNet? unet = null;
        AutoencoderKL? vae = null;
        ClipTextModel? te = null, te2 = null;
        try
        {
            unet = folder.LoadUnet(needs.UnetType);
            ClipTokenizer? tok = null;
            if (needs.Vae)
            {
                vae = folder.LoadVae();
                int lc = vae.Config.LatentChannels;
                // An inpainting UNet takes latents, mask and masked-image latents: 2·latent + 1 input channels.
                if ((unet.Config.InChannels != lc && unet.Config.InChannels != 2 * lc + 1) || unet.Config.OutChannels != lc)
                    throw new PagSharpException($"{Path.Combine(dir, "vae", "config.json")}: latent_channels {vae.Config.LatentChannels} does not match the UNet's in/out channels {unet.Config.InChannels}/{unet.Config.OutChannels} ({Path.Combine(dir, "unet", "config.json")})");
            }
            ClipTokenizer? tok2 = null;
            if (needs.TextEncoder && unet.Config.UsesTextTime)
            {
                // SDXL: both encoders (the refiner has only the second); their penultimate states are concatenated.
                if (folder.Has("text_encoder"))
                {
                    tok = folder.LoadTokenizer();
                    te = folder.LoadTextEncoder();
                }
                tok2 = folder.LoadTokenizer2();
                te2 = folder.LoadTextEncoder2();
                int width = (te?.Config.HiddenSize ?? 0) + te2.Config.HiddenSize;
                if (width != unet.Config.CrossAttentionDim[0])
                    throw new PagSharpException($"{Path.Combine(dir, "text_encoder_2", "config.json")}: the text encoders' hidden sizes ({(te is null ? "" : te.Config.HiddenSize + " + ")}{te2.Config.HiddenSize} = {width}) do not add up to the UNet's cross_attention_dim {unet.Config.CrossAttentionDim[0]} ({Path.Combine(dir, "unet", "config.json")})");
                foreach (var (t, e, name) in new[] { (tok, te, "tokenizer"), (tok2, te2, "tokenizer_2") })
                    if (t is not null && e is not null && t.VocabSize > e.Config.VocabSize)
                        throw new PagSharpException($"{Path.Combine(dir, name, "vocab.json")} has {t.VocabSize} tokens but its text encoder's vocab_size is {e.Config.VocabSize}");
            }
            else if (needs.TextEncoder)
            {
                tok = folder.LoadTokenizer();
                te = folder.LoadTextEncoder();
                if (te.Config.HiddenSize != unet.Config.CrossAttentionDim[0])
                    throw new PagSharpException($"{Path.Combine(dir, "text_encoder", "config.json")}: hidden_size {te.Config.HiddenSize} does not match the UNet's cross_attention_dim {unet.Config.CrossAttentionDim[0]} ({Path.Combine(dir, "unet", "config.json")})");
                if (tok.VocabSize > te.Config.VocabSize)
                    throw new PagSharpException($"{Path.Combine(dir, "tokenizer", "vocab.json")} has {tok.VocabSize} tokens but {Path.Combine(dir, "text_encoder", "config.json")} vocab_size is {te.Config.VocabSize}");
                if (tok.MaxLength > te.Config.MaxPositionEmbeddings)
                    throw new PagSharpException($"the tokenizer's model_max_length {tok.MaxLength} exceeds the text encoder's max_position_embeddings {te.Config.MaxPositionEmbeddings}");
            }
            var vaeConfig = vae?.Config ?? (File.Exists(Path.Combine(dir, "vae", "config.json")) && (folder.Has("vae") || folder.SingleFile is not null) ? folder.VaeConfig() : null);
            return new StableDiffusion
            {
                Folder = folder, Unet = unet, Vae = vae, VaeConfig = vaeConfig, TextEncoder = te, Tokenizer = tok,
                TextEncoder2 = te2, Tokenizer2 = tok2, Scheduler = scheduler, ControlNetScheduler = controlScheduler,
            };
        }
        catch
        {
            unet?.Dispose();
            vae?.Dispose();
            te?.Dispose();
            te2?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// SDXL's <c>encode_prompt</c> for one prompt: each encoder's <c>hidden_states[−(2 + clip_skip)]</c> (no final
    /// LayerNorm) concatenated on the last axis ([1, 77, 768 + 1280] for SDXL base), and the pooled embedding of the
    /// second encoder's projection [1, P]. <paramref name="prompt2"/> goes to the second encoder (default: the same
    /// prompt). <paramref name="warning"/> tells when a prompt was truncated.
    /// </summary>
    public (Tensor Embeds, Tensor Pooled) EncodePromptXl(string prompt, string? prompt2, int clipSkip, out string? warning)
    {
        if (!IsXl) throw new PagSharpException("EncodePromptXl is for SDXL models; use EncodePrompt");
        if (Tokenizer2 is null || TextEncoder2 is null)
            throw new PagSharpException("this call was loaded without the text encoders; give prompt embeddings and pooled prompt embeddings");
        if (clipSkip < 0) throw new PagSharpException($"ClipSkip must be ≥ 0 (got {clipSkip})");
        warning = null;
        var parts = new List<Tensor>();
        Tensor? pooled = null;
        using var _ = no_grad();
        foreach (var (tok, te, text) in new[] { (Tokenizer, TextEncoder, prompt), (Tokenizer2, TextEncoder2, prompt2 ?? prompt) })
        {
            if (tok is null || te is null) continue;
            var tokens = tok.Encode(text);
            if (tokens.Truncated)
                warning = $"The following part of your input was truncated because CLIP can only handle sequences up to {tok.MaxLength} tokens: {tokens.Dropped}";
            using var ids = tensor(tokens.Ids.Select(i => (long)i).ToArray(), device: te.parameters().First().device).unsqueeze(0);
            var (hidden, p) = te.EncodeWithPooled(ids, 1 + clipSkip);
            parts.Add(hidden);
            if (ReferenceEquals(te, TextEncoder2)) pooled = p; else p.Dispose();
        }
        var embeds = parts.Count == 1 ? parts[0] : cat(parts.ToArray(), -1);
        if (parts.Count > 1) foreach (var t in parts) t.Dispose();
        return (embeds, pooled!);
    }

    /// <summary>
    /// SDXL's added conditioning for images of <paramref name="height"/> × <paramref name="width"/>:
    /// the pooled embeddings and the time ids of <paramref name="micro"/> (see <see cref="SdXlMicroConditioning.TimeIds"/>;
    /// <paramref name="imageToImage"/> selects the img2img/inpainting rules, the folder's requires_aesthetics_score the refiner's ids).
    /// </summary>
    public SdXlConditioning XlConditioning(Tensor pooled, Tensor? negativePooled, int height, int width, SdXlMicroConditioning? micro = null, bool imageToImage = false)
    {
        var (ids, negIds) = (micro ?? new SdXlMicroConditioning()).TimeIds(height, width, imageToImage, Folder.RequiresAestheticsScore);
        return new SdXlConditioning(pooled, negativePooled, ids, negIds);
    }

    /// <summary>
    /// Prompt embeddings [1, 77, D] for <paramref name="prompt"/>: token ids padded/truncated to the tokenizer's
    /// max length, run through the text encoder (no attention mask, as SD's CLIP config has no use_attention_mask).
    /// <paramref name="warning"/> tells when the prompt was truncated and what was dropped.
    /// </summary>
    public Tensor EncodePrompt(string prompt, int clipSkip, out string? warning)
    {
        if (Tokenizer is null || TextEncoder is null)
            throw new PagSharpException("this call was loaded without the text encoder; give prompt embeddings");
        var tokens = Tokenizer.Encode(prompt);
        warning = tokens.Truncated
            ? $"The following part of your input was truncated because CLIP can only handle sequences up to {Tokenizer.MaxLength} tokens: {tokens.Dropped}"
            : null;
        using var ids = tensor(tokens.Ids.Select(i => (long)i).ToArray(), device: TextEncoder.parameters().First().device).unsqueeze(0);
        using var _ = no_grad();
        return TextEncoder.Encode(ids, clipSkip);
    }

    /// <summary>The latent shape [C, H/f, W/f] of one sample for an image of <paramref name="height"/> × <paramref name="width"/>.</summary>
    public long[] LatentShape(int height, int width)
    {
        CheckSize(height, width);
        // out_channels: the latent channels (an inpainting UNet takes 9 input channels but denoises 4).
        return new long[] { Unet.Config.OutChannels, height / VaeScaleFactor, width / VaeScaleFactor };
    }

    /// <summary>diffusers' check: height and width divisible by 8.</summary>
    public void CheckSize(int height, int width)
    {
        if (height < 8 || width < 8 || height % 8 != 0 || width % 8 != 0)
            throw new PagSharpException($"height and width must be positive multiples of 8 (got {width}×{height})");
        if (height % VaeScaleFactor != 0 || width % VaeScaleFactor != 0)
            throw new PagSharpException($"height and width must be multiples of the VAE scale factor {VaeScaleFactor} (got {width}×{height})");
    }

    /// <summary>Images in [0, 1] ([N, 3, H, W]) from final latents.</summary>
    public Tensor Decode(Tensor latents)
    {
        if (Vae is null) throw new PagSharpException("this call was loaded without the VAE; use latent output");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var device = Vae.parameters().First().device;
        // Images come back on the CPU (where they are saved).
        return AutoencoderKL.ToUnitRange(Vae.DecodeLatents(latents.device == device ? latents : latents.to(device))).cpu().MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Denoises x_T <paramref name="noise"/> and returns the final latents. <paramref name="source"/> holds the
    /// samples' generators: when it also drew x_T, stochastic schedulers continue its streams, as diffusers does
    /// with a list of per-sample generators.
    /// </summary>
    /// <remarks>With <paramref name="control"/> the run is diffusers' StableDiffusionControlNetPAGPipeline, whose scheduler is <see cref="ControlNetScheduler"/>.</remarks>
    public Tensor Denoise(string scheduler, int steps, double eta, Tensor noise, NoiseSource source, Tensor promptEmbeds, Tensor? negativeEmbeds,
                          GuidanceSettings guidance, long policySeed, Action<LoopStep>? onStep = null, CancellationToken cancellation = default,
                          SdControl? control = null, SdXlConditioning? xl = null, LoopRange? range = null)
    {
        var s = Schedulers.Create(scheduler, SchedulerFor(control), steps, eta);
        using var policyGen = new Generator((ulong)policySeed ^ 0x5bd1e995UL);
        source.Device = Device;
        if (noise.device != Device) noise = noise.to(Device);
        try
        {
            return StableDiffusionPipeline.Denoise(Unet, s, noise, promptEmbeds, negativeEmbeds, guidance, source, onStep, policyGen, cancellation, control, SchedulerFor(control), Guide, xl, null, range);
        }
        finally
        {
            (s as IDisposable)?.Dispose();
        }
    }

    /// <summary>The scheduler settings a run uses: <see cref="ControlNetScheduler"/> with a ControlNet, else <see cref="Scheduler"/>.</summary>
    /// <summary>Use Karras sigmas whatever the folder's scheduler config says (A1111/ComfyUI "Karras" samplers; <c>--karras-sigmas</c>).</summary>
    public bool KarrasSigmas { get; set; }

    /// <summary>
    /// The largest batch of <paramref name="latentShape"/> [C, h, w] latents whose U-Net step with
    /// <paramref name="guidance"/> fits the budget (<paramref name="limitBytes"/>, else the machine's available
    /// memory), from <see cref="SdMemory.ActivationBytes"/> × <see cref="Sampler.MemorySlack"/>. Throws, with the
    /// estimate and the budget, when not even one image fits; returns <paramref name="batch"/> when the budget is unknown.
    /// </summary>
    public (int FittingBatch, double PerImageBytes, double? BudgetBytes) PlanMemory(GuidanceSettings guidance, long[] latentShape, int batch, long? limitBytes = null)
    {
        int branches = 1 + (guidance.UsesCfg ? 1 : 0) + (guidance.UsesPag || guidance.UsesSag ? 1 : 0);
        bool maps = guidance.UsesSag || (guidance.UsesPag && guidance.Perturbation is not PagSharp.Attention.IdentityPerturbation) || !Unet.FusedAttention;
        double perImage = Sampler.MemorySlack * SdMemory.ActivationBytes(Unet.Config, latentShape[^2], latentShape[^1], branches, maps);
        double? budget = limitBytes ?? Runtime.MemoryBudget.AvailableBytes();
        if (budget is not { } b) return (batch, perImage, null);
        if (perImage > b)
            throw new PagSharpException($"this run needs about {Runtime.MemoryBudget.Format(perImage)} of U-Net activations for a single image " +
                $"({branches} branch{(branches > 1 ? "es" : "")}, latents {latentShape[^2]}×{latentShape[^1]}), but only {Runtime.MemoryBudget.Format(b)} is available; " +
                "use a smaller image size or fewer guidance branches");
        return ((int)Math.Max(1, Math.Min(batch, Math.Floor(b / perImage))), perImage, b);
    }

    public SchedulerConfig SchedulerFor(SdControl? control)
    {
        var c = control is null ? Scheduler : ControlNetScheduler ?? Scheduler;
        return KarrasSigmas ? c with { UseKarrasSigmas = true } : c;
    }

    /// <summary>
    /// Text to image in one call, as diffusers' <c>StableDiffusionPAGPipeline(prompt, negative_prompt, …)</c> with
    /// <c>generator=[Generator().manual_seed(s) for s in seeds]</c>: one image per seed, all in one U-Net batch.
    /// Returns images in [0, 1] ([N, 3, H, W]), or the final latents when <paramref name="decode"/> is false.
    /// </summary>
    public Tensor Generate(string prompt, IReadOnlyList<long> seeds, GuidanceSettings guidance, string? negativePrompt = null,
                           string scheduler = "ddim", int steps = 50, int? width = null, int? height = null, double eta = 0,
                           int clipSkip = 0, bool decode = true, CancellationToken cancellation = default, SdControl? control = null,
                           SdXlMicroConditioning? micro = null)
    {
        if (seeds.Count == 0) throw new PagSharpException("give at least one seed");
        // With a control image the size defaults to the image's, as diffusers' ControlNet pipelines.
        var shape = LatentShape(height ?? (control is null ? DefaultSize : (int)control.Image.shape[^2]),
                                width ?? (control is null ? DefaultSize : (int)control.Image.shape[^1]));
        using var scope = NewDisposeScope();
        int n = seeds.Count;
        var (pe, ne, xl) = EncodeForGeneration(prompt, negativePrompt, clipSkip, guidance.UsesCfg, n,
            (int)shape[1] * VaeScaleFactor, (int)shape[2] * VaeScaleFactor, micro, imageToImage: false);
        using var source = new NoiseSource(seeds);
        var xT = source.Randn(shape);
        var latents = Denoise(scheduler, steps, eta, xT, source, pe, ne, guidance, seeds[0], null, cancellation, control, xl);
        return (decode ? Decode(latents) : latents).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Prompt and negative embeddings for <paramref name="n"/> images (rows repeated), and for SDXL the added
    /// conditioning: without a negative prompt, a folder with force_zeros_for_empty_prompt gets zero negative
    /// embeddings (diffusers' SDXL rule); otherwise the negative prompt (default "") is encoded without clip skip.
    /// </summary>
    public (Tensor Prompt, Tensor? Negative, SdXlConditioning? Xl) EncodeForGeneration(string prompt, string? negativePrompt, int clipSkip, bool cfg, int n,
                                                                                     int height, int width, SdXlMicroConditioning? micro, bool imageToImage)
    {
        Tensor Rows(Tensor t) => t.expand(t.shape.Select((v, i) => i == 0 ? (long)n : v).ToArray()).contiguous();
        if (!IsXl)
        {
            var p = EncodePrompt(prompt, clipSkip, out _);
            var q = cfg ? EncodePrompt(negativePrompt ?? "", 0, out _) : null;
            return (Rows(p), q is null ? null : Rows(q), null);
        }
        var (pe, pooled) = EncodePromptXl(prompt, null, clipSkip, out _);
        Tensor? ne = null, np = null;
        if (cfg && negativePrompt is null && Folder.ForceZerosForEmptyPrompt)
            (ne, np) = (zeros_like(pe), zeros_like(pooled));
        else if (cfg)
            (ne, np) = EncodePromptXl(negativePrompt ?? "", null, 0, out _);
        var xl = XlConditioning(Rows(pooled), np is null ? null : Rows(np), height, width, micro, imageToImage);
        return (Rows(pe), ne is null ? null : Rows(ne), xl);
    }

    /// <summary>
    /// The weaker U-Net of autoguidance (<see cref="GuidanceSettings.AutoguidanceScale"/>), e.g. an earlier or smaller
    /// version of <see cref="Unet"/>; set with <see cref="LoadGuide"/>. Null = none.
    /// </summary>
    public SdUNet? Guide { get; private set; }

    /// <summary>
    /// Loads a U-Net as the autoguidance guide (replacing an earlier one): <paramref name="dir"/> is a diffusers pipeline
    /// folder (its unet/ is used) or a U-Net folder (config.json and weights). It must take and give the same latents
    /// and text conditioning as <see cref="Unet"/>.
    /// </summary>
    public void LoadGuide(string dir)
    {
        string unetConfig = Path.Combine(dir, "config.json");
        var guide = File.Exists(Path.Combine(dir, "model_index.json")) || !File.Exists(unetConfig)
            ? DiffusersFolder.Open(dir).LoadUnet()
            : SdLoader.LoadUNet(SdUNetConfig.Load(unetConfig), SdLoader.FindWeights(dir), unetConfig);
        var (a, b) = (Unet.Config, guide.Config);
        if (a.InChannels != b.InChannels || a.OutChannels != b.OutChannels || a.CrossAttentionDim[0] != b.CrossAttentionDim[0])
        {
            guide.Dispose();
            throw new PagSharpException($"the guide U-Net ({dir}) has in/out channels {b.InChannels}/{b.OutChannels} and cross_attention_dim {b.CrossAttentionDim[0]}; the model {a.InChannels}/{a.OutChannels} and {a.CrossAttentionDim[0]}");
        }
        Guide?.Dispose();
        Guide = guide;
    }

    public void Dispose()
    {
        _singleFile?.Dispose();
        Guide?.Dispose();
        Unet.Dispose();
        Vae?.Dispose();
        TextEncoder?.Dispose();
        TextEncoder2?.Dispose();
    }
}
