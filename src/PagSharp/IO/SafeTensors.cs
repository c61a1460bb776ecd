using System.Text;
using System.Text.Json;
using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>
/// Reads and writes the safetensors format: an 8-byte little-endian header length, a JSON header that maps tensor
/// names to dtype, shape and byte range, then the raw row-major little-endian tensor data.
/// Every malformed input raises a <see cref="PagSharpException"/> that names the file and, where there is one, the tensor.
/// </summary>
public static class SafeTensors
{
    /// <summary>Loads every tensor of the file onto the CPU, in the file's dtype, keyed by name in header order.</summary>
    /// <param name="path">A .safetensors file.</param>
    /// <returns>A new dictionary; the caller owns (and may dispose) the tensors.</returns>
    public static Dictionary<string, Tensor> Load(string path)
    {
        using FileStream fs = Open(path);
        SafeTensorsHeader header = ReadHeader(fs, path);
        var result = new Dictionary<string, Tensor>(header.Entries.Count, StringComparer.Ordinal);
        try
        {
            foreach (SafeTensorsEntry e in header.Entries)
                result.Add(e.Name, ReadTensor(fs, header, e, path));
            return result;
        }
        catch
        {
            foreach (Tensor t in result.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>Loads the one tensor named <paramref name="key"/>, reading only its bytes.</summary>
    /// <exception cref="PagSharpException">The file is malformed, or has no such tensor (the message lists the names it has).</exception>
    public static Tensor LoadTensor(string path, string key)
    {
        using FileStream fs = Open(path);
        SafeTensorsHeader header = ReadHeader(fs, path);
        SafeTensorsEntry entry = header.Entries.FirstOrDefault(e => e.Name == key)
            ?? throw new PagSharpException($"Safetensors file '{path}' has no tensor '{key}'. {KeyList.Describe(header.Entries.Select(e => e.Name))}");
        return ReadTensor(fs, header, entry, path);
    }

    /// <summary>
    /// Opens the file for reading tensors one at a time (the header is read once): for loading large checkpoints
    /// without holding all of their tensors in memory at once.
    /// </summary>
    public static SafeTensorsReader OpenReader(string path)
    {
        var fs = Open(path);
        try { return new SafeTensorsReader(fs, ReadHeader(fs, path), path); }
        catch { fs.Dispose(); throw; }
    }

    internal static Tensor Read(FileStream fs, SafeTensorsHeader header, SafeTensorsEntry e, string path) => ReadTensor(fs, header, e, path);

    /// <summary>The tensor names of the file, in header order, without reading any tensor data.</summary>
    public static IReadOnlyList<string> ReadKeys(string path)
    {
        using FileStream fs = Open(path);
        return ReadHeader(fs, path).Entries.Select(e => e.Name).ToList();
    }

    /// <summary>The file's <c>__metadata__</c> string map (empty when the file has none).</summary>
    public static IReadOnlyDictionary<string, string> ReadMetadata(string path)
    {
        using FileStream fs = Open(path);
        return ReadHeader(fs, path).Metadata;
    }

    /// <summary>
    /// Writes <paramref name="tensors"/> to <paramref name="path"/> atomically: the header lists them in the given
    /// order, padded with spaces to a multiple of 8 bytes, and their data follows contiguously in the same order.
    /// </summary>
    /// <param name="path">Destination file; replaced only once the whole file has been written.</param>
    /// <param name="tensors">Names and tensors; names must be unique and not <c>__metadata__</c>.</param>
    /// <param name="metadata">Optional string map stored as <c>__metadata__</c>.</param>
    /// <exception cref="PagSharpException">A duplicate or reserved name, or a dtype safetensors cannot hold here.</exception>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(tensors);
        TensorBytes.RequireLittleEndian();
        var items = tensors.ToList();
        byte[] header = BuildHeader(path, items, metadata);
        AtomicFile.WriteStream(path, stream =>
        {
            Span<byte> len = stackalloc byte[8];
            BitConverter.TryWriteBytes(len, (ulong)header.Length);
            stream.Write(len);
            stream.Write(header);
            foreach (var (_, t) in items) TensorBytes.Write(stream, t);
        });
    }

    private static byte[] BuildHeader(string path, List<KeyValuePair<string, Tensor>> items, IReadOnlyDictionary<string, string>? metadata)
    {
        var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                w.WriteStartObject("__metadata__");
                foreach (var (k, v) in metadata)
                {
                    if (k is null || v is null)
                        throw new PagSharpException($"Cannot save safetensors file '{path}': metadata key '{k}' has a null key or value; metadata must map strings to strings.");
                    w.WriteString(k, v);
                }
                w.WriteEndObject();
            }
            var names = new HashSet<string>(StringComparer.Ordinal);
            long offset = 0;
            foreach (var (name, t) in items)
            {
                if (name is null) throw new PagSharpException($"Cannot save safetensors file '{path}': a tensor name is null.");
                if (t is null) throw new PagSharpException($"Cannot save safetensors file '{path}': tensor '{name}' is null.");
                if (name == "__metadata__")
                    throw new PagSharpException($"Cannot save safetensors file '{path}': '__metadata__' is reserved for the metadata map and cannot name a tensor.");
                if (!names.Add(name))
                    throw new PagSharpException($"Cannot save safetensors file '{path}': tensor '{name}' is given twice; names must be unique.");
                TensorDType dtype = TensorDTypes.FromScalarType(t.dtype)
                    ?? throw new PagSharpException($"Cannot save safetensors file '{path}', tensor '{name}': dtype {t.dtype} is not supported; supported dtypes are {TensorDTypes.ScalarTypeNames}.");
                long bytes = checked(t.numel() * dtype.Size);
                w.WriteStartObject(name);
                w.WriteString("dtype", dtype.SafeTensorsName);
                w.WriteStartArray("shape");
                foreach (long d in t.shape) w.WriteNumberValue(d);
                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }
            w.WriteEndObject();
        }
        int padded = (int)((buffer.Length + 7) / 8 * 8);
        while (buffer.Length < padded) buffer.WriteByte((byte)' ');
        return buffer.ToArray();
    }

