using System.Globalization;
using System.Text.Json.Nodes;
using PagSharp.Attention;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;

namespace PagSharp.Cli.Serve;

/// <summary>
/// One perturbable self-attention layer as the page shows it: where it sits and what PAG there costs, in multiply-adds
/// of one step ÷ an unguided step (<see cref="PagCost"/>) and CFG+PAG ÷ CFG (<see cref="CfgPagCost"/>), as
/// <c>pag layers</c> prints them.
/// </summary>
public sealed record ServeLayer(string Name, string Group, int Resolution, int Channels, int Heads, double PagCost, double CfgPagCost);

/// <summary>A model the page can pick: only those given on the command line, and the built-in one.</summary>
public abstract class ServeModel : IDisposable
{
    protected ServeModel(string id, string name)
    {
        Id = id;
        Name = name;
    }

    /// <summary>The id the API uses (<c>builtin</c>, <c>adm</c>, <c>sd-FOLDER</c>).</summary>
    public string Id { get; }
    /// <summary>What the page shows.</summary>
    public string Name { get; }
    /// <summary><c>adm</c> (guided-diffusion: labels) or <c>sd</c> (Stable Diffusion: prompts).</summary>
    public abstract string Family { get; }
    public abstract IReadOnlyList<AttentionLayerInfo> AttentionLayers { get; }
    public abstract IReadOnlyList<ServeLayer> Layers { get; }
    /// <summary>The layers PAG, SEG and SLG perturb when a request names none.</summary>
    public abstract IReadOnlyList<string> DefaultLayers { get; }
    public abstract string DefaultScheduler { get; }
    public abstract int DefaultSteps { get; }
    /// <summary>The scales the page's sliders start at: CFG (and APG, CFG-Zero*) w, PAG s, SAG s, SEG s, SLG s.</summary>
    public abstract (double Cfg, double Pag, double Sag, double Seg, double Slg) DefaultScales { get; }
    /// <summary>What run.json records as the model.</summary>
    public abstract JsonObject Manifest();
    /// <summary>The model as <c>GET /api/models</c> lists it.</summary>
    public virtual JsonObject Describe()
    {
        var (cfg, pag, sag, seg, slg) = DefaultScales;
        return new JsonObject
        {
            ["id"] = Id,
            ["name"] = Name,
            ["family"] = Family,
            ["defaultScheduler"] = DefaultScheduler,
            ["defaultSteps"] = DefaultSteps,
            ["defaultScales"] = new JsonObject { ["cfg"] = cfg, ["pag"] = pag, ["sag"] = sag, ["seg"] = seg, ["slg"] = slg },
        };
    }

    public virtual void Dispose() => GC.SuppressFinalize(this);

    /// <summary>Multiply-add ratio, rounded as <c>pag layers</c> prints it.</summary>
    protected static double Ratio(long macs, long by) => Math.Round((double)macs / by, 3);
}

/// <summary>A guided-diffusion (ADM) model: the built-in MNIST model, or a preset / config with a checkpoint. Loaded at start-up.</summary>
public sealed class AdmServeModel : ServeModel
{
    private readonly IReadOnlyList<ServeLayer> _layers;

    public AdmServeModel(string id, string name, LoadedAdm loaded) : base(id, name)
    {
        Loaded = loaded;
        var net = loaded.Net;
        long none = AdmCost.Forward(net, new MacCall(1));
        _layers = net.AttentionLayers.Select(l => new ServeLayer(l.Name, l.Group, l.Resolution, l.Channels, l.Heads,
            Ratio(AdmCost.Forward(net, MacCall.GuidedStep(1, false, [l.Name])), none),
            Ratio(AdmCost.Forward(net, MacCall.GuidedStep(1, true, [l.Name])), 2 * none))).ToArray();
        DefaultLayers = LayerSpec.Resolve(loaded.Config.GuidanceDefaults?.PagLayers ?? "middle", net.AttentionLayers);
    }

    public LoadedAdm Loaded { get; }
    public AdmUNet Net => Loaded.Net;
    public AdmConfig Config => Loaded.Config;
    public override string Family => "adm";
    public override IReadOnlyList<AttentionLayerInfo> AttentionLayers => Net.AttentionLayers;
    public override IReadOnlyList<ServeLayer> Layers => _layers;
    public override IReadOnlyList<string> DefaultLayers { get; }
    public override string DefaultScheduler => Config.Sampling.Scheduler;
    public override int DefaultSteps => Config.Sampling.Steps;

    /// <summary>Whether CFG columns are possible: a class-conditional model with a null class.</summary>
    public bool HasNullClass => Net.IsClassConditional && Config.NullClass is not null;

    /// <summary>The labels a request may give (every class but the null class).</summary>
    public IReadOnlyList<int> Labels => Net.IsClassConditional && Config.ResolvedNumClasses is int n
        ? Enumerable.Range(0, n).Where(l => l != Config.NullClass).ToArray() : [];

