using PagSharp.Attention;
using PagSharp.Guidance;
using PagSharp.Models.Adm;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>
/// A guided-diffusion (ADM) model ready to generate, loaded in one call — the library's front door, as a diffusers
/// pipeline is:
/// <code>
/// using var pipe = AdmPipeline.BuiltIn();
/// using var digits = pipe.Generate(16, new SamplingOptions { Guidance = pipe.Pag(scale: 2) });
/// Grid.Save("pag.png", digits, nrow: 4);
/// </code>
/// </summary>
public sealed class AdmPipeline : IDisposable
{
    private AdmPipeline(LoadedAdm loaded) => Loaded = loaded;

    /// <summary>The network and where its weights came from.</summary>
    public LoadedAdm Loaded { get; }
    public AdmUNet Net => Loaded.Net;
    public AdmConfig Config => Loaded.Config;
    /// <summary>The perturbable self-attention layers (names are checkpoint keys).</summary>
    public IReadOnlyList<AttentionLayerInfo> AttentionLayers => Net.AttentionLayers;

    /// <summary>The built-in MNIST model that ships with PagSharp.</summary>
    public static AdmPipeline BuiltIn() => new(ModelStore.Load(null, null, null));

    /// <summary>A released OpenAI configuration (<c>adm-256-uncond</c>, …; <see cref="AdmPresets"/>) with its checkpoint.</summary>
    public static AdmPipeline FromPreset(string preset, string checkpoint) => new(ModelStore.Load(preset, null, checkpoint));

    /// <summary>Any guided-diffusion model: a JSON config of guided-diffusion's arguments and a checkpoint (.safetensors or .pt).</summary>
    public static AdmPipeline FromConfig(string configPath, string checkpoint) => new(ModelStore.Load(null, configPath, checkpoint));

    /// <summary>Layer names of a layer spec (names, groups <c>input</c>/<c>middle</c>/<c>output</c>/<c>all</c>, <c>@RES</c>, globs).</summary>
    public IReadOnlyList<string> Layers(string spec) => LayerSpec.Resolve(spec, AttentionLayers);

    /// <summary>
    /// PAG guidance ε + s·(ε − ε̂) at the layers of <paramref name="layers"/> (default: the model's recommended layers,
    /// <see cref="AdmConfig.GuidanceDefaults"/>, else the middle block).
    /// </summary>
    public GuidanceSettings Pag(double scale, string? layers = null) =>
        new() { PagScale = new ScaleSchedule.Constant(scale), PagLayers = Layers(layers ?? Config.GuidanceDefaults?.PagLayers ?? "middle") };

    /// <summary>The model's recommended guidance (PAG scale and layers, CFG scale from its config), or null when it has none.</summary>
    public GuidanceSettings? Recommended => Config.GuidanceDefaults is { } d
        ? Pag(d.PagScale, d.PagLayers) with { GuidanceScale = d.GuidanceScale }
        : null;

    /// <summary>
    /// Sampling options with the model's recommended scheduler and steps (<see cref="AdmConfig.SamplingDefaults"/>; the
    /// built-in model: DDPM-100), else DDIM-50; no guidance, unconditional. Set <c>Guidance</c>, <c>Labels</c>, … with <c>with</c>.
    /// </summary>
    public SamplingOptions DefaultOptions => new() { Scheduler = Config.Sampling.Scheduler, Steps = Config.Sampling.Steps };

    /// <summary>
    /// Generates samples 0 … <paramref name="count"/> − 1 of a run (sample i from seed <c>options.Seed + i</c>) and
    /// returns them as float32 [N,C,H,W] in [−1, 1]. Defaults: <see cref="DefaultOptions"/> (the model's recommended
    /// sampler, else DDIM-50; no guidance, unconditional).
    /// </summary>
    public Tensor Generate(int count, SamplingOptions? options = null, IProgress<SamplingProgress>? progress = null, CancellationToken cancellation = default)
    {
        if (count < 1) throw new PagSharpException($"count must be ≥ 1 (got {count})");
        return Sampler.Sample(Net, options ?? DefaultOptions, Enumerable.Range(0, count).Select(i => (long)i).ToArray(), null, progress, cancellation);
    }

    public void Dispose() => Loaded.Dispose();
}
