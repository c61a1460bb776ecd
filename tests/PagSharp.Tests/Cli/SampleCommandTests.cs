using System.Text.Json.Nodes;
using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Cli;

/// <summary>Model A's config file plus one finished <c>pag sample</c> run (PAG on middle_block.1, s = 2), made once.</summary>
public sealed class SampleRunFixture : IDisposable
{
    internal AdmACli Adm { get; } = new();
    public Dictionary<string, Tensor> Expected { get; } = AdmA.Tensors("sampling.safetensors");
    public string MainDir { get; }
    public string MainTensor { get; }
    public (int Exit, string Output) MainResult { get; }

    public SampleRunFixture()
    {
        MainDir = Adm.Dir.File("main");
        MainTensor = Adm.Dir.File("main.npy");
        MainResult = Pag.Run(Args(MainDir, MainTensor, "--pag-scale", "2", "--batch-size", "2"));
    }

    /// <summary>
    /// The sample command on model A from the fixture x_T (4 samples), DDIM-10, PAG layers middle_block.1.
    /// <paramref name="extra"/> holds option/value pairs (or <c>--name=value</c>); an option given there replaces the
    /// default one.
    /// </summary>
    public string[] Args(string output, string? tensor, params string[] extra)
    {
        var defaults = new List<(string Name, string Value)>
        {
            ("--config", Adm.Config), ("--checkpoint", Adm.Weights), ("--init-noise", Adm.InitNoise), ("--steps", "10"),
            ("--sampler", "ddim"), ("--pag-layers", "middle_block.1"), ("--output", output),
        };
        if (tensor is not null) defaults.Add(("--save-tensor", tensor));
        var given = new List<string>();
        for (int i = 0; i < extra.Length; i++)
        {
            if (extra[i].Contains('=')) { given.Add(extra[i]); continue; }
            given.Add(extra[i]);
            given.Add(extra[++i]);
        }
        var args = new List<string> { "sample" };
        foreach (var (name, value) in defaults)
            if (!given.Contains(name)) args.AddRange(new[] { name, value });
        args.AddRange(given);
        return args.ToArray();
    }

    public void Dispose()
    {
        TensorAssert.DisposeAll(Expected);
        Adm.Dispose();
    }
}

[Collection(CliCollection.Name)]
public class SampleCommandTests(SampleRunFixture fx) : IClassFixture<SampleRunFixture>
{
    private const double SampleTol = 1e-3;
    private static readonly string[] SampleFiles = { "00000.png", "00001.png", "00002.png", "00003.png" };

    private static string[] VisibleFiles(string dir) =>
        Directory.EnumerateFiles(dir).Select(f => Path.GetFileName(f)!).Where(f => !f.StartsWith('.')).Order(StringComparer.Ordinal).ToArray();

    [Fact]
    public void PagMid_MatchesFixture_AndWritesImagesGridAndRunJson()
    {
        Assert.True(fx.MainResult.Exit == 0, fx.MainResult.Output);
        using var x = Npy.Load(fx.MainTensor);
        Close.Assert(fx.Expected["sample_pag_mid_s2"], x, SampleTol, "--save-tensor vs sample_pag_mid_s2");

        Assert.Equal(SampleFiles.Append("grid.png").Append("run.json").Order(StringComparer.Ordinal), VisibleFiles(fx.MainDir));
        // Each PNG is its sample: bytes round((x + 1)·127.5), so within half a level of the reference (plus its tolerance).
        for (int i = 0; i < 4; i++)
        {
            using var img = Png.Load(Path.Combine(fx.MainDir, SampleFiles[i]));
            Close.Assert(fx.Expected["sample_pag_mid_s2"][i], img, 0.5 / 127.5 + SampleTol + 1e-6, SampleFiles[i]);
        }
        using (var grid = Png.Load(Path.Combine(fx.MainDir, "grid.png")))
            Assert.True(grid.shape[1] >= 64 && grid.shape[2] >= 64, $"grid.png is {grid.shape[1]}×{grid.shape[2]}; expected 2×2 tiles of 32×32");

        var run = JsonNode.Parse(File.ReadAllText(Path.Combine(fx.MainDir, "run.json")))!;
        var settings = run["settings"]!;
        Assert.Equal("ddim10", (string?)settings["timestep_respacing"]);
        Assert.Equal(new[] { "middle_block.1" }, settings["pag_layers"]!.AsArray().Select(n => (string?)n));
        Assert.Equal("paper", (string?)settings["pag_formula"]);
        Assert.Equal(2.0, (double?)settings["pag_scale"]); // plain numbers, not C# record text
        Assert.Equal(4, (int?)settings["count"]);
        var samples = run["samples"]!.AsArray();
        Assert.Equal(SampleFiles, samples.Select(s => (string?)s!["file"]));
        Assert.Equal(new long[] { 0, 1, 2, 3 }, samples.Select(s => (long)s!["seed"]!));
    }