    public override (double Cfg, double Pag, double Sag, double Seg, double Slg) DefaultScales =>
        (Config.GuidanceDefaults is { GuidanceScale: > 1 } g ? g.GuidanceScale : 3, Config.GuidanceDefaults?.PagScale is > 0 and var p ? p : 2, 0.75, 3, 2);

    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["imageSize"] = Config.ImageSize;
        o["channels"] = Config.InChannels;
        o["labels"] = new JsonArray(Labels.Select(l => (JsonNode)l!).ToArray());
        // A class-conditional model without a null class always needs a label; with one, no label = unconditional.
        o["labelRequired"] = Net.IsClassConditional && Config.NullClass is null;
        o["cfg"] = HasNullClass;
        o["schedulers"] = new JsonArray(Diffusion.Schedulers.Schedulers.Names.Select(n => (JsonNode)n!).ToArray());
        o["diffusionSteps"] = Config.DiffusionSteps;
        return o;
    }

    public override JsonObject Manifest() => new()
    {
        ["id"] = Id,
        ["family"] = Family,
        ["source"] = ModelStore.Describe(Loaded.Source),
        ["config"] = JsonNode.Parse(Config.ToJson()),
    };

    public override void Dispose()
    {
        Loaded.Dispose();
        base.Dispose();
    }
}

/// <summary>
/// A diffusers Stable Diffusion (or SDXL) folder. Its configs are read at start-up; its layer list (and their PAG
/// costs) when first asked for, from its U-Net (loaded for that, then freed, unless the pipeline is loaded already); the
/// pipeline itself for the first job that uses the model.
/// </summary>
public sealed class SdServeModel : ServeModel
{
    private readonly object _lock = new();
    private StableDiffusion? _loaded;
    private (IReadOnlyList<AttentionLayerInfo> Attention, IReadOnlyList<ServeLayer> Layers, IReadOnlyList<string> Defaults)? _info;

    public SdServeModel(string id, string dir) : this(id, dir, DiffusersFolder.Open(dir)) { }

    private SdServeModel(string id, string dir, DiffusersFolder folder)
        : base(id, $"{Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir)))} (Stable Diffusion{(folder.IsXl ? " XL" : "")})")
    {
        Dir = Path.GetFullPath(dir);
        Folder = folder;
        UnetConfig = Folder.UnetConfig();
        if (!Folder.Has("vae")) throw new PagSharpException($"--model '{dir}' has no vae/ folder: pag serve shows images, so it needs the VAE");
        if (!Folder.Has("tokenizer") && !Folder.Has("tokenizer_2")) throw new PagSharpException($"--model '{dir}' has no tokenizer: pag serve takes prompts, so it needs the tokenizer and text encoder");
        VaeScaleFactor = Folder.VaeConfig().ScaleFactor;
        SchedulerConfig = Folder.SchedulerConfig(pipelineFixups: !Folder.IsXl);
    }

    /// <summary>The self-attention layers, their costs and the default ones (mid), computed once from the U-Net.</summary>
    private (IReadOnlyList<AttentionLayerInfo> Attention, IReadOnlyList<ServeLayer> Layers, IReadOnlyList<string> Defaults) Info
    {
        get
        {
            lock (_lock)
            {
                if (_info is { } info) return info;
                // The loaded pipeline's U-Net, or the U-Net alone for this (the weights are needed to build it; the
                // process-wide meta device is not used, as other threads may be creating tensors).
                var unet = _loaded?.Unet ?? Folder.LoadUnet();
                try
                {
                    long none = SdCost.Forward(unet, new MacCall(1));
                    var layers = unet.AttentionLayers.Select(l => new ServeLayer(l.Name, l.Group, l.Resolution, l.Channels, l.Heads,
                        Ratio(SdCost.Forward(unet, MacCall.GuidedStep(1, false, [l.Name])), none),
                        Ratio(SdCost.Forward(unet, MacCall.GuidedStep(1, true, [l.Name])), 2 * none))).ToArray();
                    var attention = unet.AttentionLayers.ToArray();
                    _info = (attention, layers, DiffusersLayerSpec.Resolve("mid", attention, LayerMatch.Exact));
                    return _info.Value;
                }
                finally
                {
                    if (_loaded is null) unet.Dispose();
                }
            }
        }
    }

    public string Dir { get; }
    public DiffusersFolder Folder { get; }
    public SdUNetConfig UnetConfig { get; }
    public Diffusion.Schedulers.SchedulerConfig SchedulerConfig { get; }
    public int VaeScaleFactor { get; }
    /// <summary>unet.sample_size · vae_scale_factor, as diffusers.</summary>
    public int DefaultSize => (UnetConfig.SampleSize ?? 64) * VaeScaleFactor;
    public override string Family => "sd";
    public override IReadOnlyList<AttentionLayerInfo> AttentionLayers => Info.Attention;
    public override IReadOnlyList<ServeLayer> Layers => Info.Layers;
    public override IReadOnlyList<string> DefaultLayers => Info.Defaults;
    public override string DefaultScheduler => Folder.NativeSchedulerName ?? "ddim";
    public override int DefaultSteps => 30;
    public override (double Cfg, double Pag, double Sag, double Seg, double Slg) DefaultScales => (Folder.IsXl ? 5 : 7.5, 3, 0.75, 3, 2);

