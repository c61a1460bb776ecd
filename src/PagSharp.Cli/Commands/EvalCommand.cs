using System.Text.Json.Nodes;
using System.ComponentModel;
using System.Globalization;
using System.Text.Json;
using PagSharp.IO;
using PagSharp.Metrics;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag eval</c>: FID, Inception Score, precision and recall of generated images against a reference.</summary>
public sealed class EvalCommand : Command<EvalCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--generated <PATH>")]
        [Description("Generated images: a folder of PNG/JPEG (grid.png skipped), a .npy array [[N,C,H,W]] in [[-1,1]], or saved statistics (.safetensors; FID only). Repeat to combine shards.")]
        public string[] Generated { get; init; } = [];
        [CommandOption("--reference <REF>")]
        [Description("mnist-test (default; the 1,000 held-out digits), mnist-train (or N of its digits, spread evenly: mnist-train:N), a folder, a .npy array, or saved statistics (.safetensors; FID only).")]
        public string Reference { get; init; } = ImageSets.MnistTest;
        [CommandOption("--features <NET>")][Description("Feature network: mnist (the project's classifier, default) or inception (standard FID; needs --inception-weights).")]
        public string Features { get; init; } = "mnist";
        [CommandOption("--inception-weights <FILE>")][Description("pytorch-fid's pt_inception-2015-12-05-6726825d.pth (zip format) or a .safetensors with its keys.")]
        public string? InceptionWeights { get; init; }
        [CommandOption("--classifier <FILE>")][Description("MNIST classifier weights (default: the committed models/mnist-classifier).")]
        public string? Classifier { get; init; }
        [CommandOption("--save-stats <FILE>")][Description("Save the generated set's feature statistics (mergeable across shards) as .safetensors.")]
        public string? SaveStats { get; init; }
        [CommandOption("--save-reference-stats <FILE>")][Description("Save the reference set's feature statistics as .safetensors.")]
        public string? SaveReferenceStats { get; init; }
        [CommandOption("--json <FILE>")][Description("Also write the results as JSON.")]
        public string? Json { get; init; }
        [CommandOption("--batch-size <N>")][Description("Images per forward call (default 100 for mnist, 16 for inception).")]
        public int? BatchSize { get; init; }
        [CommandOption("--splits <N>")][Description("Inception Score splits (default 10).")]
        public int Splits { get; init; } = InceptionScore.DefaultSplits;
        [CommandOption("--is-shuffle <SEED>")][Description("Split a fixed random permutation of the generated images for the Inception Score (for class-ordered sets).")]
        public long? IsShuffle { get; init; }
        [CommandOption("--labels-from <RUN_JSON>")]
        [Description("Labels of the generated images from a pag sample run.json, in its sample order (for a .npy written by --save-tensor; a folder with its own run.json needs nothing).")]
        public string? LabelsFrom { get; init; }
        [CommandOption("-k|--neighbours <N>")][Description("Neighbourhood size k of precision/recall (default 3).")]
        public int K { get; init; } = PrecisionRecall.DefaultK;
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        if (s.Generated.Length == 0) throw new PagSharpException("pag eval needs --generated DIR|FILE.npy|STATS.safetensors");
        if (s.BatchSize is < 1) throw new PagSharpException($"--batch-size must be at least 1 (got {s.BatchSize})");
        if (s.Splits < 1) throw new PagSharpException($"--splits must be at least 1 (got {s.Splits})");
        if (s.K < 1) throw new PagSharpException($"--k must be at least 1 (got {s.K})");
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        using var network = LoadNetwork(s);
        int batchSize = s.BatchSize ?? (network is InceptionFeatureNetwork ? 16 : 100);

        var (genStats, genFeatures) = LoadSide(network, s.Generated, batchSize, "generated", ct);
        using var _g = genStats;
        using var _gf = genFeatures;
        var (refStats, refFeatures) = LoadSide(network, [s.Reference], batchSize, "reference", ct);
        using var _r = refStats;
        using var _rf = refFeatures;
        if (s.SaveStats is not null) genStats.Save(s.SaveStats);
        if (s.SaveReferenceStats is not null) refStats.Save(s.SaveReferenceStats);

        var result = Evaluation.Evaluate(genStats, refStats, genFeatures, refFeatures, s.K, s.Splits, s.IsShuffle, GeneratedLabels(s, network, genStats.Count));
        PrintTable(result);
        if (s.Json is not null) AtomicFile.WriteAllText(s.Json, ToJson(result, s) + "\n");
        return 0;
    }

    /// <summary>
    /// Per-image labels of the generated images of the MNIST model, read from a pag sample run.json (the label of each
    /// sample; the null class counts as unlabelled): <see cref="Settings.LabelsFrom"/> in the manifest's sample order,
    /// else the run.json of one generated folder, in the order the folder's images are read; else null.
    /// </summary>
    private static IReadOnlyList<long?>? GeneratedLabels(Settings s, IFeatureNetwork network, long generatedCount)
    {
        if (network is not MnistFeatureNetwork)
        {
            if (s.LabelsFrom is not null) throw new PagSharpException("--labels-from needs --features mnist (label accuracy uses the MNIST classifier)");
            return null;
        }
        if (s.LabelsFrom is { } explicitManifest)
        {
            if (!File.Exists(explicitManifest)) throw new PagSharpException($"--labels-from '{explicitManifest}' does not exist");
            var labels = ReadLabels(explicitManifest, strict: true)!.Select(x => x.Label).ToArray();
            if (labels.Length != generatedCount)
                throw new PagSharpException($"--labels-from '{explicitManifest}' lists {labels.Length} samples but {generatedCount} images were generated");
            return labels;
        }
        if (s.Generated.Length != 1 || !Directory.Exists(s.Generated[0])) return null;
        string manifest = Path.Combine(s.Generated[0], "run.json");
        if (!File.Exists(manifest) || ReadLabels(manifest, strict: false) is not { Count: > 0 } samples) return null;
        var byFile = new Dictionary<string, long?>(StringComparer.Ordinal);
        foreach (var (file, label) in samples) byFile[file] = label;
        return ImageSets.FolderFiles(s.Generated[0]).Select(f => byFile.GetValueOrDefault(f)).ToArray();
    }

    /// <summary>(file, label) of each sample listed in a run.json; null (or, when strict, an error) if it cannot be read.</summary>
    private static List<(string File, long? Label)>? ReadLabels(string manifest, bool strict)
    {
        JsonNode? run;
        try { run = JsonNode.Parse(File.ReadAllText(manifest)); }
        catch (JsonException) when (!strict) { return null; }
        catch (JsonException e) { throw new PagSharpException($"--labels-from '{manifest}' is not valid JSON: {e.Message}"); }
        if (run?["samples"] is not JsonArray list)
            return strict ? throw new PagSharpException($"--labels-from '{manifest}' has no \"samples\" list (is it a pag sample run.json?)") : null;
        int? nullClass = (int?)run["settings"]?["model_config"]?["null_class"];
        var result = new List<(string, long?)>();
        foreach (var sample in list)
            if (sample?["file"]?.GetValue<string>() is { } file)
                result.Add((file, sample["label"] is JsonValue v && v.TryGetValue<long>(out long l) && l != nullClass ? l : null));
        return result;
    }

    private static IFeatureNetwork LoadNetwork(Settings s)
    {
        switch (s.Features)
        {
            case "mnist":
                if (s.InceptionWeights is not null) throw new PagSharpException("--inception-weights needs --features inception");
                var path = s.Classifier ?? MnistClassifier.BuiltInPath();
                if (!File.Exists(path)) throw new PagSharpException($"classifier weights '{path}' do not exist");
                return new MnistFeatureNetwork(MnistClassifier.Load(path));
            case "inception":
                if (s.InceptionWeights is null)
                    throw new PagSharpException("--features inception needs --inception-weights FILE (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)");
                return new InceptionFeatureNetwork(InceptionV3.Load(s.InceptionWeights));
            default:
                throw new PagSharpException($"unknown --features '{s.Features}'; valid: mnist, inception");
        }
    }

    /// <summary>Statistics of one side (merged over its sources), and its features when every source is images.</summary>
    private static (FeatureStats Stats, FeatureSet? Features) LoadSide(IFeatureNetwork network, string[] sources, int batchSize, string side, CancellationToken ct)
    {
        var stats = new FeatureStats(network.FeatureName, network.FeatureDim);
        var sets = new List<FeatureSet>();
        bool statsOnly = false;
        try
        {
            foreach (var source in sources)
            {
                if (File.Exists(source) && source.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
                {
                    using var loaded = FeatureStats.Load(source);
                    if (loaded.FeatureName != network.FeatureName || loaded.Dim != network.FeatureDim)
                        throw new PagSharpException(
                            $"the {side} statistics '{source}' hold {loaded.Dim}-dimensional '{loaded.FeatureName}' features, but the feature network is '{network.FeatureName}' ({network.FeatureDim}-dimensional); compute both sides with the same --features");
                    stats.Merge(loaded);
                    statsOnly = true;
                    continue;
                }
                using var images = ImageSets.Load(source, network.InputChannels);
                var set = FeatureExtractor.Extract(network, images, batchSize, null, ct);
                sets.Add(set);
                stats.Add(set.Features);
                AnsiConsole.MarkupLine($"{side}: {set.Count} images from {Markup.Escape(source)}");
            }
            FeatureSet? features = null;
            if (!statsOnly)
                features = sets.Count == 1 ? sets[0] : new FeatureSet(network.FeatureName, cat(sets.Select(x => x.Features).ToArray(), 0), cat(sets.Select(x => x.Probabilities).ToArray(), 0));
            foreach (var set in sets) if (!ReferenceEquals(set, features)) set.Dispose();
            return (stats, features);
        }
        catch
        {
            stats.Dispose();
            foreach (var set in sets) set.Dispose();
            throw;
        }
    }

    /// <summary>Below this many images per side, pag eval warns that FID is not comparable.</summary>
    public const int MinImagesForFid = 200;

    private static void PrintTable(EvaluationResult r)
    {
        var table = new Table().AddColumn("metric").AddColumn(new TableColumn("value").RightAligned());
        table.AddRow("FID", F(r.Fid));
        table.AddRow($"Inception Score ({r.Splits} splits)", r.InceptionScore is double m ? $"{F(m)} ± {F(r.InceptionScoreStd ?? 0)}" : "n/a (statistics only)");
        table.AddRow($"precision (k = {r.K})", r.Precision is double p ? F(p) : "n/a (statistics only)");
        table.AddRow($"recall (k = {r.K})", r.Recall is double c ? F(c) : "n/a (statistics only)");
        if (r.Recognised is double rec) table.AddRow($"recognised (p ≥ {Evaluation.RecognitionThreshold.ToString(CultureInfo.InvariantCulture)})", F(rec));
        if (r.LabelAccuracy is double acc) table.AddRow($"classified as their label ({r.LabelledCount})", F(acc));
        table.AddRow("generated", r.GeneratedCount.ToString(CultureInfo.InvariantCulture));
        table.AddRow("reference", r.ReferenceCount.ToString(CultureInfo.InvariantCulture));
        table.AddRow("features", Markup.Escape(r.FeatureName));
        AnsiConsole.Write(table);
        if (Math.Min(r.GeneratedCount, r.ReferenceCount) < MinImagesForFid)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] FID from {Math.Min(r.GeneratedCount, r.ReferenceCount)} images is strongly biased upwards and noisy; compare runs with hundreds to thousands of images each (docs/metrics.md)");
    }

    private static string F(double v) => v.ToString("F4", CultureInfo.InvariantCulture);

    private static string ToJson(EvaluationResult r, Settings s) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        ["features"] = r.FeatureName,
        ["generated"] = s.Generated,
        ["reference"] = s.Reference,
        ["generated_count"] = r.GeneratedCount,
        ["reference_count"] = r.ReferenceCount,
        ["fid"] = r.Fid,
        ["inception_score"] = r.InceptionScore,
        ["inception_score_std"] = r.InceptionScoreStd,
        ["splits"] = r.Splits,
        ["precision"] = r.Precision,
        ["recall"] = r.Recall,
        ["recognised"] = r.Recognised,
        ["label_accuracy"] = r.LabelAccuracy,
        ["labelled_count"] = r.LabelledCount,
        ["k"] = r.K,
    }, new JsonSerializerOptions { WriteIndented = true });
}