    [Fact]
    public void Rerun_SameCommand_SkipsAndChangesNothing()
    {
        Assert.Equal(0, fx.MainResult.Exit);
        var before = FolderSnapshot.Of(fx.MainDir);
        var tensorBefore = File.ReadAllBytes(fx.MainTensor);
        var (exit, output) = Pag.Run(fx.Args(fx.MainDir, fx.MainTensor, "--pag-scale", "2", "--batch-size", "2"));
        Assert.True(exit == 0, output);
        Assert.Contains("0 samples written, 4 already present", output);
        // The sample images and run.json are not rewritten; grid.png may be re-made, but with the same bytes.
        var after = FolderSnapshot.Of(fx.MainDir);
        Assert.Equal(before.Files.Keys.Order(), after.Files.Keys.Order());
        foreach (var (name, (bytes, written)) in before.Files)
        {
            Assert.True(bytes.AsSpan().SequenceEqual(after.Files[name].Bytes), $"{name} changed");
            if (name != "grid.png") Assert.True(written == after.Files[name].Written, $"{name} was rewritten");
        }
        Assert.Equal(tensorBefore, File.ReadAllBytes(fx.MainTensor));
    }

    [Fact]
    public void Rerun_WithOtherSettings_IsRefusedAndChangesNothing()
    {
        Assert.Equal(0, fx.MainResult.Exit);
        var before = FolderSnapshot.Of(fx.MainDir);
        string otherTensor = fx.Adm.Dir.File("other.npy");
        var (exit, output) = Pag.Run(fx.Args(fx.MainDir, otherTensor, "--pag-scale", "3", "--batch-size", "2"));
        Assert.True(exit == 2, output);
        Assert.Contains("pag_scale", output);
        before.AssertUnchanged(fx.MainDir, "folder after a refused run");
        Assert.False(File.Exists(otherTensor));
    }

