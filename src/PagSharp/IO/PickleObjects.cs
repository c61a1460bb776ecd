using TorchSharp;

namespace PagSharp.IO;

// The only kinds of value the safe unpickler ever creates. Python lists become List<object?>, strings string,
// integers long, floats double, bools bool, None null.

/// <summary>A Python tuple.</summary>
internal sealed class PickleTuple(object?[] items)
{
    public object?[] Items { get; } = items;
}

/// <summary>A Python byte string (BINSTRING / SHORT_BINSTRING / BINBYTES).</summary>
internal sealed class PickleBytes(byte[] value)
{
    public byte[] Value { get; } = value;
}

/// <summary>A Python dict or OrderedDict, keeping insertion order.</summary>
internal sealed class PickleDict
{
    private readonly List<KeyValuePair<object?, object?>> _entries = [];
    private readonly Dictionary<object, int> _index = [];

    public IReadOnlyList<KeyValuePair<object?, object?>> Entries => _entries;

    public void Set(object? key, object? value)
    {
        // Only plain scalar keys are hashed; other keys (tuples, None) are kept as given, which is all a loader needs.
        if (key is string or long or bool or double)
        {
            if (_index.TryGetValue(key, out int i))
            {
                _entries[i] = new(key, value);
                return;
            }
            _index[key] = _entries.Count;
        }
        _entries.Add(new(key, value));
    }

    public bool TryGet(string key, out object? value)
    {
        if (_index.TryGetValue(key, out int i))
        {
            value = _entries[i].Value;
            return true;
        }
        value = null;
        return false;
    }

    public IEnumerable<string> StringKeys => _entries.Select(e => e.Key).OfType<string>();
}

/// <summary>What an allow-listed global names.</summary>
internal enum PickleGlobalKind { OrderedDict, RebuildTensorV2, RebuildParameter, Storage }

/// <summary>An allow-listed global; for storage classes, the element type they hold.</summary>
internal sealed record PickleGlobal(string Module, string Name, PickleGlobalKind Kind, TensorDType? StorageType = null)
{
    public string FullName => $"{Module}.{Name}";
}

/// <summary>A storage reference made by BINPERSID: a zip entry <c>data/Key</c> holding <c>Numel</c> elements.</summary>
internal sealed record StorageRef(string Key, TensorDType DType, string Location, long Numel);

/// <summary>A tensor described by <c>_rebuild_tensor_v2</c>: a strided view of a storage, not yet read.</summary>
internal sealed record TensorRef(StorageRef Storage, long Offset, long[] Size, long[] Stride);
