using System.IO.Compression;
using System.Text;
using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>
/// An open PyTorch zip checkpoint: its pickle has been run by <see cref="SafeUnpickler"/>, and tensors are read from
/// their storages only when asked for. Storages shared by several tensors are read once.
/// </summary>
internal sealed class TorchZipReader : IDisposable
{
    /// <summary>Largest data.pkl accepted (a state dict's pickle is about 200 bytes per tensor).</summary>
    public const long MaxPickleBytes = 512L << 20;

    /// <summary>Largest tensor a repeating (zero-stride) view may expand to, unless the file itself is larger.</summary>
    public const long MaxExpandedBytes = 256L << 20;

    private readonly string _file;
    private readonly FileStream _stream;
    private readonly ZipArchive _zip;
    private readonly string _prefix;
    private readonly Dictionary<string, Tensor> _storages = new(StringComparer.Ordinal);
    private readonly Dictionary<string, StorageRef> _storageRefs = new(StringComparer.Ordinal);
    private readonly Dictionary<string, int> _uses = new(StringComparer.Ordinal);

    /// <summary>The unpickled top-level object.</summary>
    public object? Root { get; }

    public TorchZipReader(string file)
    {
        _file = file;
        _stream = FileOpen.Read(file, "PyTorch checkpoint");
        try
        {
            switch (FileSniffer.Sniff(_stream))
            {
                case FileKind.LegacyTorch: throw FileSniffer.LegacyError(file);
                case FileKind.Pickle: throw FileSniffer.PickleError(file);
                case not FileKind.Zip:
                    throw new PagSharpException($"'{file}' is not a PyTorch zip checkpoint: it does not start with a zip signature (torch.save writes zip archives). Supported state dict formats: {StateDicts.SupportedFormats}.");
            }
            _zip = Guard("reading the zip directory", () => new ZipArchive(_stream, ZipArchiveMode.Read, leaveOpen: true));
            _prefix = FindPrefix();
            CheckByteOrder();
            ZipArchiveEntry pkl = _zip.GetEntry(_prefix + "data.pkl")!;
            byte[] pickle = ReadEntry(pkl, MaxPickleBytes);
            Root = new SafeUnpickler(pickle, file, pkl.FullName, PersistentLoad).Load();
        }
        catch (Exception e) when (e is InvalidDataException or IOException or NotSupportedException)
        {
            // ZipArchive reads its directory lazily, so damage can surface on any access to it.
            Dispose();
            throw Error($"the zip structure is damaged: {e.Message}", e);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Reads a tensor: its storage, then a contiguous copy of the strided view the pickle describes.</summary>
    public Tensor Materialize(string key, TensorRef r)
    {
        StorageRef s = r.Storage;
        long? numel = TensorBytes.CheckedNumel(r.Size);
        if (numel is null)
            throw TensorError(key, $"size {TensorBytes.Format(r.Size)} is too large to address");
        if (numel.Value > 0)
        {
            // The last element the view touches must lie inside the storage.
            long last = r.Offset;
            try
            {
                for (int i = 0; i < r.Size.Length; i++) last = checked(last + (r.Size[i] - 1) * r.Stride[i]);
            }
            catch (OverflowException)
            {
                throw TensorError(key, $"offset {r.Offset}, size {TensorBytes.Format(r.Size)} and stride {TensorBytes.Format(r.Stride)} overflow");
            }
            if (last >= s.Numel)
                throw TensorError(key, $"offset {r.Offset}, size {TensorBytes.Format(r.Size)} and stride {TensorBytes.Format(r.Stride)} reach element {last}, but storage '{s.Key}' has {s.Numel} elements");
            // Only a view that repeats elements (a zero or overlapping stride) can have more elements than its storage;
            // bound what it may expand to, so a tiny file cannot demand a huge allocation.
            long cap = Math.Max(_stream.Length, MaxExpandedBytes);
            if (numel.Value > s.Numel && numel.Value > cap / s.DType.Size)
                throw TensorError(key, $"size {TensorBytes.Format(r.Size)} with stride {TensorBytes.Format(r.Stride)} repeats storage '{s.Key}' ({s.Numel} elements) into {numel.Value} elements, more than the {cap} bytes allowed");
        }
        bool lastUse = true;
        if (_uses.TryGetValue(s.Key, out int uses))
        {
            lastUse = uses <= 1;
            _uses[s.Key] = uses - 1;
        }
        bool wholeStorage = r.Offset == 0 && numel.Value == s.Numel && IsRowMajor(r.Size, r.Stride);
        if (lastUse && wholeStorage && !_storages.ContainsKey(s.Key))
        {
            // The common case: one tensor is its whole storage, so the storage becomes the tensor without a copy.
            using Tensor flat = ReadStorage(s, key);
            return flat.reshape(r.Size);
        }

        Tensor storage = LoadStorage(s, key);
        Tensor result = empty(r.Size, s.DType.ScalarType, CPU);
        using (Tensor view = storage.as_strided(r.Size, r.Stride, numel.Value > 0 ? r.Offset : 0)) result.copy_(view);
        if (lastUse)
        {
            _storages.Remove(s.Key);
            storage.Dispose();
        }
        return result;
    }

    /// <summary>
    /// Records how many of the tensors about to be materialized use each storage, so that a storage used by one
    /// tensor is not copied and a shared one is freed after its last use.
    /// </summary>
    public void PlanUses(IEnumerable<TensorRef> refs)
    {
        foreach (TensorRef r in refs) _uses[r.Storage.Key] = _uses.GetValueOrDefault(r.Storage.Key) + 1;
    }

    private static bool IsRowMajor(long[] size, long[] stride)
    {
        long expected = 1;
        for (int i = size.Length - 1; i >= 0; i--)
        {
            if (size[i] != 1 && stride[i] != expected) return false;
            expected *= size[i];
        }
        return true;
    }

    private Tensor LoadStorage(StorageRef s, string tensorKey)
    {
        if (_storages.TryGetValue(s.Key, out Tensor? cached)) return cached;
        Tensor t = ReadStorage(s, tensorKey);
        _storages[s.Key] = t;
        return t;
    }

    private Tensor ReadStorage(StorageRef s, string tensorKey)
    {
        string name = _prefix + "data/" + s.Key;
        ZipArchiveEntry entry = _zip.GetEntry(name)
            ?? throw TensorError(tensorKey, $"its storage entry '{name}' is missing from the zip");
        long bytes;
        try { bytes = checked(s.Numel * s.DType.Size); }
        catch (OverflowException) { throw TensorError(tensorKey, $"storage '{s.Key}' claims {s.Numel} elements, too many to address"); }
        if (entry.Length < bytes)
            throw TensorError(tensorKey, $"storage '{s.Key}' claims {s.Numel} elements of {s.DType.ScalarType} ({bytes} bytes), but zip entry '{name}' holds only {entry.Length} bytes");

        return Guard($"reading zip entry '{name}'", () =>
        {
            using Stream es = entry.Open();
            if (bytes <= _stream.Length) return TensorBytes.Read(es, [s.Numel], s.DType);
            // A compressed entry may claim more bytes than the file has: decompress first, allocate after.
            using var buffered = new MemoryStream();
            CopyAtMost(es, buffered, bytes);
            if (buffered.Length < bytes) throw new EndOfStreamException();
            buffered.Position = 0;
            return TensorBytes.Read(buffered, [s.Numel], s.DType);
        });
    }

    private object? PersistentLoad(object? pid)
    {
        // ('storage', storage_type, key, location, numel)
        if (pid is not PickleTuple { Items: [string tag, var type, string key, string location, long numel] } || tag != "storage")
            throw Error($"a persistent id must be ('storage', storage class, key, location, numel), but it is a {SafeUnpickler.Describe(pid)}");
        if (type is not PickleGlobal { Kind: PickleGlobalKind.Storage, StorageType: { } dtype })
            throw Error($"storage '{key}' has type {SafeUnpickler.Describe(type)}, which is not a storage class");
        if (numel < 0) throw Error($"storage '{key}' has a negative element count {numel}");
        if (key.Length == 0 || key.Length > 64 || !key.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' || c == '.') || key.Contains(".."))
            throw Error($"storage key '{key}' is not a plain name");
        var r = new StorageRef(key, dtype, location, numel);
        if (_storageRefs.TryGetValue(key, out StorageRef? prior) && prior != r)
            throw Error($"storage '{key}' is referenced twice with different types or sizes");
        _storageRefs[key] = r;
        return r;
    }

    private string FindPrefix()
    {
        var candidates = _zip.Entries
            .Where(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal) && e.FullName.IndexOf('/') == e.FullName.Length - "/data.pkl".Length)
            .ToList();
        if (candidates.Count == 0)
            throw Error($"no '<name>/data.pkl' entry, so this zip is not a torch.save checkpoint. {KeyList.Describe(_zip.Entries.Select(e => e.FullName), "zip entries")}");
        if (candidates.Count > 1)
            throw Error($"several data.pkl entries ({string.Join(", ", candidates.Select(c => c.FullName))})");
        string full = candidates[0].FullName;
        return full[..(full.Length - "data.pkl".Length)];
    }

    private void CheckByteOrder()
    {
        ZipArchiveEntry? e = _zip.GetEntry(_prefix + "byteorder");
        if (e is null) return;
        string order = Encoding.ASCII.GetString(ReadEntry(e, 64)).Trim();
        if (order != "little")
            throw Error($"byteorder is '{order}'; only little-endian checkpoints are supported");
    }

    private byte[] ReadEntry(ZipArchiveEntry e, long max)
    {
        if (e.Length > max)
            throw Error($"zip entry '{e.FullName}' is {e.Length} bytes, more than the {max} allowed");
        return Guard($"reading zip entry '{e.FullName}'", () =>
        {
            using Stream s = e.Open();
            var ms = new MemoryStream();
            CopyAtMost(s, ms, e.Length);
            if (ms.Length != e.Length) throw new EndOfStreamException();
            return ms.ToArray();
        });
    }

    private static void CopyAtMost(Stream from, Stream to, long max)
    {
        var buf = new byte[1 << 16];
        long left = max;
        while (left > 0)
        {
            int n = from.Read(buf, 0, (int)Math.Min(buf.Length, left));
            if (n == 0) break;
            to.Write(buf, 0, n);
            left -= n;
        }
    }

    private T Guard<T>(string what, Func<T> f)
    {
        try
        {
            return f();
        }
        catch (Exception e) when (e is InvalidDataException or IOException or NotSupportedException)
        {
            throw Error($"{what} failed: {e.Message}", e);
        }
    }

    private PagSharpException Error(string problem, Exception? inner = null)
    {
        string msg = $"Invalid PyTorch checkpoint '{_file}': {problem}.";
        return inner is null ? new PagSharpException(msg) : new PagSharpException(msg, inner);
    }

    private PagSharpException TensorError(string key, string problem) =>
        new($"Invalid PyTorch checkpoint '{_file}', tensor '{key}': {problem}.");

    public void Dispose()
    {
        foreach (Tensor t in _storages.Values) t.Dispose();
        _storages.Clear();
        _zip?.Dispose();
        _stream.Dispose();
    }
}