    [Fact]
    public void OfficialScale_MatchesOfficialFormulaFixture()
    {
        string dir = fx.Adm.Dir.File("official"), tensor = fx.Adm.Dir.File("official.npy");
        var (exit, output) = Pag.Run(fx.Args(dir, tensor, "--pag-scale-official", "2"));
        Assert.True(exit == 0, output);
        using var x = Npy.Load(tensor);
        Close.Assert(fx.Expected["sample_pag_mid_s2_officialformula"], x, SampleTol, "--pag-scale-official 2");
        Close.AssertDiffer(fx.Expected["sample_pag_mid_s2"], x, 10 * SampleTol, "official vs paper formula");
        Assert.Equal("official", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run.json")))!["settings"]!["pag_formula"]);
    }

    [Fact]
    public void Shards_TogetherEqualTheUnshardedRun()
    {
        Assert.Equal(0, fx.MainResult.Exit);
        using var main = Npy.Load(fx.MainTensor);
        for (int k = 0; k < 2; k++)
        {
            string dir = fx.Adm.Dir.File($"shard{k}"), tensor = fx.Adm.Dir.File($"shard{k}.npy");
            var (exit, output) = Pag.Run(fx.Args(dir, tensor, "--pag-scale", "2", "--batch-size", "2", "--count", "4", "--shard", $"{k}/2"));
            Assert.True(exit == 0, output);
            var mine = SampleFiles.Skip(2 * k).Take(2).ToArray();
            Assert.Equal(mine.Append("grid.png").Append("run.json").Order(StringComparer.Ordinal), VisibleFiles(dir));
            foreach (var f in mine)
                Assert.True(File.ReadAllBytes(Path.Combine(dir, f)).AsSpan().SequenceEqual(File.ReadAllBytes(Path.Combine(fx.MainDir, f))), $"shard {k}: {f} differs from the unsharded run");
            using var x = Npy.Load(tensor);
            TensorAssert.BitwiseEqual(main[(2 * k)..(2 * k + 2)], x, $"shard {k} tensor");
            var run = JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run.json")))!;
            Assert.Equal($"{k}/2", (string?)run["settings"]!["shard"]);
            Assert.Equal(mine, run["samples"]!.AsArray().Select(s => (string?)s!["file"]));
        }
    }

    public static TheoryData<string, string[], string> BadInputs => new()
    {
        { "steps 0", new[] { "--steps", "0" }, "--steps must be ≥ 1" },
        { "negative PAG scale", new[] { "--pag-scale=-1" }, "PAG scale" },
        { "negative PAG scale, separate value", new[] { "--pag-scale", "-1" }, "PAG scale" },
        { "NaN PAG scale", new[] { "--pag-scale", "NaN" }, "--pag-scale: 'NaN' is not valid" },
        { "infinite PAG scale", new[] { "--pag-scale", "inf" }, "--pag-scale: 'inf' is not valid" },
        { "absurd PAG scale", new[] { "--pag-scale", "1e300" }, "PAG scale must be a number from 0 to 1000" },
        { "steps not a number", new[] { "--steps", "abc" }, "--steps: 'abc' is not valid; expected an integer" },
        { "count beyond int", new[] { "--count", "3000000000" }, "--count: '3000000000' is not valid" },
        { "respacing ddim0", new[] { "--pag-scale", "2", "--timestep-respacing", "ddim0" }, "ddimN with N ≥ 1" },
        { "NaN initial noise", new[] { "--pag-scale", "2", "--init-noise", "NANNOISE" }, "NaN or infinite" },
        { "unknown scheduler", new[] { "--sampler", "heun" }, "valid: ddpm, ddim, euler" },
        { "CFG on an unconditional model", new[] { "--pag-scale", "2", "--guidance-scale", "3" }, "null" },
        { "label on an unconditional model", new[] { "--pag-scale", "2", "--label", "3" }, "unconditional" },
        { "unknown layer", new[] { "--pag-scale", "2", "--pag-layers", "nope" }, "middle_block.1" },
        { "missing checkpoint", new[] { "--pag-scale", "2", "--checkpoint", "MISSING" }, "does not exist" },
        { "truncated checkpoint", new[] { "--pag-scale", "2", "--checkpoint", "TRUNCATED" }, "TRUNCATED" },
        { "bad shard", new[] { "--pag-scale", "2", "--shard", "2/2" }, "--shard" },
        { "PAG cache interval 0", new[] { "--pag-scale", "2", "--pag-cache-interval", "0" }, "cache interval" },
        { "PAG cache interval with SAG", new[] { "--method", "sag", "--sag-scale", "1", "--pag-cache-interval", "2" }, "cache interval" },
        { "init noise of the wrong shape", new[] { "--pag-scale", "2", "--init-noise", "CASES:out_none" }, "shape" },
    };

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void BadInput_Exits2_AndCreatesNothing(string name, string[] extra, string messagePart)
    {
        using var tmp = new TempDir();
        string missing = tmp.File("missing.safetensors"), truncated = tmp.File("truncated.safetensors");
        var full = File.ReadAllBytes(fx.Adm.Weights);
        File.WriteAllBytes(truncated, full[..(full.Length / 2)]);
        string nanNoise = tmp.File("nan.npy");
        using (var nan = TorchSharp.torch.full(new long[] { 4, 3, 32, 32 }, float.NaN)) Npy.Save(nanNoise, nan);
        var resolved = extra.Select(a => a.Replace("MISSING", missing).Replace("TRUNCATED", truncated).Replace("CASES", fx.Adm.Cases).Replace("NANNOISE", nanNoise)).ToArray();
        messagePart = messagePart.Replace("TRUNCATED", truncated);
        string dir = tmp.File("out"), tensor = tmp.File("out.npy");

        var (exit, output) = Pag.Run(fx.Args(dir, tensor, resolved));

        Assert.True(exit == 2, $"{name}: exit {exit}\n{output}");
        Assert.Contains(messagePart, output);
        Assert.False(Directory.Exists(dir), $"{name}: the output folder was created");
        Assert.False(File.Exists(tensor), $"{name}: the tensor file was created");
    }

    [Fact]
    public void WrongPreset_Exits2_AndListsMismatchedKeys()
    {
        using var tmp = new TempDir();
        string dir = tmp.File("out");
        var (exit, output) = Pag.Run("sample", "--preset", "adm-256-uncond", "--checkpoint", fx.Adm.Weights, "--init-noise", fx.Adm.InitNoise,
            "--steps", "10", "--pag-scale", "2", "--output", dir);
        Assert.True(exit == 2, output);
        Assert.Contains("does not match the model", output);
        Assert.Contains("missing keys", output);
        Assert.Contains("shape mismatches", output);
        Assert.Contains("time_embed.0.weight: checkpoint [128,32], model [1024,256]", output);
        Assert.Contains("adm-256-uncond", output);
        Assert.False(Directory.Exists(dir));
    }

    [Fact]
    public void EulerAncestral_WithFewStepsOnTheCosineSchedule_StaysFinite()
    {
        // The built-in model's cosine schedule reaches σ ≈ 2·10⁴: σ_up² then rounds above σ_next², which made
        // σ_down = √(σ_next² − σ_up²) NaN and the run diverge.
        using var dir = new TempDir();
        var (exit, output) = Pag.Run("sample", "--scheduler", "euler-a", "--steps", "4", "--count", "2", "--output", dir.File("out"));
        Assert.True(exit == 0, output);
        Assert.True(File.Exists(Path.Combine(dir.File("out"), "grid.png")));
    }

    [Theory]
    [InlineData("sample")]
    [InlineData("txt2img")]
    public void Device_CpuIsTheDefault_AndAnUnavailableCudaIsRefusedBeforeAnythingIsWritten(string command)
    {
        using var dir = new TempDir();
        // cpu gives the same samples as no --device.
        if (command == "sample")
        {
            var (e1, o1) = Pag.Run("sample", "--count", "2", "--steps", "5", "--save-tensor", dir.File("a.npy"), "--output", dir.File("a"));
            var (e2, o2) = Pag.Run("sample", "--count", "2", "--steps", "5", "--device", "cpu", "--save-tensor", dir.File("b.npy"), "--output", dir.File("b"));
            Assert.True(e1 == 0 && e2 == 0, o1 + o2);
            using var a = PagSharp.IO.Npy.Load(dir.File("a.npy"));
            using var b = PagSharp.IO.Npy.Load(dir.File("b.npy"));
            Assert.True(a.eq(b).all().item<bool>());
        }
        // This build has only TorchSharp's CPU backend: cuda is refused with the reason; a bad name lists the valid ones.
        var (exit, output) = Pag.Run(command, "--device", "cuda:0", "--output", dir.File("c"));
        Assert.NotEqual(0, exit);
        Assert.Contains("device 'cuda:0' is not available", output);
        Assert.False(Directory.Exists(dir.File("c")));
        (exit, output) = Pag.Run(command, "--device", "tpu", "--output", dir.File("d"));
        Assert.NotEqual(0, exit);
        Assert.Contains("valid: cpu, cuda, cuda:N", output);
    }
}
