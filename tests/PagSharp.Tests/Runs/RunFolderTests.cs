using System.Diagnostics;
using System.Text.Json.Nodes;
using PagSharp.Runs;
using static TorchSharp.torch;

namespace PagSharp.Tests.Runs;

/// <summary>The run engine every generation command uses: resume, shards, refusal of another run, locking, no writes before the first batch.</summary>
public sealed class RunFolderTests
{
    private static JsonObject Settings(double scale = 2) => new() { ["pag_scale"] = scale, ["seed"] = 0 };
    private static JsonObject Info(int i) => new() { ["index"] = i, ["seed"] = i, ["file"] = RunFolder.FileName(i) };
    private static Tensor Images(int n, float v) => full(new long[] { n, 1, 4, 4 }, v);

    [Fact]
    public void BatchesAreSavedAndARerunSkipsThem()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("run");
        using (var run = RunFolder.Open(dir, Settings(), count: 5, batchSize: 2, shard: null, Info))
        {
            Assert.Equal(new[] { 0, 1, 2 }, run.Batches);
            Assert.Equal(new[] { 4 }, run.IndicesOf(2));
            Assert.False(File.Exists(Path.Combine(dir, RunFolder.ManifestFile)), "the manifest is written with the first batch, not before");
            run.SaveBatch(0, Images(2, 0.5f), Images(2, 0.5f));
            Assert.True(run.IsDone(0, tensor: true));
            Assert.False(run.IsDone(1));
        }
        var manifest = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, RunFolder.ManifestFile)))!;
        Assert.Equal(2.0, (double?)manifest["settings"]!["pag_scale"]);
        Assert.Equal(5, manifest["samples"]!.AsArray().Count);
        using (var again = RunFolder.Open(dir, Settings(), 5, 2, null, Info))
        {
            Assert.True(again.IsDone(0, tensor: true));
            again.SaveBatch(1, Images(2, 0f));
            again.SaveBatch(2, Images(1, -0.5f));
            again.SaveGrid(1);
        }
        Assert.True(File.Exists(Path.Combine(dir, RunFolder.GridFile)));
        Assert.False(File.Exists(Path.Combine(dir, RunFolder.LockFile)), "the lock file is removed when the run closes");
    }

    [Fact]
    public void AnotherRunIsRefusedNamingTheDifference()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("run");
        using (var run = RunFolder.Open(dir, Settings(2), 2, 2, null, Info)) run.SaveBatch(0, Images(2, 0f));
        var e = Assert.Throws<PagSharpException>(() => RunFolder.Open(dir, Settings(3), 2, 2, null, Info));
        Assert.Contains("pag_scale: 2 → 3", e.Message);
    }

    [Fact]
    public void ShardsHoldTheirBatchesOnly()
    {
        using var tmp = new TempDir();
        using var run = RunFolder.Open(tmp.File("s1"), Settings(), count: 7, batchSize: 2, shard: (1, 2), Info);
        Assert.Equal(new[] { 1, 3 }, run.Batches);
        Assert.Equal(new[] { 2, 3, 6 }, run.Indices);
        Assert.Throws<PagSharpException>(() => RunFolder.Open(tmp.File("bad"), Settings(), 7, 2, (2, 2), Info));
    }

    [Fact]
    public void ARunThatWritesNoBatchLeavesNothing()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("run");
        using (var run = RunFolder.Open(dir, Settings(), 2, 2, null, Info))
        {
            var e = Assert.Throws<PagSharpException>(() => run.SaveBatch(0, Images(2, float.NaN)));
            Assert.Contains("NaN", e.Message);
        }
        Assert.False(Directory.Exists(dir), "the folder this run created was left behind");

        // An existing folder is left as it was (only the lock file came and went).
        string existing = tmp.File("existing");
        Directory.CreateDirectory(existing);
        File.WriteAllText(Path.Combine(existing, "notes.txt"), "mine");
        using (RunFolder.Open(existing, Settings(), 2, 2, null, Info)) { }
        Assert.Equal(new[] { "notes.txt" }, Directory.EnumerateFileSystemEntries(existing).Select(Path.GetFileName));
    }

    [Fact]
    public void AFileIsNotARunFolder()
    {
        using var tmp = new TempDir();
        File.WriteAllText(tmp.File("f"), "x");
        Assert.Contains("existing file", Assert.Throws<PagSharpException>(() => RunFolder.Open(tmp.File("f"), Settings(), 1, 1, null, Info)).Message);
    }

    /// <summary>A second <c>pag</c> process on a folder this one holds is refused with a clear message, and writes nothing.</summary>
    [Fact]
    public void ASecondProcessOnTheSameFolderIsRefused()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("run");
        using var run = RunFolder.Open(dir, Settings(), 2, 2, null, Info);
        string pag = Path.Combine(AppContext.BaseDirectory, "pag.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { pag, "sample", "--count", "2", "--steps", "2", "--output", dir }) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(120_000), "the second process did not end");
        Assert.Equal(2, p.ExitCode);
        Assert.Contains("another process is writing the run", output.ReplaceLineEndings(" ").Replace("  ", " "));
        Assert.Equal(new[] { RunFolder.LockFile }, Directory.EnumerateFileSystemEntries(dir).Select(Path.GetFileName));
    }
}
