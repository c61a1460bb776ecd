using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Models;

/// <summary>Strict state-dict loading: names and shapes must match exactly; every mismatch is reported at once.</summary>
public static class StateDictLoader
{
    /// <summary>
    /// Copies <paramref name="weights"/> into <paramref name="module"/>'s parameters and buffers, up-casting to the
    /// module's dtype (fp16/bf16 checkpoints load into a float32 model). Throws a <see cref="PagSharpException"/>
    /// that lists every missing, unexpected and mis-shaped key.
    /// </summary>
    public static void LoadStrict(nn.Module module, IReadOnlyDictionary<string, Tensor> weights, string source, string? hint = null)
    {
        var own = module.state_dict();
        var missing = own.Keys.Where(k => !weights.ContainsKey(k)).ToList();
        var unexpected = weights.Keys.Where(k => !own.ContainsKey(k)).ToList();
        var misShaped = own.Where(kv => weights.TryGetValue(kv.Key, out var w) && !w.shape.SequenceEqual(kv.Value.shape))
            .Select(kv => $"{kv.Key}: checkpoint {Shape(weights[kv.Key])}, model {Shape(kv.Value)}").ToList();
        if (missing.Count + unexpected.Count + misShaped.Count > 0)
            throw Mismatch($"{source} does not match the model ({own.Count} parameters expected, {weights.Count} in the file):",
                [("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", misShaped)], hint);
        using var _ = no_grad();
        foreach (var (key, target) in own)
        {
            var w = weights[key];
            if (!w.is_floating_point() && target.is_floating_point())
                throw new PagSharpException($"{source}: tensor '{key}' has dtype {w.dtype}, expected a floating-point tensor");
            target.copy_(w.to_type(target.dtype));
        }
    }

    /// <summary>The error for a checkpoint that does not fit: a header line, then each non-empty section (at most 40 items each), then the hint.</summary>
    public static PagSharpException Mismatch(string header, IEnumerable<(string Title, List<string> Items)> sections, string? hint = null)
    {
        var lines = new List<string> { header };
        foreach (var (title, items) in sections)
        {
            if (items.Count == 0) continue;
            lines.Add($"  {title} ({items.Count}):");
            lines.AddRange(items.Take(40).Select(i => "    " + i));
            if (items.Count > 40) lines.Add($"    … and {items.Count - 40} more");
        }
        if (hint is not null) lines.Add(hint);
        return new PagSharpException(string.Join(Environment.NewLine, lines));
    }

    /// <summary>
    /// Loads a weights file (<see cref="IO.StateDicts"/>: safetensors or a PyTorch zip, read without executing code)
    /// strictly into <paramref name="module"/>; <paramref name="patch"/> may complete the dictionary first (e.g.
    /// buffers a checkpoint omits). The file's tensors are released afterwards; on failure the module is disposed.
    /// </summary>
    public static T LoadFile<T>(T module, string path, string? hint = null, Action<Dictionary<string, Tensor>>? patch = null) where T : nn.Module
    {
        var weights = IO.StateDicts.Load(path);
        try
        {
            patch?.Invoke(weights);
            LoadStrict(module, weights, path, hint);
            return module;
        }
        catch
        {
            module.Dispose();
            throw;
        }
        finally
        {
            foreach (var w in weights.Values) w.Dispose();
        }
    }

    private static string Shape(Tensor t) => "[" + string.Join(",", t.shape) + "]";
}
