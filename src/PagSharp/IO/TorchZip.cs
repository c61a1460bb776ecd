using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>
/// Loads PyTorch state dicts saved by <c>torch.save</c> in its zip format (.pt, .pth, .bin). The pickle inside is
/// read by a restricted unpickler that accepts only tensors, storages, dicts, lists, tuples and scalars: a file that
/// references any other Python global is refused, and nothing from the file is ever executed.
/// </summary>
public static class TorchZip
{
    /// <summary>The nested keys <see cref="LoadStateDict"/> tries, in order, when the top level holds no tensors.</summary>
    public static readonly IReadOnlyList<string> WellKnownStateDictKeys = ["state_dict", "model", "module", "ema", "model_ema", "params"];

    /// <summary>
    /// Loads the tensor entries of the top-level dict (non-tensor entries are skipped), in pickle order, as contiguous
    /// CPU tensors in their stored dtype. Storage offsets and strides are honoured.
    /// </summary>
    /// <exception cref="PagSharpException">The file is malformed, not a zip checkpoint, references a disallowed global, or
    /// holds no tensors at the top level (the message names nested dicts that could be loaded with <see cref="LoadStateDict"/>).</exception>
    public static Dictionary<string, Tensor> Load(string path)
    {
        using var reader = new TorchZipReader(path);
        PickleDict top = TopDict(reader, path);
        if (!HasTensors(top))
            throw new PagSharpException($"PyTorch checkpoint '{path}' has no tensors at its top level. {NestedHint(top)}");
        return Materialize(reader, top);
    }

    /// <summary>
    /// Loads a state dict nested in the checkpoint. With <paramref name="key"/> given, loads the dict stored under it
    /// at the top level (e.g. "state_dict", "model", "ema"). With <paramref name="key"/> null, loads the top level if it
    /// holds tensors, otherwise the first of <see cref="WellKnownStateDictKeys"/> that holds a dict with tensors.
    /// </summary>
    /// <exception cref="PagSharpException">The key is missing or not a dict (the message lists the top-level keys), or the file is bad.</exception>
    public static Dictionary<string, Tensor> LoadStateDict(string path, string? key = null)
    {
        using var reader = new TorchZipReader(path);
        return Materialize(reader, SelectStateDict(reader, path, key));
    }

    /// <summary>Loads one tensor of the state dict <see cref="LoadStateDict"/> would pick with a null key, reading only its storage.</summary>
    internal static Tensor LoadTensor(string path, string key)
    {
        using var reader = new TorchZipReader(path);
        PickleDict dict = SelectStateDict(reader, path, null);
        if (!dict.TryGet(key, out object? v) || v is not TensorRef r)
            throw new PagSharpException($"PyTorch checkpoint '{path}' has no tensor '{key}'. {KeyList.Describe(TensorKeys(dict))}");
        return reader.Materialize(key, r);
    }

    private static PickleDict SelectStateDict(TorchZipReader reader, string path, string? key)
    {
        PickleDict top = TopDict(reader, path);
        if (key is null)
        {
            if (HasTensors(top)) return top;
            foreach (string k in WellKnownStateDictKeys)
                if (top.TryGet(k, out object? v) && v is PickleDict d && HasTensors(d)) return d;
            throw new PagSharpException($"PyTorch checkpoint '{path}' has no tensors at its top level nor under any of {string.Join(", ", WellKnownStateDictKeys.Select(k => $"'{k}'"))}. {NestedHint(top)}");
        }
        if (!top.TryGet(key, out object? nested))
            throw new PagSharpException($"PyTorch checkpoint '{path}' has no top-level key '{key}'. {KeyList.Describe(top.StringKeys, "top-level keys")}");
        return nested as PickleDict
            ?? throw new PagSharpException($"PyTorch checkpoint '{path}': top-level key '{key}' holds a {SafeUnpickler.Describe(nested)}, not a dict of tensors. {NestedHint(top)}");
    }

    private static PickleDict TopDict(TorchZipReader reader, string path) =>
        reader.Root as PickleDict
        ?? throw new PagSharpException($"PyTorch checkpoint '{path}' holds a {SafeUnpickler.Describe(reader.Root)} at its top level, not a state dict (a dict of tensors).");

    private static bool HasTensors(PickleDict d) => d.Entries.Any(e => e.Key is string && e.Value is TensorRef);

    private static IEnumerable<string> TensorKeys(PickleDict d) =>
        d.Entries.Where(e => e.Key is string && e.Value is TensorRef).Select(e => (string)e.Key!);

    private static string NestedHint(PickleDict top)
    {
        var nested = top.Entries.Where(e => e.Key is string && e.Value is PickleDict).Select(e => $"'{e.Key}'").ToList();
        return nested.Count == 0
            ? KeyList.Describe(top.StringKeys, "top-level keys")
            : $"It holds dicts under {string.Join(", ", nested.Take(KeyList.Shown))}; load one with TorchZip.LoadStateDict(path, key).";
    }

    private static Dictionary<string, Tensor> Materialize(TorchZipReader reader, PickleDict dict)
    {
        var result = new Dictionary<string, Tensor>(StringComparer.Ordinal);
        reader.PlanUses(dict.Entries.Where(e => e.Key is string).Select(e => e.Value).OfType<TensorRef>());
        try
        {
            foreach (var (k, v) in dict.Entries)
                if (k is string key && v is TensorRef r)
                    result[key] = reader.Materialize(key, r);
            return result;
        }
        catch
        {
            foreach (Tensor t in result.Values) t.Dispose();
            throw;
        }
    }
}
