using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Imaging;
using Grid = PagSharp.Imaging.Grid;
using PagSharp.IO;
using PagSharp.Metrics;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag sweep</c>: runs every sampling configuration of a plan (<see cref="SweepPlan"/>) with <c>pag sample</c>,
/// evaluates each with <c>pag eval</c>, and writes a Markdown report with the tables, labelled sample grids and
/// metric-vs-parameter charts. Finished runs are kept, so an interrupted sweep resumes where it stopped.
/// </summary>
public sealed class SweepCommand : Command<SweepCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--plan <FILE>")][Description("Sweep plan (JSON): runs, tables, grids, charts. See docs/paper-tables.json.")]
        public string? Plan { get; init; }
        [CommandOption("--output <DIR>")][Description("Folder for the runs' samples and evaluations (default runs/sweep).")]
        public string Output { get; init; } = Path.Combine("runs", "sweep");
        [CommandOption("--report <FILE>")][Description("Markdown report; grids and charts go beside it (default OUTPUT/report.md).")]
        public string? Report { get; init; }
        [CommandOption("--count <N>")][Description("Samples per run, overriding the plan's count (e.g. for a quick trial).")]
        public int? Count { get; init; }
    }

    private sealed record RunResult(string Id, SweepRun Run, double Seconds, bool Resumed, int? Threads, JsonObject Eval)
    {
        public double? Metric(string name) => Eval[name]?.GetValue<double?>();
    }

    /// <summary>Runs one <c>pag</c> command line in this process and returns its exit code (the command's data).</summary>
    public delegate int Runner(string[] args);

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        var run = context.Data as Runner ?? throw new InvalidOperationException("pag sweep is registered without its command runner");
        if (s.Plan is null) throw new PagSharpException("pag sweep needs --plan FILE.json");
        var plan = SweepPlan.Load(s.Plan);
        if (s.Count is int c) plan = plan with { Count = c };
        var problems = plan.Problems().ToList();
        if (problems.Count > 0) throw new PagSharpException(string.Join("; ", problems));
        string report = s.Report ?? Path.Combine(s.Output, "report.md");
        if (!report.EndsWith(".md", StringComparison.OrdinalIgnoreCase)) throw new PagSharpException($"--report '{report}' must be a .md file");
        // The report's numbers go beside it as REPORT.json: that must not be the plan itself.
        if (string.Equals(Path.GetFullPath(Path.ChangeExtension(report, ".json")), Path.GetFullPath(s.Plan), StringComparison.Ordinal))
            throw new PagSharpException($"--report '{report}' would write its numbers to {Path.ChangeExtension(report, ".json")}, which is the plan: give the report another name or folder");
        Directory.CreateDirectory(s.Output);

        // Several pag sweep processes may share one output folder (e.g. one per core with OMP_NUM_THREADS=1): each run
        // is claimed by one process (a claim file holding its process id; a claim whose process has ended is taken over).
        var results = new Dictionary<string, RunResult>();
        bool progress = true;
        while (progress && results.Count < plan.Runs.Count)
        {
            progress = false;
            foreach (var id in plan.Runs.Keys.Where(id => !results.ContainsKey(id)))
            {
                if (TryEvaluate(run, plan, id, s.Output) is not { } r) continue;
                results[id] = r;
                progress = true;
                AnsiConsole.MarkupLine($"[bold]{results.Count}/{plan.Runs.Count} done: {Markup.Escape(id)}[/] ({Markup.Escape(plan.Runs[id].Label)})");
            }
        }
        if (results.Count < plan.Runs.Count)
        {
            var others = plan.Runs.Keys.Where(id => !results.ContainsKey(id)).ToList();
            AnsiConsole.MarkupLine($"[yellow]{others.Count} run(s) are in progress in another pag sweep process ({Markup.Escape(string.Join(", ", others))}); " +
                                   "the process that finishes last writes the report (or rerun this command then)[/]");
            return 0;
        }
        WriteReport(plan, s, report, results);
        AnsiConsole.MarkupLine($"report → {Markup.Escape(report)}");
        return 0;
    }

    private static string RunDir(string output, string id) => Path.Combine(output, id);
    private static string SamplesNpy(string output, string id) => Path.Combine(RunDir(output, id), "samples.npy");

    /// <summary>The <c>pag sample</c> arguments of one run.</summary>
    public static List<string> SampleArgs(SweepPlan plan, string id, string output)
    {
        var run = plan.Runs[id];
        var args = new List<string> { "sample" };
        args.AddRange(plan.Common);
        if (!plan.Common.Contains("--seed") && !run.Args.Contains("--seed")) args.AddRange(["--seed", plan.Seed.ToString(CultureInfo.InvariantCulture)]);
        args.AddRange(run.Args);
        args.AddRange(["--count", plan.Count.ToString(CultureInfo.InvariantCulture), "--batch-size", plan.BatchSize.ToString(CultureInfo.InvariantCulture),
            "--output", Path.Combine(RunDir(output, id), "samples"), "--save-tensor", SamplesNpy(output, id)]);
        return args;
    }

    private static string TimingFile(string output, string id) => Path.Combine(RunDir(output, id), "timing.json");

    private static bool IsSampled(SweepPlan plan, string id, string output)
    {
        string timing = TimingFile(output, id);
        return File.Exists(timing) && File.Exists(SamplesNpy(output, id)) && JsonNode.Parse(File.ReadAllText(timing))?["count"]?.GetValue<int>() == plan.Count;
    }

    private static void Sample(Runner run, SweepPlan plan, string id, string output)
    {
        string dir = RunDir(output, id);
        bool resumed = Directory.Exists(Path.Combine(dir, "samples"));
        var sw = Stopwatch.StartNew();
        Invoke(run, SampleArgs(plan, id, output), id, "sample");
        AtomicFile.WriteAllText(TimingFile(output, id), new JsonObject { ["seconds"] = sw.Elapsed.TotalSeconds, ["resumed"] = resumed, ["count"] = plan.Count, ["threads"] = get_num_threads() }.ToJsonString() + "\n");
    }

    /// <summary>The run's evaluation, sampling and evaluating it first if needed; null while another process holds it.</summary>
    private static RunResult? TryEvaluate(Runner runner, SweepPlan plan, string id, string output)
    {
        var run = plan.Runs[id];
        string reference = run.ReferenceRun is { } r ? SamplesNpy(output, r) : ImageSets.MnistTest;
        string json = Path.Combine(RunDir(output, id), "eval.json"), npy = SamplesNpy(output, id);
        if (!IsSampled(plan, id, output) || !Fresh(json, npy) || (run.ReferenceRun is not null && !Fresh(json, reference)))
        {
            using var claim = Claim.TryTake(RunDir(output, id));
            if (claim is null) return null;
            if (!IsSampled(plan, id, output)) Sample(runner, plan, id, output);
            if (run.ReferenceRun is { } rr && !IsSampled(plan, rr, output)) return null; // evaluated on a later pass
            if (!Fresh(json, npy) || (run.ReferenceRun is not null && !Fresh(json, reference)))
                Invoke(runner, ["eval", "--generated", npy, "--reference", reference, "--json", json, .. LabelArgs(output, id), .. plan.EvalArgs], id, "eval");
        }
        var t = JsonNode.Parse(File.ReadAllText(TimingFile(output, id)))!;
        return new RunResult(id, run, t["seconds"]!.GetValue<double>(), t["resumed"]!.GetValue<bool>(), t["threads"]?.GetValue<int>(),
            JsonNode.Parse(File.ReadAllText(json))!.AsObject());
    }

    /// <summary>The run's labels for <c>pag eval</c> (label accuracy of class-conditional runs on the MNIST classifier).</summary>
    private static string[] LabelArgs(string output, string id) =>
        File.Exists(Path.Combine(RunDir(output, id), "samples", "run.json")) ? ["--labels-from", Path.Combine(RunDir(output, id), "samples", "run.json")] : [];

    private static bool Fresh(string derived, string source) => File.Exists(derived) && File.GetLastWriteTimeUtc(derived) >= File.GetLastWriteTimeUtc(source);

    /// <summary>A run's folder claimed by this process: a file created exclusively, holding the process id.</summary>
    private sealed class Claim : IDisposable
    {
        private readonly string _path;
        private Claim(string path) => _path = path;

        public static Claim? TryTake(string dir)
        {
            Directory.CreateDirectory(dir);
            string path = Path.Combine(dir, "claim");
            for (int attempt = 0; attempt < 2; attempt++)
            {
                try
                {
                    using var f = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
                    f.Write(Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture)));
                    return new Claim(path);
                }
                catch (IOException) when (File.Exists(path))
                {
                    if (int.TryParse(File.ReadAllText(path).Trim(), out int pid) && pid != Environment.ProcessId && IsAlive(pid)) return null;
                    File.Delete(path); // left by a process that has ended (or by this one): take it over
                }
            }
            return null;
        }

        private static bool IsAlive(int pid)
        {
            try { using var p = Process.GetProcessById(pid); return !p.HasExited; }
            catch (ArgumentException) { return false; }
        }

        public void Dispose() => File.Delete(_path);
    }

    private static void Invoke(Runner run, List<string> args, string id, string what)
    {
        // Each command line configures torch's threads afresh: pass on this process's count (pag sweep --threads N).
        int exit = run(["--threads", get_num_threads().ToString(CultureInfo.InvariantCulture), .. args]);
        if (exit == ExitCodes.Cancelled) throw new OperationCanceledException();
        if (exit != 0) throw new PagSharpException($"run '{id}': pag {what} failed (exit {exit}); command: pag {Quote(args)}");
    }

    private static string Quote(IEnumerable<string> args) =>
        string.Join(" ", args.Select(a => a.Length > 0 && a.All(ch => char.IsAsciiLetterOrDigit(ch) || "-_.,:/@=*".Contains(ch)) ? a : $"'{a}'"));

    private static string Percent(double? v) => v is double d ? (100 * d).ToString("F1", CultureInfo.InvariantCulture) + "%" : "–";

    private static string F(double? v, string format) => v is double d ? d.ToString(format, CultureInfo.InvariantCulture) : "–";

    private static void WriteReport(SweepPlan plan, Settings s, string report, Dictionary<string, RunResult> results)
    {
        string dir = Path.GetDirectoryName(Path.GetFullPath(report))!;
        Directory.CreateDirectory(dir);
        var md = new StringBuilder();
        md.AppendLine($"Generated by `pag sweep --plan {s.Plan} --output {s.Output}{(s.Count is null ? "" : $" --count {s.Count}")}` " +
                      $"({plan.Count} samples per run, batch {plan.BatchSize}, seed {plan.Seed}; every run starts with `{Quote(plan.Common)}`; " +
                      $"{Environment.ProcessorCount} CPU cores; torch threads per run: {Threads(results.Values)}). Seconds are the wall time of `pag sample` for the whole run" +
                      (results.Values.Any(r => r.Resumed) ? "; † marks a run that was resumed, so its time covers only the part done after the resume" : "") + ".");
        md.AppendLine();
        foreach (var t in plan.Tables)
        {
            md.AppendLine($"#### {t.Title}").AppendLine();
            bool recognised = t.Runs.Any(id => results[id].Metric("recognised") is not null);
            bool asLabel = t.Runs.Any(id => results[id].Metric("label_accuracy") is not null);
            md.AppendLine("| run | FID ↓ | IS ↑ | precision ↑ | recall ↑ |" + (recognised ? " recognised ↑ |" : "") + (asLabel ? " as label ↑ |" : "") + " seconds | options |");
            md.AppendLine("|---|---:|---:|---:|---:|" + (recognised ? "---:|" : "") + (asLabel ? "---:|" : "") + "---:|---|");
            for (int row = 0; row < t.Runs.Count; row++)
            {
                var r = results[t.Runs[row]];
                string vs = r.Run.ReferenceRun is { } rr ? $" (FID vs `{rr}`)" : "";
                md.AppendLine($"| {t.LabelOf(plan, row)}{vs} | {F(r.Metric("fid"), "F2")} | {F(r.Metric("inception_score"), "F2")} | {F(r.Metric("precision"), "F3")} | " +
                              $"{F(r.Metric("recall"), "F3")} |" + (recognised ? $" {Percent(r.Metric("recognised"))} |" : "") +
                              (asLabel ? $" {Percent(r.Metric("label_accuracy"))} |" : "") + $" {r.Seconds:F0}{(r.Resumed ? "†" : "")} | {(r.Run.Args.Count == 0 ? "(none)" : $"`{Quote(r.Run.Args)}`")} |");
            }
            md.AppendLine();
            if (t.Grid is { } g)
            {
                SaveGrid(plan, s.Output, t, Path.Combine(dir, g));
                md.AppendLine($"![{t.Title}]({g})").AppendLine();
            }
        }
        foreach (var c in plan.Charts)
        {
            var series = c.Series.Select(x => (x.Name, (IReadOnlyList<(double, double)>)x.Runs.Zip(x.X, (id, xv) => (xv, results[id].Metric(c.Metric) ?? double.NaN)).ToList())).ToList();
            LinePlot.Save(Path.Combine(dir, c.File), series, c.Title, c.XLabel, MetricName(c.Metric));
            md.AppendLine($"![{c.Title}]({c.File})").AppendLine();
        }
        AtomicFile.WriteAllText(report, md.ToString());
        var all = new JsonObject();
        foreach (var id in plan.Runs.Keys)
            all[id] = results[id] is var r ? new JsonObject
            {
                ["label"] = r.Run.Label, ["args"] = new JsonArray(r.Run.Args.Select(a => (JsonNode)a!).ToArray()),
                ["seconds"] = r.Seconds, ["resumed"] = r.Resumed, ["threads"] = r.Threads, ["eval"] = r.Eval.DeepClone(),
            } : null;
        AtomicFile.WriteAllText(Path.ChangeExtension(report, ".json"), all.ToJsonString(SweepPlan.Json) + "\n");
    }

    private static string Threads(IEnumerable<RunResult> runs) =>
        string.Join(" or ", runs.Select(r => r.Threads?.ToString(CultureInfo.InvariantCulture) ?? "not recorded").Distinct());

    private static string MetricName(string metric) => metric switch
    {
        "fid" => "FID", "inception_score" => "Inception Score", _ => metric,
    };

    private static void SaveGrid(SweepPlan plan, string output, SweepTable t, string path)
    {
        using var scope = NewDisposeScope();
        int cols = Math.Min(plan.GridSamples, plan.Count);
        var rows = t.Runs.Select(id => Npy.Load(SamplesNpy(output, id)).narrow(0, 0, cols)).ToArray();
        Grid.SaveLabelled(path, cat(rows, 0).clamp(-1, 1), rows.Length, cols,
            Enumerable.Range(0, cols).Select(i => $"#{i}").ToArray(), t.Runs.Select((_, row) => t.LabelOf(plan, row)).ToArray(), 2);
    }
}
