using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Imaging;
using PagSharp.IO;
using static TorchSharp.torch;

namespace PagSharp.Runs;

/// <summary>
/// The folder of one generation run, for every pipeline and command: a manifest (<c>run.json</c>: the settings and,
/// per sample, its index, seed and file), one PNG per sample (<c>00000.png</c>, …), optional per-batch tensors
/// (<c>.tensors/batch_00000.npy</c>) and a grid. Sample i belongs to batch ⌊i / BatchSize⌋; with a shard K/N only
/// batches b with b mod N = K are this folder's. Rerunning the same run into the folder skips the finished batches
/// (resume); a folder holding a run with other settings is refused, naming the differences. One process at a time:
/// the folder is locked while open, and a second process gets a clear refusal. Nothing is written before the first
/// batch is saved: a run that fails before it leaves the folder as it found it (a folder it created is removed).
/// Every file is written atomically.
/// </summary>
public sealed class RunFolder : IDisposable
{
    public const string ManifestFile = "run.json";
    public const string GridFile = "grid.png";
    public const string LockFile = ".lock";
    public const string TensorFolder = ".tensors";

    private readonly JsonObject _settings;
    private readonly Func<int, JsonObject> _sampleInfo;
    private readonly bool _createdFolder;
    private FileStream? _lock;
    private bool _manifestWritten;

    private RunFolder(string dir, JsonObject settings, int count, int batchSize, int shardK, int shardN, Func<int, JsonObject> sampleInfo, bool createdFolder)
    {
        Dir = dir;
        _settings = settings;
        Count = count;
        BatchSize = batchSize;
        ShardK = shardK;
        ShardN = shardN;
        _sampleInfo = sampleInfo;
        _createdFolder = createdFolder;
        int batches = (count + batchSize - 1) / batchSize;
        Batches = Enumerable.Range(0, batches).Where(b => b % shardN == shardK).ToArray();
    }

    public string Dir { get; }
    public int Count { get; }
    public int BatchSize { get; }
    public int ShardK { get; }
    public int ShardN { get; }
    /// <summary>The batches this folder holds (all, or this shard's), in order.</summary>
    public IReadOnlyList<int> Batches { get; }
    /// <summary>Every sample index of this folder's batches.</summary>
    public IEnumerable<int> Indices => Batches.SelectMany(IndicesOf);

    /// <summary>
    /// Opens <paramref name="dir"/> for a run of <paramref name="count"/> samples in batches of
    /// <paramref name="batchSize"/>: checks that it is not a file, that a manifest there holds the same
    /// <paramref name="settings"/>, and takes the folder's lock (creating the folder for it). Writes nothing else yet.
    /// </summary>
    /// <param name="dir">The run folder (created at the first save).</param>
    /// <param name="settings">Every setting that determines the samples (plain JSON values).</param>
    /// <param name="count">Number of samples of the whole run.</param>
    /// <param name="batchSize">Samples per batch.</param>
    /// <param name="shard">This folder's shard (K, N), or null for the whole run.</param>
    /// <param name="sampleInfo">The manifest entry of sample i (index, seed, file, label, …).</param>
    public static RunFolder Open(string dir, JsonObject settings, int count, int batchSize, (int K, int N)? shard, Func<int, JsonObject> sampleInfo)
    {
        if (count < 1) throw new PagSharpException($"Count must be ≥ 1 (got {count})");
        if (batchSize < 1) throw new PagSharpException($"BatchSize must be ≥ 1 (got {batchSize})");
        var (k, n) = shard ?? (0, 1);
        if (n < 1 || k < 0 || k >= n) throw new PagSharpException($"shard {k}/{n} must be K/N with 0 ≤ K < N");
        OutputPath.Check(dir, "output folder", isFolder: true);
        var full = Path.GetFullPath(dir);
        bool exists = Directory.Exists(full);
        string manifest = Path.Combine(full, ManifestFile);
        if (exists && File.Exists(manifest)) CheckSameRun(dir, manifest, settings);
        var run = new RunFolder(full, settings, count, batchSize, k, n, sampleInfo, createdFolder: !exists);
        run._manifestWritten = exists && File.Exists(manifest);
        run.TakeLock(); // a folder created here is removed again on Dispose if no batch was saved
        return run;
    }

    private static void CheckSameRun(string dir, string manifest, JsonObject settings)
    {
        JsonNode? existing;
        try { existing = JsonNode.Parse(File.ReadAllText(manifest))?["settings"]; }
        catch (JsonException) { existing = null; }
        if (existing is null || !JsonNode.DeepEquals(existing, settings))
            throw new PagSharpException($"{dir} holds a run with different settings ({Differences(existing, settings)}); choose another output folder or delete it");
    }