    /// <summary>Whether the weights are in memory.</summary>
    public bool IsLoaded { get { lock (_lock) return _loaded is not null; } }

    /// <summary>The loaded pipeline (loading it the first time: U-Net, VAE, text encoders).</summary>
    public StableDiffusion Acquire()
    {
        lock (_lock) return _loaded ??= StableDiffusion.Load(Dir, new SdComponents(Vae: true, TextEncoder: true));
    }

    /// <summary>Frees the weights (another Stable Diffusion model is about to be loaded).</summary>
    public void Unload()
    {
        lock (_lock)
        {
            _loaded?.Dispose();
            _loaded = null;
        }
    }

    public override JsonObject Describe()
    {
        var o = base.Describe();
        o["defaultWidth"] = DefaultSize;
        o["defaultHeight"] = DefaultSize;
        o["sizeMultiple"] = VaeScaleFactor;
        o["xl"] = Folder.IsXl;
        o["cfg"] = true;
        o["schedulers"] = new JsonArray(Diffusion.Schedulers.Schedulers.DiffusersNames.Select(n => (JsonNode)n!).ToArray());
        return o;
    }

    public override JsonObject Manifest() => new() { ["id"] = Id, ["family"] = Family, ["folder"] = Dir, ["pipeline"] = Folder.PipelineClass };

    public override void Dispose()
    {
        Unload();
        base.Dispose();
    }
}

/// <summary>The models of one server: the built-in model (when it is installed), an ADM model, Stable Diffusion folders.</summary>
public sealed class ModelRegistry : IDisposable
{
    private readonly List<ServeModel> _models = new();

    public IReadOnlyList<ServeModel> Models => _models;

    public ServeModel? Get(string id) => _models.FirstOrDefault(m => m.Id == id);

    public void Add(ServeModel model)
    {
        if (Get(model.Id) is not null) throw new PagSharpException($"two models would have the id '{model.Id}'");
        _models.Add(model);
    }

    /// <summary>
    /// The models of a command line: the built-in model (always, when installed), the ADM model of
    /// <paramref name="preset"/> / <paramref name="config"/> + <paramref name="checkpoint"/>, and every Stable
    /// Diffusion folder of <paramref name="sdFolders"/>. Everything is checked (and ADM weights loaded) here, before the
    /// server starts.
    /// </summary>
    public static ModelRegistry Create(string? preset, string? config, string? checkpoint, IReadOnlyList<string> sdFolders, Action<string>? warn = null)
    {
        var r = new ModelRegistry();
        try
        {
            if (File.Exists(Path.Combine(ModelStore.BuiltInDir, ModelStore.WeightsFile)))
                r.Add(new AdmServeModel("builtin", "built-in MNIST (32×32 digits)", ModelStore.Load(null, null, null)));
            else warn?.Invoke($"the built-in model is not installed ({ModelStore.BuiltInDir}); only the models on the command line are offered");
            if (preset is not null || config is not null || checkpoint is not null)
            {
                if (checkpoint is null) throw new PagSharpException("--preset / --config need --checkpoint FILE (the weights)");
                if (preset is null && config is null) throw new PagSharpException("--checkpoint needs --preset NAME or --config FILE (the model's configuration)");
                var loaded = ModelStore.Load(preset, config, checkpoint);
                r.Add(new AdmServeModel("adm", $"{Path.GetFileName(checkpoint)} ({preset ?? Path.GetFileName(config)}, {loaded.Config.ImageSize}×{loaded.Config.ImageSize})", loaded));
            }
            foreach (var dir in sdFolders)
            {
                if (!Directory.Exists(dir)) throw new PagSharpException($"--model '{dir}' is not a folder (a diffusers Stable Diffusion folder with model_index.json)");
                string baseId = "sd-" + Slug(Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir))));
                string id = baseId;
                for (int i = 2; r.Get(id) is not null; i++) id = baseId + "-" + i.ToString(CultureInfo.InvariantCulture);
                r.Add(new SdServeModel(id, dir));
            }
            if (r.Models.Count == 0) throw new PagSharpException("no model to serve: the built-in model is missing; give --model DIR or --preset/--config with --checkpoint");
            return r;
        }
        catch
        {
            r.Dispose();
            throw;
        }
    }

    /// <summary>A Stable Diffusion model's pipeline, freeing any other Stable Diffusion model first (one in memory at a time).</summary>
    public StableDiffusion Acquire(SdServeModel model)
    {
        foreach (var other in _models.OfType<SdServeModel>())
            if (other != model) other.Unload();
        return model.Acquire();
    }

    /// <summary>Lower-case letters, digits, '.', '-' and '_' of <paramref name="text"/> (others become '-').</summary>
    public static string Slug(string text)
    {
        var s = new string(text.ToLowerInvariant().Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' ? c : '-').ToArray()).Trim('-', '.');
        return s.Length == 0 ? "model" : s.Length > 40 ? s[..40] : s;
    }

    public void Dispose()
    {
        foreach (var m in _models) m.Dispose();
        _models.Clear();
    }
}
