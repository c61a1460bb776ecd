using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Models.Sd;

/// <summary>Finds and strictly loads the weight files of diffusers / transformers component folders.</summary>
public static class SdLoader
{
    /// <summary>File names tried in a component folder, in order (full precision first, then the fp16 variant, then .bin).</summary>
    public static readonly string[] WeightNames =
    {
        "diffusion_pytorch_model.safetensors", "model.safetensors",
        "diffusion_pytorch_model.fp16.safetensors", "model.fp16.safetensors",
        "diffusion_pytorch_model.bin", "pytorch_model.bin", "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin",
    };

    /// <summary>The weight file of a component folder; an error names the folder and the expected names.</summary>
    public static string FindWeights(string componentDir)
    {
        foreach (var n in WeightNames)
        {
            string p = Path.Combine(componentDir, n);
            if (File.Exists(p)) return p;
        }
        string extra = Directory.Exists(componentDir) && Directory.EnumerateFiles(componentDir, "*.index.json").Any()
            ? " (sharded checkpoints are not supported)" : "";
        throw new PagSharpException($"{componentDir} holds no weights{extra}; expected one of {string.Join(", ", WeightNames)}");
    }

    /// <summary>
    /// Reads a weight file and checks its floating-point dtypes: one dtype for the whole file (float32, float16 or
    /// bfloat16), float16 when the name says <c>.fp16.</c>. Half-precision weights are up-cast to float32 when loaded.
    /// </summary>
    public static Dictionary<string, Tensor> ReadWeights(string file)
    {
        if (!File.Exists(file)) throw new PagSharpException($"{file} does not exist");
        var w = StateDicts.Load(file);
        var floatTypes = w.Where(kv => kv.Value.is_floating_point()).GroupBy(kv => kv.Value.dtype).ToList();
        string? problem = null;
        if (floatTypes.Count > 1)
            problem = "mixes floating-point dtypes: " + string.Join(", ", floatTypes.Select(g => $"{g.Count()} × {g.Key} (e.g. {g.First().Key})")) +
                      "; expected one precision per file (float32, or float16 in a .fp16 file)";
        else if (Path.GetFileName(file).Contains(".fp16.", StringComparison.Ordinal) && floatTypes.Count == 1 && floatTypes[0].Key != ScalarType.Float16)
            problem = $"is named as the fp16 variant but holds {floatTypes[0].Key} tensors; rename it (e.g. to {Path.GetFileName(file).Replace(".fp16.", ".")}) or store float16 weights";
        else if (floatTypes.Count == 1 && floatTypes[0].Key is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            problem = $"holds {floatTypes[0].Key} weights; expected float32, float16 or bfloat16";
        if (problem is not null)
        {
            foreach (var t in w.Values) t.Dispose();
            throw new PagSharpException($"{file} {problem}");
        }
        return w;
    }

    private static T Load<T>(T module, string file, string configHint, Func<Dictionary<string, Tensor>, Dictionary<string, Tensor>>? fix = null) where T : nn.Module
    {
        module.eval();
        var w = ReadWeights(file);
        try
        {
            var fixedW = fix is null ? w : fix(w);
            StateDictLoader.LoadStrict(module, fixedW, file, $"Does {configHint} belong to these weights?");
            if (!ReferenceEquals(fixedW, w))
                foreach (var (k, t) in fixedW)
                    if (!w.TryGetValue(k, out var orig) || !ReferenceEquals(orig, t)) t.Dispose();
        }
        catch
        {
            module.Dispose();
            throw;
        }
        finally
        {
            foreach (var t in w.Values) t.Dispose();
        }
        return module;
    }

    public static SdUNet LoadUNet(SdUNetConfig config, string file, string configPath = "the UNet config", ScalarType? dtype = null) =>
        Load(Create(() => new SdUNet(config), dtype ?? ScalarType.Float32), file, configPath);

    /// <summary>
    /// Builds a module with its parameters created in <paramref name="dtype"/> (torch's default dtype for the duration),
    /// so that a half-precision model never exists as a float32 copy. The default dtype is process-wide: tensors other
    /// threads create while a half-precision model is being built get it too, so build models before starting
    /// concurrent work.
    /// </summary>
    public static T Create<T>(Func<T> build, ScalarType dtype) where T : nn.Module
    {
        if (dtype == ScalarType.Float32) return build();
        if (dtype is not (ScalarType.Float16 or ScalarType.BFloat16)) throw new PagSharpException($"weights can be held in float32, float16 or bfloat16 (got {dtype})");
        var previous = get_default_dtype();
        set_default_dtype(dtype);
        try { return build(); }
        finally { set_default_dtype(previous); }
    }

    /// <summary>
    /// Loads a ControlNet strictly from <paramref name="file"/>: diffusers <c>ControlNetModel</c> weights, or an
    /// original (lllyasviel/ControlNet, LDM) checkpoint — <c>control_model.*</c> keys, or the ControlNet's own keys
    /// without prefix — mapped as diffusers' <c>convert_controlnet_checkpoint</c> does.
    /// </summary>
    public static SdControlNet LoadControlNet(ControlNetConfig config, string file, string configPath = "the ControlNet config")
    {
        using var ldm = SdSingleFile.TryOpenControlNet(file);
        return ldm is not null ? LoadControlNet(config, ldm, configPath) : Load(new SdControlNet(config), file, configPath);
    }

    /// <summary>Loads an original (LDM) ControlNet checkpoint, opened with <see cref="SdSingleFile.TryOpenControlNet"/>, into a ControlNet built from <paramref name="config"/>.</summary>
    public static SdControlNet LoadControlNet(ControlNetConfig config, SdSingleFile ldm, string configPath = "the ControlNet config")
    {
        var net = new SdControlNet(config);
        try
        {
            net.eval();
            ldm.LoadControlNet(net, configPath);
            return net;
        }
        catch
        {
            net.Dispose();
            throw;
        }
    }

    public static AutoencoderKL LoadVae(SdVaeConfig config, string file, string configPath = "the VAE config") =>
        Load(new AutoencoderKL(config), file, configPath, AutoencoderKL.UpgradeLegacyKeys);

    public static ClipTextModel LoadTextEncoder(ClipTextConfig config, string file, string configPath = "the text encoder config") =>
        Load(new ClipTextModel(config), file, configPath, w =>
        {
            if (!w.ContainsKey(ClipTextModel.PositionIdsKey)) return w;
            return w.Where(kv => kv.Key != ClipTextModel.PositionIdsKey).ToDictionary(kv => kv.Key, kv => kv.Value);
        });
}
