using PagSharp.IO;
using System.Text.Json;
using PagSharp.Diffusion.Schedulers;

namespace PagSharp.Models.Sd;

/// <summary>
/// A diffusers pipeline folder (<c>model_index.json</c> plus <c>unet/</c>, <c>vae/</c>, <c>text_encoder/</c>,
/// <c>tokenizer/</c>, <c>scheduler/</c>) of the Stable Diffusion 1.x / 2.x family, or of SDXL (also
/// <c>text_encoder_2/</c> and <c>tokenizer_2/</c>; the refiner has only the second encoder). Components are read only when
/// asked for, so a call that does not need one (no VAE for latent output, no text encoder with given prompt
/// embeddings) works without it. Every error names the file and what was expected.
/// </summary>
public sealed class DiffusersFolder
{
    private static readonly Dictionary<string, string[]> ExpectedClasses = new()
    {
        ["unet"] = new[] { "UNet2DConditionModel" },
        ["vae"] = new[] { "AutoencoderKL" },
        ["text_encoder"] = new[] { "CLIPTextModel" },
        ["tokenizer"] = new[] { "CLIPTokenizer", "CLIPTokenizerFast" },
        ["text_encoder_2"] = new[] { "CLIPTextModelWithProjection" },
        ["tokenizer_2"] = new[] { "CLIPTokenizer", "CLIPTokenizerFast" },
    };

    private readonly Dictionary<string, string?> _components = new(StringComparer.Ordinal);

    public string Root { get; }
    /// <summary><c>_class_name</c> of model_index.json (e.g. StableDiffusionPipeline).</summary>
    public string? PipelineClass { get; }
    /// <summary>The scheduler class model_index.json names (e.g. PNDMScheduler), or null.</summary>
    public string? SchedulerClass => _components.GetValueOrDefault("scheduler");

    /// <summary>An SDXL pipeline (base or refiner): model_index.json lists text_encoder_2 or names an XL pipeline class.</summary>
    public bool IsXl { get; private init; }

    /// <summary>model_index.json's <c>force_zeros_for_empty_prompt</c> (SDXL: true): without a negative prompt the negative embeddings are zeros.</summary>
    public bool ForceZerosForEmptyPrompt { get; private init; }

    /// <summary>model_index.json's <c>requires_aesthetics_score</c> (the SDXL refiner): time ids carry an aesthetic score instead of the target size.</summary>
    public bool RequiresAestheticsScore { get; private init; }

    private DiffusersFolder(string root, string? pipelineClass)
    {
        Root = root;
        PipelineClass = pipelineClass;
    }

    /// <summary>
    /// The weights of an original single-file checkpoint, when the folder supplies only the configs (diffusers'
    /// <c>from_single_file(config=…)</c>): components are built from the folder's configs and filled from the file.
    /// </summary>
    public SdSingleFile? SingleFile { get; private init; }

    /// <summary>Where the tokenizer(s) come from for a single-file model: a folder with vocab.json and merges.txt, or a diffusers folder with tokenizer/ (and tokenizer_2/).</summary>
    public string? TokenizerDir { get; private init; }

    /// <summary>
    /// A single-file model: <paramref name="configDir"/> is a diffusers pipeline folder holding (at least) the configs
    /// — model_index.json, unet/config.json, scheduler/scheduler_config.json, and vae/, text_encoder/ configs for the
    /// components the file carries; the weights come from <paramref name="file"/>.
    /// </summary>
    public static DiffusersFolder ForSingleFile(SdSingleFile file, string configDir, string? tokenizerDir)
    {
        var f = Open(configDir);
        if (f.IsXl != file.IsXl)
            throw new PagSharpException($"{file.Path} is a {file.Family} checkpoint but the configs in {configDir} are for {(f.IsXl ? "an SDXL" : "a Stable Diffusion 1.x/2.x")} pipeline ({f.PipelineClass})");
        if (tokenizerDir is not null && !Directory.Exists(tokenizerDir)) throw new PagSharpException($"tokenizer folder '{tokenizerDir}' does not exist");
        var result = new DiffusersFolder(configDir, f.PipelineClass)
        {
            IsXl = f.IsXl, ForceZerosForEmptyPrompt = f.ForceZerosForEmptyPrompt, RequiresAestheticsScore = f.RequiresAestheticsScore,
            SingleFile = file, TokenizerDir = tokenizerDir,
        };
        foreach (var (k, v) in f._components) result._components[k] = v;
        return result;
    }

