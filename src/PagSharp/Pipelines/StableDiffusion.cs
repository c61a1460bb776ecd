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
public sealed record SdComponents(bool Vae, bool TextEncoder);

/// <summary>
/// The loaded components of a diffusers Stable Diffusion folder and the text-to-image steps of diffusers'
/// <c>StableDiffusionPAGPipeline</c> around the denoising loop: prompt encoding (<c>encode_prompt</c>), initial
/// latents, and decoding (<c>vae.decode(latents / scaling_factor)</c>, then (x/2 + 0.5).clamp(0, 1)).
/// </summary>
public sealed class StableDiffusion : IDisposable
{
    public required DiffusersFolder Folder { get; init; }
    public required SdUNet Unet { get; init; }
    public AutoencoderKL? Vae { get; init; }
    public ClipTextModel? TextEncoder { get; init; }
    public ClipTokenizer? Tokenizer { get; init; }
    public required SchedulerConfig Scheduler { get; init; }

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
    public static StableDiffusion Load(string dir, SdComponents needs)
    {
        var folder = DiffusersFolder.Open(dir);
        var scheduler = folder.SchedulerConfig();
        var controlScheduler = folder.SchedulerConfig(pipelineFixups: false);
        SdUNet? unet = null;
        AutoencoderKL? vae = null;
        ClipTextModel? te = null;
        try
        {
            unet = folder.LoadUnet();
            ClipTokenizer? tok = null;
            if (needs.Vae)
            {
                vae = folder.LoadVae();
                if (vae.Config.LatentChannels != unet.Config.InChannels || vae.Config.LatentChannels != unet.Config.OutChannels)
                    throw new PagSharpException($"{Path.Combine(dir, "vae", "config.json")}: latent_channels {vae.Config.LatentChannels} does not match the UNet's in/out channels {unet.Config.InChannels}/{unet.Config.OutChannels} ({Path.Combine(dir, "unet", "config.json")})");
            }
            if (needs.TextEncoder)
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
            var vaeConfig = vae?.Config ?? (folder.Has("vae") && File.Exists(Path.Combine(dir, "vae", "config.json")) ? folder.VaeConfig() : null);
            return new StableDiffusion { Folder = folder, Unet = unet, Vae = vae, VaeConfig = vaeConfig, TextEncoder = te, Tokenizer = tok, Scheduler = scheduler, ControlNetScheduler = controlScheduler };
        }
        catch
        {
            unet?.Dispose();
            vae?.Dispose();
            te?.Dispose();
            throw;
        }
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
        using var ids = tensor(tokens.Ids.Select(i => (long)i).ToArray()).unsqueeze(0);
        using var _ = no_grad();
        return TextEncoder.Encode(ids, clipSkip);
    }

    /// <summary>The latent shape [C, H/f, W/f] of one sample for an image of <paramref name="height"/> × <paramref name="width"/>.</summary>
    public long[] LatentShape(int height, int width)
    {
        CheckSize(height, width);
        return new long[] { Unet.Config.InChannels, height / VaeScaleFactor, width / VaeScaleFactor };
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
        return AutoencoderKL.ToUnitRange(Vae.DecodeLatents(latents)).MoveToOuterDisposeScope();
    }

    /// <summary>
    /// Denoises x_T <paramref name="noise"/> and returns the final latents. <paramref name="source"/> holds the
    /// samples' generators: when it also drew x_T, stochastic schedulers continue its streams, as diffusers does
    /// with a list of per-sample generators.
    /// </summary>
    /// <remarks>With <paramref name="control"/> the run is diffusers' StableDiffusionControlNetPAGPipeline, whose scheduler is <see cref="ControlNetScheduler"/>.</remarks>
    public Tensor Denoise(string scheduler, int steps, double eta, Tensor noise, NoiseSource source, Tensor promptEmbeds, Tensor? negativeEmbeds,
                          GuidanceSettings guidance, long policySeed, Action<LoopStep>? onStep = null, CancellationToken cancellation = default,
                          SdControl? control = null)
    {
        var s = Schedulers.Create(scheduler, SchedulerFor(control), steps, eta);
        using var policyGen = new Generator((ulong)policySeed ^ 0x5bd1e995UL);
        try
        {
            return StableDiffusionPipeline.Denoise(Unet, s, noise, promptEmbeds, negativeEmbeds, guidance, source, onStep, policyGen, cancellation, control, SchedulerFor(control), Guide);
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
                           int clipSkip = 0, bool decode = true, CancellationToken cancellation = default, SdControl? control = null)
    {
        if (seeds.Count == 0) throw new PagSharpException("give at least one seed");
        // With a control image the size defaults to the image's, as diffusers' ControlNet pipelines.
        var shape = LatentShape(height ?? (control is null ? DefaultSize : (int)control.Image.shape[^2]),
                                width ?? (control is null ? DefaultSize : (int)control.Image.shape[^1]));
        using var scope = NewDisposeScope();
        var pe = EncodePrompt(prompt, clipSkip, out _);
        var ne = guidance.UsesCfg ? EncodePrompt(negativePrompt ?? "", 0, out _) : null;
        int n = seeds.Count;
        using var source = new NoiseSource(seeds);
        var xT = source.Randn(shape);
        var latents = Denoise(scheduler, steps, eta, xT, source, pe.expand(n, -1, -1).contiguous(), ne?.expand(n, -1, -1).contiguous(),
            guidance, seeds[0], null, cancellation, control);
        return (decode ? Decode(latents) : latents).MoveToOuterDisposeScope();
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
        Guide?.Dispose();
        Unet.Dispose();
        Vae?.Dispose();
        TextEncoder?.Dispose();
    }
}
