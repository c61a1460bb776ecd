using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>
/// Loads one tensor named by a command-line style spec: <c>FILE.npy</c>, <c>FILE.safetensors:KEY</c>, or
/// <c>FILE.pt:KEY</c> (also .pth and .bin, PyTorch zip checkpoints).
/// </summary>
public static class TensorSpec
{
    private static readonly string[] KeyedExtensions = [".safetensors", ".pt", ".pth", ".bin"];

    /// <summary>Loads the tensor <paramref name="spec"/> names.</summary>
    /// <exception cref="PagSharpException">The spec is malformed, the file is bad, or the key is missing (the message lists up to 20 keys the file has).</exception>
    public static Tensor Load(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        (string file, string? key) = Parse(spec);
        string ext = Path.GetExtension(file).ToLowerInvariant();
        if (ext == ".npy")
        {
            if (key != null) throw new PagSharpException($"Tensor spec '{spec}': a .npy file holds one array, so it takes no ':KEY'.");
            return Npy.Load(file);
        }
        if (key is null)
            throw new PagSharpException($"Tensor spec '{spec}' names a {ext} file but no tensor; write it as FILE{ext}:KEY. {Usage}");
        return StateDicts.LoadTensor(file, key);
    }

    private const string Usage = "A tensor spec is FILE.npy, FILE.safetensors:KEY or FILE.pt:KEY (.pth and .bin also work).";

    /// <summary>Splits a spec into its file and optional key; the key follows the first ":" that comes right after a known extension.</summary>
    internal static (string File, string? Key) Parse(string spec)
    {
        // Keys may themselves contain ':' or dots, so split at the first place where a known extension is followed by ':'.
        int best = -1;
        string? bestExt = null;
        foreach (string ext in KeyedExtensions)
        {
            int at = spec.IndexOf(ext + ":", StringComparison.OrdinalIgnoreCase);
            if (at > 0 && (best < 0 || at < best)) (best, bestExt) = (at, ext);
        }
        if (bestExt != null)
        {
            string file = spec[..(best + bestExt.Length)];
            string key = spec[(best + bestExt.Length + 1)..];
            if (key.Length == 0) throw new PagSharpException($"Tensor spec '{spec}' has an empty key after ':'. {Usage}");
            return (file, key);
        }
        if (spec.EndsWith(".npy", StringComparison.OrdinalIgnoreCase) || KeyedExtensions.Any(e => spec.EndsWith(e, StringComparison.OrdinalIgnoreCase)))
            return (spec, null);
        throw new PagSharpException($"Tensor spec '{spec}' is not understood. {Usage}");
    }
}