    private static Tensor ReadTensor(FileStream fs, SafeTensorsHeader header, SafeTensorsEntry e, string path)
    {
        try
        {
            fs.Position = header.DataStart + e.Begin;
            return TensorBytes.Read(fs, e.Shape, e.DType);
        }
        catch (EndOfStreamException)
        {
            throw SafeTensorsHeader.TensorError(path, e.Name, "the file ended before the tensor's data (was it truncated while being read?)");
        }
    }

    private static SafeTensorsHeader ReadHeader(FileStream fs, string path)
    {
        try
        {
            return SafeTensorsHeader.Read(fs, path);
        }
        catch (IOException ex)
        {
            throw new PagSharpException($"Cannot read safetensors file '{path}': {ex.Message}", ex);
        }
    }

    private static FileStream Open(string path) => FileOpen.Read(path, "safetensors file");
}

/// <summary>A safetensors file open for reading single tensors (see <see cref="SafeTensors.OpenReader"/>).</summary>
public sealed class SafeTensorsReader : IDisposable
{
    private readonly FileStream _fs;
    private readonly SafeTensorsHeader _header;
    private readonly Dictionary<string, SafeTensorsEntry> _entries;

    internal SafeTensorsReader(FileStream fs, SafeTensorsHeader header, string path)
    {
        _fs = fs;
        _header = header;
        Path = path;
        _entries = header.Entries.ToDictionary(e => e.Name, StringComparer.Ordinal);
        Shapes = header.Entries.ToDictionary(e => e.Name, e => e.Shape, StringComparer.Ordinal);
    }

    public string Path { get; }

    /// <summary>Every tensor's shape, by name.</summary>
    public IReadOnlyDictionary<string, long[]> Shapes { get; }

    /// <summary>The tensor named <paramref name="key"/> (CPU, the file's dtype); the caller owns it.</summary>
    public Tensor Read(string key) => _entries.TryGetValue(key, out var e) ? SafeTensors.Read(_fs, _header, e, Path)
        : throw new PagSharpException($"Safetensors file '{Path}' has no tensor '{key}'");

    public void Dispose() => _fs.Dispose();
}