    public static DiffusersFolder Open(string dir)
    {
        if (!Directory.Exists(dir)) throw new PagSharpException($"model folder '{dir}' does not exist");
        string index = Path.Combine(dir, "model_index.json");
        if (!File.Exists(index))
            throw new PagSharpException($"{index} does not exist: the model path must be a diffusers pipeline folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)");
        var c = JsonConfig.Load(index);
        string? cls0 = c.StringOrNull("_class_name");
        if (cls0 is { } pc && (pc.Contains("StableDiffusion3", StringComparison.Ordinal) || pc.Contains("Flux", StringComparison.Ordinal) || pc.Contains("Kolors", StringComparison.Ordinal)))
            throw new PagSharpException($"{index}: pipeline '{pc}' is not supported; PagSharp runs Stable Diffusion 1.x / 2.x and SDXL pipelines (StableDiffusionPipeline, StableDiffusionXLPipeline)");
        bool xl = c.Has("text_encoder_2") || (cls0?.Contains("XL", StringComparison.Ordinal) ?? false);
        var folder = new DiffusersFolder(dir, cls0)
        {
            IsXl = xl,
            ForceZerosForEmptyPrompt = c.Bool("force_zeros_for_empty_prompt", xl),
            RequiresAestheticsScore = c.Bool("requires_aesthetics_score", false),
        };
        foreach (var name in new[] { "unet", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler" })
        {
            if (c.Get(name) is not { } v) { folder._components[name] = null; continue; }
            if (v.ValueKind != JsonValueKind.Array || v.GetArrayLength() != 2)
                throw c.Error(name, "a [library, class] pair such as [\"diffusers\", \"UNet2DConditionModel\"]", v);
            var cls = v[1].ValueKind == JsonValueKind.String ? v[1].GetString() : null;
            if (cls is not null && ExpectedClasses.TryGetValue(name, out var ok) && !ok.Contains(cls))
                throw new PagSharpException($"{index}: component '{name}' is a {cls}; expected {string.Join(" or ", ok)}");
            folder._components[name] = cls;
        }
        if (folder._components["unet"] is null)
            throw new PagSharpException($"{index} lists no unet; expected \"unet\": [\"diffusers\", \"UNet2DConditionModel\"]");
        return folder;
    }

    /// <summary>The component is listed in model_index.json and its folder exists (for a single-file model: its config folder, and the file holds it).</summary>
    public bool Has(string component) => _components.GetValueOrDefault(component) is not null && Directory.Exists(Path.Combine(Root, component))
        && (SingleFile is not { } f || component switch
        {
            "unet" => f.HasUnet,
            "vae" => f.VaePrefix is not null,
            "text_encoder" => (IsXl || f.Family is SdFamily.Sd1 or SdFamily.Sd1Inpainting ? f.ClipPrefix : f.OpenClipPrefix) is not null,
            "text_encoder_2" => f.OpenClipPrefix is not null,
            _ => true,
        });

    /// <summary>The folder of a component; an error says why it is needed and what is missing.</summary>
    public string ComponentDir(string component, string neededFor)
    {
        string dir = Path.Combine(Root, component);
        if (_components.GetValueOrDefault(component) is null)
            throw new PagSharpException($"{Path.Combine(Root, "model_index.json")} lists no {component}, which is needed {neededFor}");
        if (!Directory.Exists(dir))
            throw new PagSharpException($"{dir} does not exist (model_index.json lists a {_components[component]}); it is needed {neededFor}");
        return dir;
    }

    public SdUNetConfig UnetConfig() => SdUNetConfig.Load(Path.Combine(ComponentDir("unet", "for every call"), "config.json"));

    /// <summary>The UNet, its weights held in <paramref name="dtype"/> (default float32; see <see cref="SdLoader.Create"/>).</summary>
    public SdUNet LoadUnet(TorchSharp.torch.ScalarType dtype = TorchSharp.torch.ScalarType.Float32)
    {
        string dir = ComponentDir("unet", "for every call");
        string cfg = Path.Combine(dir, "config.json");
        if (SingleFile is { } f)
        {
            if (!f.HasUnet) throw new PagSharpException($"{f.Path} holds no UNet (model.diffusion_model.*), which every call needs");
            var config = SdUNetConfig.Load(cfg);
            return FromFile(SdLoader.Create(() => new SdUNet(config), dtype), f.LoadUnet);
        }
        return SdLoader.LoadUNet(SdUNetConfig.Load(cfg), SdLoader.FindWeights(dir), cfg, dtype);
    }

    private static T FromFile<T>(T module, Action<T> load) where T : TorchSharp.torch.nn.Module
    {
        module.eval();
        try { load(module); return module; }
        catch { module.Dispose(); throw; }
    }

    public SdVaeConfig VaeConfig() => SdVaeConfig.Load(Path.Combine(ComponentDir("vae", "to decode images (use --output-type latent to skip it)"), "config.json"));

    public AutoencoderKL LoadVae()
    {
        string dir = ComponentDir("vae", "to decode images (use --output-type latent to skip it)");
        string cfg = Path.Combine(dir, "config.json");
        if (SingleFile is { } f) return FromFile(new AutoencoderKL(SdVaeConfig.Load(cfg)), f.LoadVae);
        return SdLoader.LoadVae(SdVaeConfig.Load(cfg), SdLoader.FindWeights(dir), cfg);
    }

    public ClipTextModel LoadTextEncoder()
    {
        string dir = ComponentDir("text_encoder", "to encode prompts (or give --prompt-embeds and --negative-prompt-embeds)");
        string cfg = Path.Combine(dir, "config.json");
        if (SingleFile is { } f)
            return FromFile(new ClipTextModel(ClipTextConfig.Load(cfg)), f.Family is SdFamily.Sd2 or SdFamily.Sd2Inpainting ? f.LoadOpenClip : f.LoadClip);
        return SdLoader.LoadTextEncoder(ClipTextConfig.Load(cfg), SdLoader.FindWeights(dir), cfg);
    }

    public ClipTokenizer LoadTokenizer() => TokenizerFor("tokenizer") ??
        ClipTokenizer.Load(ComponentDir("tokenizer", "to encode prompts (or give --prompt-embeds and --negative-prompt-embeds)"));

    /// <summary>A single-file model's tokenizer: from <see cref="TokenizerDir"/> (its tokenizer/ or tokenizer_2/ when it is a pipeline folder), else the config folder's; an error names --tokenizer when neither has one.</summary>
    private ClipTokenizer? TokenizerFor(string component)
    {
        if (SingleFile is null) return null;
        foreach (var dir in new[] { TokenizerDir is null ? null : Path.Combine(TokenizerDir, component), TokenizerDir, Path.Combine(Root, component) })
            if (dir is not null && File.Exists(Path.Combine(dir, "vocab.json"))) return ClipTokenizer.Load(dir);
        throw new PagSharpException($"a single-file checkpoint carries no tokenizer: give --tokenizer DIR (a folder with the CLIP vocab.json and merges.txt, or a diffusers folder with {component}/), or give prompt embeddings instead of prompts");
    }

    /// <summary>SDXL's second text encoder (CLIPTextModelWithProjection).</summary>
    public ClipTextModel LoadTextEncoder2()
    {
        string dir = ComponentDir("text_encoder_2", "to encode prompts (or give --prompt-embeds, --pooled-prompt-embeds and their negatives)");
        string cfg = Path.Combine(dir, "config.json");
        var config = ClipTextConfig.Load(cfg) with { WithProjection = true };
        if (SingleFile is { } f) return FromFile(new ClipTextModel(config), f.LoadOpenClip);
        return SdLoader.LoadTextEncoder(config, SdLoader.FindWeights(dir), cfg);
    }

    /// <summary>SDXL's second tokenizer (OpenCLIP's, padding with "!").</summary>
    public ClipTokenizer LoadTokenizer2() => TokenizerFor("tokenizer_2") ??
        ClipTokenizer.Load(ComponentDir("tokenizer_2", "to encode prompts (or give --prompt-embeds, --pooled-prompt-embeds and their negatives)"));

    /// <summary>text_encoder_2/config.json's projection_dim: the width of the pooled embedding, null when the folder has no second encoder.</summary>
    public int? TextEncoder2ProjectionDim =>
        _components.GetValueOrDefault("text_encoder_2") is not null && File.Exists(Path.Combine(Root, "text_encoder_2", "config.json"))
            ? ClipTextConfig.Load(Path.Combine(Root, "text_encoder_2", "config.json")).ProjectionDim : null;

    /// <summary>
    /// scheduler/scheduler_config.json with the fix-ups <c>StableDiffusionPipeline.__init__</c> applies to every
    /// scheduler it is given: steps_offset = 1 and clip_sample = false. With <paramref name="pipelineFixups"/> false
    /// the file as it is, which is what diffusers' ControlNet pipelines use (they apply no fix-ups).
    /// </summary>
    public SchedulerConfig SchedulerConfig(bool pipelineFixups = true)
    {
        string dir = ComponentDir("scheduler", "for its noise schedule");
        var cfg = Diffusion.Schedulers.SchedulerConfig.Load(Path.Combine(dir, "scheduler_config.json"));
        return pipelineFixups ? cfg with { StepsOffset = 1, ClipSample = false } : cfg;
    }

    /// <summary>The CLI name of the folder's own scheduler when PagSharp implements it (DDIM, Euler, Euler ancestral, DPM-Solver multistep), else null.</summary>
    public string? NativeSchedulerName => SchedulerClass switch
    {
        "DDIMScheduler" => "ddim",
        "EulerDiscreteScheduler" => "euler",
        "EulerAncestralDiscreteScheduler" => "euler-a",
        "DPMSolverMultistepScheduler" => "dpmpp-2m",
        _ => null,
    };
}
