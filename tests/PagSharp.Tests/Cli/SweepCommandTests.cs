using System.Diagnostics;
using System.Text.Json.Nodes;
using PagSharp.Cli.Commands;
using PagSharp.Imaging;
using PagSharp.IO;

namespace PagSharp.Tests.Cli;

[Collection(CliCollection.Name)]
public sealed class SweepCommandTests : IDisposable
{
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    /// <summary>Three runs of the built-in model (4 samples, DDPM-2): none, PAG s=2, and an unguided noise-floor run.</summary>
    private string WritePlan() => WritePlan("""
        {
          "count": 4, "batch_size": 4, "seed": 7,
          "common": ["--sampler", "ddpm", "--steps", "2"],
          "eval_args": ["--splits", "1"],
          "grid_samples": 3,
          "runs": {
            "a": { "label": "none", "args": [] },
            "b": { "label": "PAG s=2", "args": ["--pag-scale", "2"] },
            "floor": { "label": "none, other seeds", "args": ["--seed", "100"], "reference_run": "a" },
            "c": { "label": "labels 3,7", "args": ["--labels", "3,7"] }
          },
          "tables": [ { "title": "T", "runs": ["a", "b"], "grid": "t.png" }, { "title": "Floor", "runs": ["floor"] }, { "title": "Cond", "runs": ["c"] } ],
          "charts": [ { "file": "c.png", "title": "FID", "x_label": "s", "metric": "fid",
                        "series": [ { "name": "uncond", "runs": ["a", "b"], "x": [0, 2] } ] } ]
        }
        """);

    private string WritePlan(string json)
    {
        string path = _dir.File("plan.json");
        File.WriteAllText(path, json);
        return path;
    }

    private (int Exit, string Output) Sweep(string plan) =>
        Pag.Run("sweep", "--threads", "1", "--plan", plan, "--output", _dir.File("runs"), "--report", _dir.File("report/report.md"));

    private JsonObject Read(params string[] parts) => JsonNode.Parse(File.ReadAllText(Path.Combine([_dir.File("runs"), .. parts])))!.AsObject();

    [Fact]
    public void RunsEvaluatesAndReports_ThenResumesWithoutResampling_AndHonoursAnotherProcesssClaim()
    {
        string plan = WritePlan();
        var (exit, output) = Sweep(plan);
        Assert.True(exit == 0, output);

        using (var a = Npy.Load(_dir.File("runs/a/samples.npy")))
            Assert.Equal(new long[] { 4, 1, 32, 32 }, a.shape);
        string report = File.ReadAllText(_dir.File("report/report.md"));
        Assert.Contains("| none |", report);
        Assert.Contains("| PAG s=2 |", report);
        Assert.Contains("`--pag-scale 2`", report);
        Assert.Contains("| none, other seeds (FID vs `a`) |", report);
        Assert.Contains("![T](t.png)", report);
        // Recognised digits in every table; label accuracy only in the table with a class-conditional run.
        Assert.Contains("| run | FID ↓ | IS ↑ | precision ↑ | recall ↑ | recognised ↑ | seconds | options |", report);
        Assert.Contains("| run | FID ↓ | IS ↑ | precision ↑ | recall ↑ | recognised ↑ | as label ↑ | seconds | options |", report);
        Assert.Equal(4, (long)Read("c", "eval.json")["labelled_count"]!);
        Assert.Null(Read("a", "eval.json")["label_accuracy"]);
        Assert.Contains("![FID](c.png)", report);
        using (var grid = Png.Load(_dir.File("report/t.png"))) Assert.True(grid.shape[1] > 2 * 32 && grid.shape[2] > 3 * 32);
        Assert.True(File.Exists(_dir.File("report/c.png")));

        // The floor run is evaluated against run a's samples, the others against the held-out digits.
        Assert.Equal(_dir.File("runs/a/samples.npy"), (string)Read("floor", "eval.json")["reference"]!);
        Assert.Equal("mnist-test", (string)Read("b", "eval.json")["reference"]!);
        var summary = JsonNode.Parse(File.ReadAllText(_dir.File("report/report.json")))!;
        Assert.Equal((double)Read("b", "eval.json")["fid"]!, (double)summary["b"]!["eval"]!["fid"]!);
        Assert.Equal(["a", "b", "floor", "c"], summary.AsObject().Select(p => p.Key)); // plan order
        Assert.Equal(1, (int)summary["b"]!["threads"]!); // the runs keep pag sweep's --threads
        Assert.Contains("torch threads per run: ", report);
        Assert.NotEqual((double)Read("a", "eval.json")["fid"]!, (double)Read("b", "eval.json")["fid"]!);

        // A rerun finds everything done: nothing is sampled again.
        string timing = File.ReadAllText(_dir.File("runs/b/timing.json"));
        var pngTime = File.GetLastWriteTimeUtc(_dir.File("runs/b/samples/00000.png"));
        (exit, output) = Sweep(plan);
        Assert.True(exit == 0, output);
        Assert.Equal(timing, File.ReadAllText(_dir.File("runs/b/timing.json")));
        Assert.Equal(pngTime, File.GetLastWriteTimeUtc(_dir.File("runs/b/samples/00000.png")));

        // Run b claimed by another live process: this one leaves it alone and writes no report.
        File.Delete(_dir.File("runs/b/eval.json"));
        File.Delete(_dir.File("report/report.md"));
        using var other = Process.Start(new ProcessStartInfo("sleep", "60"))!;
        try
        {
            File.WriteAllText(_dir.File("runs/b/claim"), other.Id.ToString());
            (exit, output) = Sweep(plan);
            Assert.True(exit == 0, output);
            Assert.Contains("in progress in another pag sweep process (b)", output);
            Assert.False(File.Exists(_dir.File("runs/b/eval.json")));
            Assert.False(File.Exists(_dir.File("report/report.md")));
        }
        finally
        {
            other.Kill();
            other.WaitForExit();
        }
        // That process has ended: its claim is taken over and the sweep completes.
        (exit, output) = Sweep(plan);
        Assert.True(exit == 0, output);
        Assert.True(File.Exists(_dir.File("runs/b/eval.json")));
        Assert.True(File.Exists(_dir.File("report/report.md")));
        Assert.False(File.Exists(_dir.File("runs/b/claim")));
    }