    /// <summary>The settings that differ between two manifests, as "key: old → new".</summary>
    public static string Differences(JsonNode? a, JsonObject b)
    {
        if (a is not JsonObject ao) return "unreadable run.json";
        var keys = ao.Select(kv => kv.Key).Union(b.Select(kv => kv.Key));
        return string.Join(", ", keys.Where(k => !JsonNode.DeepEquals(ao[k], b[k])).Select(k => $"{k}: {ao[k]?.ToJsonString() ?? "null"} → {b[k]?.ToJsonString() ?? "null"}"));
    }

    private void TakeLock()
    {
        if (_lock is not null) return;
        Directory.CreateDirectory(Dir);
        try
        {
            _lock = new FileStream(Path.Combine(Dir, LockFile), FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None, 1, FileOptions.DeleteOnClose);
        }
        catch (IOException)
        {
            throw new PagSharpException($"another process is writing the run in {Dir}; wait for it to finish, or split the work with shards (each process its own folder)");
        }
    }

    /// <summary>The sample indices of batch <paramref name="batch"/>.</summary>
    public int[] IndicesOf(int batch) => Enumerable.Range(batch * BatchSize, Math.Min(BatchSize, Count - batch * BatchSize)).ToArray();

    /// <summary>File name of sample i.</summary>
    public static string FileName(long index) => $"{index:D5}.png";

    public string ImagePath(long index) => Path.Combine(Dir, FileName(index));
    public string TensorPath(int batch) => Path.Combine(Dir, TensorFolder, $"batch_{batch:D5}.npy");

    /// <summary>Whether batch <paramref name="batch"/> is finished: its PNGs (when <paramref name="images"/>) and its tensor (when <paramref name="tensor"/>) exist.</summary>
    public bool IsDone(int batch, bool images = true, bool tensor = false) =>
        (!images || IndicesOf(batch).All(i => File.Exists(ImagePath(i)))) && (!tensor || File.Exists(TensorPath(batch)));

    /// <summary>
    /// Saves a finished batch: checks the values are finite (a diverged run fails here, before anything of it is
    /// written), writes the manifest on the first save, the per-batch tensor, then one PNG per sample.
    /// </summary>
    /// <param name="batch">The batch index.</param>
    /// <param name="images">[B, C, H, W] in [−1, 1] (model space; clipped when written), or null for tensor-only runs.</param>
    /// <param name="tensor">A tensor to keep for the batch (e.g. final samples or latents), or null.</param>
    public void SaveBatch(int batch, Tensor? images, Tensor? tensor = null)
    {
        var idx = IndicesOf(batch);
        foreach (var (what, t) in new[] { ("images", images), ("tensor", tensor) })
            if (t is not null)
            {
                if (t.shape[0] != idx.Length) throw new PagSharpException($"batch {batch} has {idx.Length} samples but its {what} hold {t.shape[0]}");
                if (!t.isfinite().all().item<bool>())
                    throw new PagSharpException($"the samples of batch {batch} hold NaN or infinite values: the run diverged (check the guidance scales and the initial noise); nothing of this batch was written");
            }
        TakeLock();
        WriteManifest();
        if (tensor is not null) Npy.Save(TensorPath(batch), tensor);
        if (images is not null)
            for (int j = 0; j < idx.Length; j++) Png.Save(ImagePath(idx[j]), images[j]);
    }

    private void WriteManifest()
    {
        if (_manifestWritten) return;
        var samples = new JsonArray(Indices.Select(i => (JsonNode)_sampleInfo(i)).ToArray());
        AtomicFile.WriteAllText(Path.Combine(Dir, ManifestFile), new JsonObject { ["settings"] = _settings.DeepClone(), ["samples"] = samples }
            .ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        _manifestWritten = true;
    }

    /// <summary>Writes <c>grid.png</c> of this folder's samples (read back from their PNGs), about square.</summary>
    public void SaveGrid(int channels)
    {
        var mine = Indices.ToArray();
        using var images = stack(mine.Select(i => Png.Load(ImagePath(i), channels: channels)).ToArray());
        using var grid = Grid.Make(images, (int)Math.Ceiling(Math.Sqrt(mine.Length)));
        Png.Save(Path.Combine(Dir, GridFile), grid);
    }

    /// <summary>The per-batch tensors of this folder's batches, concatenated in order.</summary>
    public Tensor CollectTensors() => cat(Batches.Select(b => Npy.Load(TensorPath(b))).ToArray(), 0);

    /// <summary>Releases the lock; a folder this run created and never wrote to is removed.</summary>
    public void Dispose()
    {
        _lock?.Dispose();
        _lock = null;
        if (_createdFolder && !_manifestWritten && Directory.Exists(Dir) && !Directory.EnumerateFileSystemEntries(Dir).Any())
            Directory.Delete(Dir);
    }
}
