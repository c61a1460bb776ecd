using System.Text.Json;
using System.Text.Json.Serialization;

namespace PagSharp.Cli.Commands;

/// <summary>
/// A guidance sweep for <c>pag sweep</c>: named sampling runs (each a list of <c>pag sample</c> options), the tables
/// that show them, labelled sample grids, and charts of a metric against a parameter. Stored as JSON with
/// snake_case names; see <c>docs/paper-tables.json</c>.
/// </summary>
public sealed record SweepPlan
{
    /// <summary>Samples per run.</summary>
    public int Count { get; init; } = 500;
    /// <summary>Samples per forward batch.</summary>
    public int BatchSize { get; init; } = 50;
    /// <summary>Run seed (sample i uses seed + i) unless a run's own options set <c>--seed</c>.</summary>
    public long Seed { get; init; }
    /// <summary><c>pag sample</c> options every run starts with (sampler, steps, model).</summary>
    public List<string> Common { get; init; } = [];
    /// <summary>Extra <c>pag eval</c> options for every run (e.g. <c>--splits</c>).</summary>
    public List<string> EvalArgs { get; init; } = [];
    /// <summary>Sampling runs by id (ids name the output folders).</summary>
    public Dictionary<string, SweepRun> Runs { get; init; } = [];
    public List<SweepTable> Tables { get; init; } = [];
    public List<SweepChart> Charts { get; init; } = [];

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
        ReadCommentHandling = JsonCommentHandling.Skip,
        AllowTrailingCommas = true,
        WriteIndented = true,
    };

    public static readonly string[] Metrics = ["fid", "inception_score", "precision", "recall"];

    /// <summary>Reads and validates a plan; every problem is reported with the file name.</summary>
    public static SweepPlan Load(string path)
    {
        if (!File.Exists(path)) throw new PagSharpException($"sweep plan '{path}' does not exist");
        SweepPlan? plan;
        try { plan = JsonSerializer.Deserialize<SweepPlan>(File.ReadAllText(path), Json); }
        catch (JsonException e) { throw new PagSharpException($"sweep plan '{path}' is not valid: {e.Message}", e); }
        if (plan is null) throw new PagSharpException($"sweep plan '{path}' is empty");
        var errors = plan.Problems().ToList();
        if (errors.Count > 0) throw new PagSharpException($"sweep plan '{path}' has {errors.Count} problem(s):\n  " + string.Join("\n  ", errors));
        return plan;
    }

    /// <summary>Everything wrong with the plan (empty when it is usable).</summary>
    public IEnumerable<string> Problems()
    {
        if (Count < 1) yield return $"count must be ≥ 1 (got {Count})";
        if (BatchSize < 1) yield return $"batch_size must be ≥ 1 (got {BatchSize})";
        if (Runs.Count == 0) yield return "runs is empty";
        foreach (var (id, run) in Runs)
        {
            if (id.Length == 0 || !id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.') || id.StartsWith('.'))
                yield return $"run id '{id}' must be letters, digits, '-', '_' or '.' (it names a folder)";
            foreach (var reserved in new[] { "--count", "--batch-size", "--output", "--save-tensor", "--shard" })
                if (run.Args.Contains(reserved) || Common.Contains(reserved))
                    yield return $"run '{id}': {reserved} is set by pag sweep (count, batch_size, output folder)";
            if (run.ReferenceRun is { } r && !Runs.ContainsKey(r)) yield return $"run '{id}': reference_run '{r}' is not a run id";
            if (run.ReferenceRun == id) yield return $"run '{id}' cannot be its own reference_run";
            if (run.ReferenceRun is { } rr && Runs.TryGetValue(rr, out var rrun) && rrun.ReferenceRun is not null)
                yield return $"run '{id}': its reference_run '{rr}' must itself be evaluated against the data set";
        }
        foreach (var t in Tables)
        {
            if (t.Runs.Count == 0) yield return $"table '{t.Title}' lists no runs";
            foreach (var r in t.Runs.Where(r => !Runs.ContainsKey(r))) yield return $"table '{t.Title}': '{r}' is not a run id; runs: {string.Join(", ", Runs.Keys)}";
            if (t.Labels is { } l && l.Count != t.Runs.Count) yield return $"table '{t.Title}': {l.Count} labels for {t.Runs.Count} runs";
            if (t.Grid is { } g && !IsFileName(g, ".png")) yield return $"table '{t.Title}': grid '{g}' must be a plain .png file name";
        }
        if (GridSamples < 1) yield return $"grid_samples must be ≥ 1 (got {GridSamples})";
        foreach (var c in Charts)
        {
            if (!IsFileName(c.File, ".png")) yield return $"chart '{c.File}' must be a plain .png file name";
            if (!Metrics.Contains(c.Metric)) yield return $"chart '{c.File}': metric '{c.Metric}' is not one of {string.Join(", ", Metrics)}";
            foreach (var s in c.Series)
            {
                if (s.Runs.Count != s.X.Count) yield return $"chart '{c.File}', series '{s.Name}': {s.Runs.Count} runs but {s.X.Count} x values";
                foreach (var r in s.Runs.Where(r => !Runs.ContainsKey(r))) yield return $"chart '{c.File}', series '{s.Name}': '{r}' is not a run id";
            }
        }
    }

    /// <summary>Samples per run shown in a table's grid.</summary>
    public int GridSamples { get; init; } = 12;

    private static bool IsFileName(string name, string ext) =>
        name.EndsWith(ext, StringComparison.OrdinalIgnoreCase) && Path.GetFileName(name) == name && !name.StartsWith('.');
}

/// <summary>One sampling run: a label for tables, its <c>pag sample</c> options, and what it is evaluated against.</summary>
public sealed record SweepRun
{
    public string Label { get; init; } = "";
    public List<string> Args { get; init; } = [];
    /// <summary>Evaluate against this run's samples instead of the data set (e.g. the FID noise floor).</summary>
    public string? ReferenceRun { get; init; }
}

public sealed record SweepTable
{
    public string Title { get; init; } = "";
    public List<string> Runs { get; init; } = [];
    /// <summary>Optional labelled grid (one row of samples per run) written next to the report.</summary>
    public string? Grid { get; init; }
    /// <summary>Optional row labels for this table (one per run), replacing the runs' own labels.</summary>
    public List<string>? Labels { get; init; }

    public string LabelOf(SweepPlan plan, int row) => Labels?[row] ?? plan.Runs[Runs[row]].Label;
}

public sealed record SweepChart
{
    public string File { get; init; } = "";
    public string Title { get; init; } = "";
    public string XLabel { get; init; } = "";
    /// <summary>fid, inception_score, precision or recall.</summary>
    public string Metric { get; init; } = "fid";
    public List<SweepSeries> Series { get; init; } = [];
}

public sealed record SweepSeries
{
    public string Name { get; init; } = "";
    public List<string> Runs { get; init; } = [];
    public List<double> X { get; init; } = [];
}