    [Fact]
    public void SampleArgsAddSeedCountBatchAndOutputs_RunSeedWins()
    {
        var plan = new SweepPlan
        {
            Count = 8, BatchSize = 4, Seed = 3, Common = ["--steps", "5"],
            Runs = new() { ["x"] = new SweepRun { Args = ["--pag-scale", "1"] }, ["y"] = new SweepRun { Args = ["--seed", "9"] } },
        };
        Assert.Equal(["sample", "--steps", "5", "--seed", "3", "--pag-scale", "1", "--count", "8", "--batch-size", "4",
            "--output", Path.Combine("o", "x", "samples"), "--save-tensor", Path.Combine("o", "x", "samples.npy")], SweepCommand.SampleArgs(plan, "x", "o"));
        Assert.Equal(["sample", "--steps", "5", "--seed", "9", "--count", "8", "--batch-size", "4",
            "--output", Path.Combine("o", "y", "samples"), "--save-tensor", Path.Combine("o", "y", "samples.npy")], SweepCommand.SampleArgs(plan, "y", "o"));
    }

    [Fact]
    public void BadPlanListsEveryProblemAndWritesNothing()
    {
        string plan = WritePlan("""
            {
              "runs": {
                "a/b": { "label": "bad id", "args": [] },
                "c": { "label": "reserved", "args": ["--count", "3"], "reference_run": "zz" }
              },
              "tables": [ { "title": "T", "runs": ["c", "missing"], "grid": "../t.png", "labels": ["one"] } ],
              "charts": [ { "file": "c.png", "metric": "sharpness", "series": [ { "name": "s", "runs": ["c"], "x": [1, 2] } ] } ]
            }
            """);
        var (exit, output) = Sweep(plan);
        Assert.Equal(2, exit);
        foreach (var expected in new[]
                 {
                     "run id 'a/b' must be", "run 'c': --count is set by pag sweep", "reference_run 'zz' is not a run id",
                     "table 'T': 'missing' is not a run id", "1 labels for 2 runs", "grid '../t.png' must be a plain .png file name",
                     "metric 'sharpness' is not one of fid, inception_score, precision, recall", "1 runs but 2 x values",
                 })
            Assert.Contains(expected, output);
        Assert.False(Directory.Exists(_dir.File("runs")));

        var (exit2, output2) = Pag.Run("sweep", "--plan", WritePlan("{ \"runs\": { \"a\": { \"lable\": \"typo\" } } }"));
        Assert.Equal(2, exit2);
        Assert.Contains("lable", output2);
    }

    [Fact]
    public void AReportWhoseNumbersWouldOverwriteThePlanIsRefused()
    {
        string plan = WritePlan();
        string before = File.ReadAllText(plan);
        var (exit, output) = Pag.Run("sweep", "--plan", plan, "--output", _dir.File("runs"), "--report", Path.ChangeExtension(plan, ".md"));
        Assert.Equal(2, exit);
        Assert.Contains("which is the plan", output);
        Assert.Equal(before, File.ReadAllText(plan));
        Assert.False(Directory.Exists(_dir.File("runs")));
    }
}
