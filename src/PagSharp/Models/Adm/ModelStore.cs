using PagSharp.IO;

namespace PagSharp.Models.Adm;

/// <summary>An ADM network with its config, ready for sampling.</summary>
public sealed class LoadedAdm : IDisposable
{
    public required AdmUNet Net { get; init; }
    public required string Source { get; init; }
    public AdmConfig Config => Net.Config;
    public long[] SampleShape => new long[] { Config.InChannels, Config.ImageSize, Config.ImageSize };
    public void Dispose() => Net.Dispose();
}

/// <summary>Finds and loads models: the built-in MNIST model, a preset or config file plus a checkpoint.</summary>
public static class ModelStore
{
    public const string WeightsFile = "model.safetensors";

    /// <summary>The built-in model's folder (copied next to the program at build time).</summary>
    public static string BuiltInDir
    {
        get
        {
            var env = Environment.GetEnvironmentVariable("PAGSHARP_MODEL_DIR");
            if (!string.IsNullOrEmpty(env)) return env;
            return Path.Combine(AppContext.BaseDirectory, "models", "mnist");
        }
    }

    /// <summary>The config a (preset | config file | built-in) selection means, without loading weights.</summary>
    public static AdmConfig ResolveConfig(string? preset, string? configPath)
    {
        if (preset is not null && configPath is not null)
            throw new PagSharpException("give either a preset or a config, not both");
        if (preset is not null) return AdmPresets.Get(preset);
        if (configPath is not null) return AdmConfig.Load(configPath);
        string builtIn = Path.Combine(BuiltInDir, "config.json");
        if (!File.Exists(builtIn))
            throw new PagSharpException($"the built-in model is missing ({builtIn}); give a preset or a config file, with a checkpoint");
        return AdmConfig.Load(builtIn);
    }

    /// <summary>
    /// How a run manifest names a model source: the built-in model as <c>built-in mnist</c> with the SHA-256 of its
    /// weights (not the path of the program's folder), any other checkpoint by its full path.
    /// </summary>
    public static string Describe(string source)
    {
        string builtIn = Path.GetFullPath(Path.Combine(BuiltInDir, WeightsFile));
        if (!File.Exists(source) || Path.GetFullPath(source) != builtIn) return File.Exists(source) ? Path.GetFullPath(source) : source;
        using var f = File.OpenRead(source);
        return "built-in mnist (sha256 " + Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(f))[..16] + ")";
    }

    /// <summary>
    /// Loads a model. With no preset and no config the built-in model is used. A checkpoint is required unless
    /// <paramref name="randomWeights"/> is set (random initialisation, for tests and benchmarks).
    /// </summary>
    public static LoadedAdm Load(string? preset, string? configPath, string? checkpoint, bool randomWeights = false)
    {
        bool builtIn = preset is null && configPath is null;
        var cfg = ResolveConfig(preset, configPath);
        if (builtIn && checkpoint is null) checkpoint = Path.Combine(BuiltInDir, WeightsFile);
        if (checkpoint is null && !randomWeights)
            throw new PagSharpException("this model needs a checkpoint (.safetensors, .pt, .pth or .bin), or random weights");
        if (checkpoint is not null && !File.Exists(checkpoint)) throw new PagSharpException($"checkpoint '{checkpoint}' does not exist");
        var net = new AdmUNet(cfg);
        net.eval();
        if (checkpoint is not null)
        {
            string what = preset is not null ? $"preset '{preset}'" : configPath is not null ? $"config '{configPath}'" : "the built-in model config";
            StateDictLoader.LoadFile(net, checkpoint,
                $"Is {what} the right configuration for this checkpoint? Presets: {string.Join(", ", AdmPresets.All.Select(p => $"{p.Key} ({p.Value.Checkpoint})"))}");
        }
        return new LoadedAdm { Net = net, Source = checkpoint ?? "random weights" };
    }
}
