using PagSharp.Pipelines;
using PagSharp.Denoisers;
using PagSharp.Attention;
using System.ComponentModel;
using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Runtime;
using PagSharp.Sampling;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag bench</c>: seconds per sampling step and peak memory for each guidance method, each measured in its own
/// child process (so peak RSS belongs to that configuration alone), and the machine's large-GEMM throughput
/// (<see cref="GemmThroughput"/>, float32 and bfloat16) as the reference each row's multiply-adds per second are
/// divided by; rewrites the generated part of a markdown report (<see cref="Splice"/>).
/// </summary>
public sealed class BenchCommand : Command<BenchCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--output <FILE>")][Description("Markdown report (default docs/performance.md; with --only or --methods it must be given).")]
        public string? Output { get; init; }
        [CommandOption("--runs <N>")][Description("Timed runs per configuration and round (their median is the round's value).")]
        public int Runs { get; init; } = 5;
        [CommandOption("--rounds <N>")][Description("Rounds: every configuration is measured once per round, in turn, so that drift of a shared machine hits all alike; the median over rounds is reported (256×256: at most 2 rounds of 1 run).")]
        public int Rounds { get; init; } = 3;
        [CommandOption("--large-rounds <N>")][Description("Rounds for the ADM 256×256 and Stable Diffusion 1.5 rows (default 2, at most --rounds; SDXL always 1): each of their runs takes seconds to minutes on two cores.")]
        public int LargeRounds { get; init; } = 2;
        [CommandOption("--sdxl")][Description("Also time the SDXL base UNet (128×128 latents; about a minute per UNet pass on two cores). Without it the report gives SDXL's work ratios only.")]
        public bool Sdxl { get; init; }
        [CommandOption("--xl-rounds <N>")][Description("Rounds for the SDXL rows (default 1, at most --rounds; each is one step after a warm-up step).")]
        public int XlRounds { get; init; } = 1;
        [CommandOption("--only <MODELS>")][Description("Time only these models, comma-separated: mnist, adm-256, sd-1.5, sdxl (sdxl then needs no --sdxl), or gemm for the GEMM reference alone (seconds: is bfloat16 faster on this CPU?). The report covers only them, so --output must name another file than the full run's docs/performance.md.")]
        public string? Only { get; init; }
        [CommandOption("--methods <LIST>")][Description("Time only these methods (comma-separated row names such as none,cfg,cfg+pag-mid; both types), e.g. to repeat a few rows with more rounds. Needs --output, as --only.")]
        public string? OnlyMethods { get; init; }
        [CommandOption("--quick")][Description("Skip the 256×256 ADM and the Stable Diffusion configurations.")]
        public bool Quick { get; init; }
        [CommandOption("--gemm-size <N>")][Description("n of the GEMM reference, an n×n @ n×n matrix product timed in float32 and bfloat16 (default 2048).")]
        public int GemmSize { get; init; } = 2048;
        [CommandOption("--child <SPEC>")][Description("Internal: measure one configuration and print JSON.")]
        public string? Child { get; init; }
    }

    /// <summary>One benchmark configuration: model, batch, steps per run, guidance.</summary>
    /// <param name="Dtype">The type the network's weights are held and computed in (Stable Diffusion rows; default float32).</param>
    public sealed record Case(string Model, int Batch, int Steps, string Method, string Dtype = "float32");

    private static readonly string[] Methods =
    {
        "none", "pag-mid", "pag-deep", "naive-pag-mid", "cfg", "cfg+pag-mid", "naive-cfg+pag-mid", "sag",
        "seg-mid", "pag-mid+seg-mid", "auto",
        "none" + ChannelsLastSuffix, "pag-mid" + ChannelsLastSuffix, "pag-mid" + NoSplitSuffix, "cfg+pag-mid" + NoSplitSuffix,
        "pag-mid" + CacheSuffix, "cfg+pag-mid" + CacheSuffix,
    };

    /// <summary>
    /// The rest of PAG's family, timed on the built-in model only: skip-layer guidance at the middle block (on every
    /// step), APG and CFG-Zero* (CFG's two branches with another combination).
    /// </summary>
    private static readonly string[] FamilyMethods = { "slg-mid", "apg", "cfgzero" };

    /// <summary>The methods also timed with the network in bfloat16 (beside their float32 rows) on every model but SDXL.</summary>
    private static readonly string[] HalfMethods = { "none", "pag-mid", "cfg", "cfg+pag-mid" };

    /// <summary>The model name of the GEMM reference cases (Batch = n, Method = the kernel: <see cref="GemmThroughput.Kernels"/>).</summary>
    internal const string Gemm = "gemm";

    /// <summary>The types the GEMM reference is timed in: each row's multiply-adds per second are divided by the peak of its type.</summary>
    internal static readonly string[] GemmTypes = { "float32", "bfloat16" };

    /// <summary>A method name ending in this runs with channels-last (NHWC) weights and activations.</summary>
    private const string ChannelsLastSuffix = "+channels-last";
    /// <summary>A method name ending in this computes the decoder's skip-only part per branch (AdmUNet.SplitSkips off).</summary>
    private const string NoSplitSuffix = "+no-split-skips";
    /// <summary>
    /// A method name ending in this runs the perturbed branch at every second step only (PagCacheInterval = 2, an
    /// approximation); such cases time an even number of steps so that half of them compute the branch.
    /// </summary>
    private const string CacheSuffix = "+cache2";

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        if (s.Child is not null) return RunChild(JsonSerializer.Deserialize<Case>(s.Child)!, s.Runs);
        var cases = new List<Case>();
        foreach (var m in Methods) cases.Add(new Case("mnist", 16, m.EndsWith(CacheSuffix, StringComparison.Ordinal) ? 6 : 5, m));
        foreach (var m in FamilyMethods) cases.Add(new Case("mnist", 16, 5, m));
        foreach (var m in HalfMethods) cases.Add(new Case("mnist", 16, 5, m, "bfloat16"));
        cases.Add(new Case("mnist", 64, 2, "cfg+pag-mid"));
        if (!s.Quick)
        {
            foreach (var m in Methods) cases.Add(new Case("adm-256", 1, m.EndsWith(CacheSuffix, StringComparison.Ordinal) ? 2 : 1, m));
            foreach (var m in HalfMethods) cases.Add(new Case("adm-256", 1, 1, m, "bfloat16"));
            foreach (var m in SdBench.Methods) cases.Add(new Case(SdBench.Model, 1, m.EndsWith(CacheSuffix, StringComparison.Ordinal) ? 2 : 1, m));
            foreach (var m in HalfMethods) cases.Add(new Case(SdBench.Model, 1, 1, m, "bfloat16"));
        }
        var only = ParseOnly(s.Only);
        bool timeXl = s.Sdxl || only?.Contains(SdBench.XlModel) == true;
        if (timeXl)
        {
            // SDXL steps take half a minute to two minutes on two cores: unguided, CFG and CFG+PAG in both types.
            foreach (var t in new[] { "float32", "bfloat16" })
                foreach (var m in new[] { "none", "cfg", "cfg+pag-mid" }) cases.Add(new Case(SdBench.XlModel, 1, 1, m, t));
        }
        if (only is not null) cases.RemoveAll(c => !only.Contains(c.Model));
        var methods = ParseMethods(s.OnlyMethods, cases);
        if (methods is not null) cases.RemoveAll(c => !methods.Contains(c.Method));
        if (cases.Count == 0 && only?.Contains(Gemm) != true) throw new PagSharpException("nothing to time: --quick skips every model --only names");
        if (s.Runs < 1 || s.Rounds < 1 || s.LargeRounds < 1 || s.XlRounds < 1)
            throw new PagSharpException($"--runs, --rounds, --large-rounds and --xl-rounds must be ≥ 1 (got {s.Runs}, {s.Rounds}, {s.LargeRounds}, {s.XlRounds})");
        bool partial = only is not null || methods is not null;
        string output = s.Output ?? (!partial ? Path.Combine("docs", "performance.md")
            : throw new PagSharpException("--only and --methods time part of the benchmark: give --output (docs/performance.md holds the full run)"));
        if (s.GemmSize < 1) throw new PagSharpException($"--gemm-size must be ≥ 1 (got {s.GemmSize})");
        var gemmCases = GemmTypes.SelectMany(t => GemmThroughput.Kernels.Select(k => new Case(Gemm, s.GemmSize, 1, k, t))).ToList();
        // Multiply-adds per step, from each model's structure (random weights; nothing is run), first: a bad case fails at once.
        var macs = new Dictionary<Case, double>();
        foreach (var group in cases.GroupBy(c => c.Model))
        {
            if (group.Key is SdBench.Model or SdBench.XlModel)
            {
                using var unet = SdBench.Create(group.Key, structureOnly: true);
                foreach (var c in group)
                {
                    var v = Variant.Parse(c.Method);
                    macs[c] = SdBench.StepMacs(unet, c, v.Method, v.Cache);
                }
                continue;
            }
            using var net = new AdmUNet(ConfigOf(group.First()));
            foreach (var c in group) macs[c] = StepMacs(net, c);
        }
        foreach (var c in gemmCases) macs[c] = (double)c.Batch * c.Batch * c.Batch;
        var measured = gemmCases.Concat(cases).ToDictionary(c => c, _ => new List<Measurement>());
        for (int round = 0; round < s.Rounds; round++)
            foreach (var c in gemmCases.Concat(cases)) // the GEMM reference first in every round, so drift hits it as the rows
            {
                bool big = c.Model is not ("mnist" or Gemm);
                if (c.Model == SdBench.XlModel ? round >= s.XlRounds : big && round >= s.LargeRounds) continue;
                AnsiConsole.MarkupLine(c.Model == Gemm
                    ? $"round {round + 1}/{s.Rounds}: GEMM {c.Batch}×{c.Batch} @ {c.Batch}×{c.Batch} {c.Dtype} {c.Method} …"
                    : $"round {round + 1}/{s.Rounds}: {c.Model} batch {c.Batch} {Label(c)} …");
                var m = Spawn(c, big ? 1 : s.Runs);
                measured[c].Add(m);
                AnsiConsole.MarkupLine(c.Model == Gemm
                    ? $"  {m.Sec:F3} s/product, {macs[c] / m.Sec / 1e9:F1} GMAC/s, peak RSS {m.PeakMb:F0} MB"
                    : $"  {m.Sec:F3} s/step, peak RSS {m.PeakMb:F0} MB");
            }
        Row Summarize(Case c)
        {
            var secs = measured[c].Select(m => m.Sec).ToArray();
            double median = GemmThroughput.Median(secs);
            return new Row(c, median, (secs.Max() - secs.Min()) / median, measured[c].Max(m => m.PeakMb), macs[c]);
        }
        var threads = measured.Values.SelectMany(v => v).Select(m => m.Threads).Distinct().Order().ToArray();
        var bench = new Results(gemmCases.Select(Summarize).ToList(), cases.Select(Summarize).ToList(), CpuInfo.Current(), threads, s.Runs, s.Rounds,
            Math.Min(s.Rounds, s.LargeRounds), Math.Min(s.Rounds, s.XlRounds));
        foreach (var line in bench.ConsoleSummary()) AnsiConsole.MarkupLine(Markup.Escape(line));
        string existing = File.Exists(output) ? File.ReadAllText(output) : "";
        AtomicFile.WriteAllText(output, Splice(existing, Report(bench) + (timeXl || partial ? "" : XlWorkRatios())));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(output)} (its generated part; the text outside the markers is kept)");
        return 0;
    }

    /// <summary>The models <c>pag bench</c> times (<see cref="Case.Model"/> names), in report order.</summary>
    internal static readonly string[] Models = { "mnist", "adm-256", SdBench.Model, SdBench.XlModel };

    /// <summary>
    /// The models of a <c>--only</c> list (null: all), each checked against <see cref="Models"/> or <see cref="Gemm"/>
    /// (the GEMM reference is timed in every run; named alone, nothing else is).
    /// </summary>
    internal static HashSet<string>? ParseOnly(string? only) =>
        ParseNames(only, "--only", "model", Models.Append(Gemm).ToList(), n => $"unknown model '{n}'");

    /// <summary>The methods of a <c>--methods</c> list (null: all), each one that some case of <paramref name="cases"/> has.</summary>
    internal static HashSet<string>? ParseMethods(string? list, IReadOnlyList<Case> cases) =>
        ParseNames(list, "--methods", "method", cases.Select(c => c.Method).Distinct().ToList(), n => $"no row '{n}' among the models timed");

    /// <summary>A comma-separated list of names (null: no filter), each one of <paramref name="valid"/>.</summary>
    private static HashSet<string>? ParseNames(string? list, string option, string noun, IReadOnlyList<string> valid, Func<string, string> unknown)
    {
        if (list is null) return null;
        var names = list.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (names.Length == 0) throw new PagSharpException($"{option} needs at least one {noun}; valid: {string.Join(", ", valid)}");
        foreach (var n in names)
            if (!valid.Contains(n)) throw new PagSharpException($"{option}: {unknown(n)}; valid: {string.Join(", ", valid)}");
        return names.ToHashSet();
    }

    /// <summary>One child's answer: seconds per step (GEMM: per product), its peak RSS and its torch threads.</summary>
    internal sealed record Measurement(double Sec, double PeakMb, int Threads);

    /// <summary>One table row: a case, the median over rounds, the spread of the rounds, the largest peak RSS and multiply-adds per step.</summary>
    internal sealed record Row(Case Case, double Sec, double Spread, double PeakMb, double Macs)
    {
        /// <summary>Multiply-adds per second achieved.</summary>
        public double MacsPerSecond => Macs / Sec;
    }

    /// <summary>Everything a report is made of: the GEMM reference rows (one per type and kernel), the benchmark rows and the machine.</summary>
    internal sealed record Results(IReadOnlyList<Row> Gemm, IReadOnlyList<Row> Rows, CpuInfo Cpu, IReadOnlyList<int> Threads, int Runs, int Rounds, int LargeRounds = 2, int XlRounds = 1)
    {
        /// <summary>The GEMM reference's multiply-adds per second in <paramref name="dtype"/>: its fastest kernel; null if it was not timed.</summary>
        public double? Peak(string dtype) => Gemm.Where(g => g.Case.Dtype == dtype).Select(g => (double?)g.MacsPerSecond).Max();

        /// <summary>A row's multiply-adds per second as a fraction of the GEMM peak of its type (null where that type has none).</summary>
        public double? OfPeak(Row r) => Peak(r.Case.Dtype) is { } p ? r.MacsPerSecond / p : null;

        public IEnumerable<string> ConsoleSummary()
        {
            yield return $"CPU: {Cpu}; torch threads {string.Join(", ", Threads)}";
            foreach (var g in Gemm)
                yield return $"GEMM {g.Case.Dtype} {g.Case.Method}: {g.MacsPerSecond / 1e9:F1} GMAC/s ({g.Case.Batch}×{g.Case.Batch} @ {g.Case.Batch}×{g.Case.Batch}, {g.Sec:F4} s/product)";
            foreach (var t in Gemm.Select(g => g.Case.Dtype).Distinct())
                yield return $"GEMM peak {t}: {Peak(t)!.Value / 1e9:F1} GMAC/s";
            foreach (var r in Rows)
                yield return $"{r.Case.Model} batch {r.Case.Batch} {Label(r.Case)}: {r.Sec:F4} s/step, {r.MacsPerSecond / 1e9:F1} GMAC/s = {Percent(OfPeak(r))} of the {r.Case.Dtype} GEMM peak";
        }
    }

    /// <summary>A row's method, with its type where that is not float32.</summary>
    internal static string Label(Case c) => c.Dtype == "float32" ? c.Method : $"{c.Method} ({c.Dtype})";

    /// <summary><paramref name="v"/> ÷ <paramref name="by"/> to two decimals, "–" where there is nothing to divide by.</summary>
    private static string Ratio(double v, double by) => by > 0 ? (v / by).ToString("F2", CultureInfo.InvariantCulture) : "–";

    internal static string Percent(double? fraction) => fraction is { } f ? (f * 100).ToString("F1", CultureInfo.InvariantCulture) + "%" : "–";

    /// <summary>The line before <c>pag bench</c>'s generated part of the report.</summary>
    internal const string BeginMarker = "<!-- pag bench: generated part, from here to the end marker (rewritten by each run; write notes outside it) -->";
    /// <summary>The line after it.</summary>
    internal const string EndMarker = "<!-- pag bench: end of the generated part -->";

    /// <summary>
    /// The report file with its generated part replaced by <paramref name="generated"/>: the text between the markers
    /// where <paramref name="existing"/> has them, everything outside them kept. A file without markers keeps all its
    /// text after the new generated part (below its first line when that is a level-1 title); an empty one gets a title.
    /// </summary>
    internal static string Splice(string existing, string generated)
    {
        string block = BeginMarker + "\n\n" + generated.TrimEnd('\n') + "\n\n" + EndMarker + "\n";
        int begin = existing.IndexOf(BeginMarker, StringComparison.Ordinal);
        int end = begin < 0 ? -1 : existing.IndexOf(EndMarker, begin, StringComparison.Ordinal);
        if (begin >= 0 && end >= 0)
        {
            int after = end + EndMarker.Length;
            if (after < existing.Length && existing[after] == '\n') after++;
            return existing[..begin] + block + existing[after..];
        }
        if (existing.Trim().Length == 0) return "# Performance\n\n" + block;
        if (existing.StartsWith("# ", StringComparison.Ordinal))
        {
            int eol = existing.IndexOf('\n');
            string title = eol < 0 ? existing : existing[..(eol + 1)];
            string rest = eol < 0 ? "" : existing[(eol + 1)..].TrimStart('\n');
            return title.TrimEnd('\n') + "\n\n" + block + (rest.Length > 0 ? "\n" + rest : "");
        }
        return block + "\n" + existing;
    }

    private static Measurement Spawn(Case c, int runs)
    {
        var self = Environment.ProcessPath!;
        var psi = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") psi.ArgumentList.Add(Environment.GetCommandLineArgs()[0]);
        foreach (var a in new[] { "bench", "--child", JsonSerializer.Serialize(c), "--runs", runs.ToString(CultureInfo.InvariantCulture) })
            psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        var line = output.Split('\n').LastOrDefault(l => l.StartsWith("{", StringComparison.Ordinal))
            ?? throw new PagSharpException($"benchmark child failed for {c}: {output}");
        var doc = JsonDocument.Parse(line).RootElement;
        return new Measurement(doc.GetProperty("sec_per_step").GetDouble(), doc.GetProperty("peak_mb").GetDouble(),
            doc.TryGetProperty("threads", out var t) ? t.GetInt32() : 0);
    }

    /// <summary>A method name split into its guidance method and suffixes.</summary>
    private sealed record Variant(string Method, bool ChannelsLast, bool NoSplit, bool Cache)
    {
        public static Variant Parse(string name)
        {
            foreach (var suffix in new[] { ChannelsLastSuffix, NoSplitSuffix, CacheSuffix })
                if (name.EndsWith(suffix, StringComparison.Ordinal))
                    return new Variant(name[..^suffix.Length], suffix == ChannelsLastSuffix, suffix == NoSplitSuffix, suffix == CacheSuffix);
            return new Variant(name, false, false, false);
        }
    }

    private static AdmConfig ConfigOf(Case c) => c.Model == "mnist"
        ? ModelStore.ResolveConfig(null, null)
        : AdmPresets.Get("adm-256-cond") with { NullClass = 0 };  // class-conditional so CFG can be timed

    private static readonly string[] MidLayers = { "middle_block.1" };

    /// <summary>
    /// "deep": the official ImageNet-256 default (input_blocks.14.1, 16.1, 17.1, middle_block.1) where present, else the
    /// input-side attention layers plus the middle block.
    /// </summary>
    private static string[] DeepLayers(IReadOnlyList<AttentionLayerInfo> layers)
    {
        string[] official = { "input_blocks.14.1", "input_blocks.16.1", "input_blocks.17.1", "middle_block.1" };
        return official.All(n => layers.Any(l => l.Name == n)) ? official
            : layers.Where(l => l.Group is "input" or "middle").Select(l => l.Name).ToArray();
    }

    /// <summary>
    /// Multiply-adds of one step of <paramref name="c"/> as PagSharp runs it (<see cref="AdmCost"/>); SAG is its two
    /// passes, a <c>+cache2</c> step the mean of a step with and one without the perturbed branch.
    /// </summary>
    internal static double StepMacs(AdmUNet net, Case c)
    {
        var v = Variant.Parse(c.Method);
        net.SplitSkips = !v.NoSplit;
        long b = c.Batch;
        long Step(bool cfg, string[]? layers, bool shared = true) => AdmCost.Forward(net, MacCall.GuidedStep(b, cfg, layers, shared));
        double macs = v.Method switch
        {
            "none" => Step(false, null),
            "pag-mid" => Step(false, MidLayers),
            "pag-deep" => Step(false, DeepLayers(net.AttentionLayers)),
            "naive-pag-mid" => Step(false, MidLayers, shared: false),
            "cfg" => Step(true, null),
            "cfg+pag-mid" => Step(true, MidLayers),
            "naive-cfg+pag-mid" => Step(true, MidLayers, shared: false),
            "sag" => 2.0 * Step(false, null),
            // SEG computes full attention on its forked copies; PAG + SEG fork two copies, identity for PAG's only.
            "seg-mid" => AdmCost.Forward(net, new MacCall(b, MidLayers, 0, b)),
            "pag-mid+seg-mid" => AdmCost.Forward(net, new MacCall(b, MidLayers, b, 2 * b)),
            "auto" => 2.0 * Step(false, null), // the guide has the model's architecture here
            // SLG forks at the layer as PAG does; counted as PAG's identity attention, an upper bound by the skipped
            // layer's value and output projections (which the skip does not compute).
            "slg-mid" => Step(false, MidLayers),
            "apg" or "cfgzero" => Step(true, null), // CFG's branches; the combination is elementwise
            _ => throw new PagSharpException($"unknown benchmark method {c.Method}"),
        };
        if (v.Cache) macs = (macs + Step(v.Method.StartsWith("cfg", StringComparison.Ordinal), null)) / 2;
        net.SplitSkips = true;
        return macs;
    }

    private static int RunChild(Case c, int runs)
    {
        if (c.Model == Gemm)
            return Answer(GemmThroughput.Measure(ComputeType.Parse(c.Dtype), c.Batch, warmup: 2, repetitions: runs, kernel: c.Method).Seconds.ToList());
        if (c.Model is SdBench.Model or SdBench.XlModel)
        {
            var v = Variant.Parse(c.Method);
            return Answer(SdBench.Time(c, v.Method, v.Cache, runs));
        }
        var cfg = ConfigOf(c);
        using var net = new AdmUNet(cfg);
        net.eval();
        ComputeType.Apply(net, ComputeType.Parse(c.Dtype)); // the denoiser casts its input in and its output back to float32
        var (method, channelsLast, noSplit, cache) = Variant.Parse(c.Method);
        if (channelsLast) MemoryLayout.ToChannelsLast(net);
        net.SplitSkips = !noSplit;
        string[] mid = MidLayers, deep = DeepLayers(net.AttentionLayers);
        var g = method switch
        {
            "none" => new GuidanceSettings(),
            "pag-mid" => new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = mid },
            "pag-deep" => new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = deep },
            "naive-pag-mid" => new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = mid, SharedPrefix = false },
            "cfg" => new GuidanceSettings { GuidanceScale = 3 },
            "cfg+pag-mid" => new GuidanceSettings { GuidanceScale = 3, PagScale = new ScaleSchedule.Constant(2), PagLayers = mid },
            "naive-cfg+pag-mid" => new GuidanceSettings { GuidanceScale = 3, PagScale = new ScaleSchedule.Constant(2), PagLayers = mid, SharedPrefix = false },
            "sag" => new GuidanceSettings { Sag = new SagSettings { Scale = new ScaleSchedule.Constant(1) } },
            "seg-mid" => new GuidanceSettings { Perturbed = [PerturbedGuidance.Seg(2, 10, mid)] },
            "pag-mid+seg-mid" => new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = mid, Perturbed = [PerturbedGuidance.Seg(2, 10, mid)] },
            "auto" => new GuidanceSettings { AutoguidanceScale = new ScaleSchedule.Constant(1) },
            "slg-mid" => new GuidanceSettings { Perturbed = [PerturbedGuidance.Slg(2, mid, start: 0, stop: 1)] },
            "apg" => new GuidanceSettings { GuidanceScale = 3, Apg = new ApgSettings { Eta = 0, Momentum = -0.5 } },
            "cfgzero" => new GuidanceSettings { GuidanceScale = 3, CfgZeroStar = true },
            _ => throw new PagSharpException($"unknown benchmark method {c.Method}"),
        };
        if (cache) g = g with { PagCacheInterval = 2 };
        var labels = cfg.ResolvedNumClasses is null ? null : zeros(c.Batch, dtype: ScalarType.Int64);
        var model = new AdmDenoiser(net, labels, c.Batch);
        var options = new SamplingOptions { Scheduler = "ddim", Steps = c.Steps, TimestepRespacing = c.Steps.ToString(CultureInfo.InvariantCulture), Guidance = g };
        var spec = DiffusionSpec.Of(cfg) with { Variance = VarianceType.LearnedRange };
        // Autoguidance times a guide of the model's own architecture (a weaker model of the same config costs the same).
        var denoiser = Sampler.CreateDenoiser(model, spec, options, guide: g.UsesAutoguidance ? new AdmDenoiser(net, labels, c.Batch) : null);
        using var noise = new NoiseSource(Enumerable.Range(0, c.Batch).Select(i => (long)i));
        var x = noise.Randn(cfg.InChannels, cfg.ImageSize, cfg.ImageSize);
        if (channelsLast) x = MemoryLayout.ChannelsLast(x);
        var times = new List<double>();
        using var _ = inference_mode();
        for (int r = 0; r <= runs; r++)
        {
            var sw = Stopwatch.StartNew();
            var scheduler = Sampler.CreateScheduler(options, spec);
            SamplingLoop.Run(scheduler, denoiser, x, null).Dispose();
            times.Add(sw.Elapsed.TotalSeconds / c.Steps);
        }
        return Answer(times.Skip(1).ToList()); // first run is warm-up
    }

    /// <summary>A child's answer: the median of its timed runs, its peak RSS and torch's threads, as one JSON line.</summary>
    private static int Answer(List<double> timed)
    {
        double median = timed.OrderBy(v => v).ElementAt(timed.Count / 2);
        Console.WriteLine(JsonSerializer.Serialize(new { sec_per_step = median, peak_mb = PeakRssMb(), threads = get_num_threads() }));
        return 0;
    }

    private static double PeakRssMb() => PeakRssMb(File.ReadLines("/proc/self/status"));

    /// <summary>VmHWM of a /proc/PID/status text in MB ("VmHWM:\t  391000 kB"; no padding from 10 GB on), NaN if absent.</summary>
    internal static double PeakRssMb(IEnumerable<string> status)
    {
        foreach (var line in status)
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                return double.Parse(line.Split(new[] { ' ', '\t' }, StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) / 1024;
        return double.NaN;
    }

    /// <summary>The SDXL section of a report without <c>--sdxl</c>: multiply-adds per step and their ratios, nothing timed.</summary>
    internal static string XlWorkRatios()
    {
        using var unet = SdBench.Create(SdBench.XlModel, structureOnly: true);
        var rows = SdBench.XlMethods.Select(m => (Method: m, Macs: SdBench.StepMacs(unet, new Case(SdBench.XlModel, 1, 1, m), m, false))).ToList();
        double none = rows.Single(r => r.Method == "none").Macs, cfg = rows.Single(r => r.Method == "cfg").Macs;
        var sb = new StringBuilder();
        sb.AppendLine("## SDXL base UNet (its unet config, 2.57 B parameters), 128×128 latents (1024×1024 images), 77 text tokens, batch 1: work ratios");
        sb.AppendLine();
        sb.AppendLine("Counted from the model's structure (`SdCost`; the UNet built on the meta device, so nothing is allocated or run); `pag bench --sdxl` also times these rows. " +
                      "pag-mid = diffusers' `mid`, the mid block's 10 self-attention layers.");
        sb.AppendLine();
        sb.AppendLine("| method | GMACs/step | MACs ÷ none | MACs ÷ CFG |");
        sb.AppendLine("|---|---:|---:|---:|");
        foreach (var (m, macs) in rows)
            sb.AppendLine($"| {m} | {macs / 1e9:F1} | {macs / none:F2} | {(m.Contains("cfg", StringComparison.Ordinal) ? (macs / cfg).ToString("F2", CultureInfo.InvariantCulture) : "–")} |");
        sb.AppendLine();
        return sb.ToString();
    }

    /// <summary>The generated part of the report (markdown): the machine and its GEMM peaks, then one table per model and batch.</summary>
    internal static string Report(Results bench)
    {
        var sb = new StringBuilder();
        int runs = bench.Runs, rounds = bench.Rounds;
        string threads = bench.Threads.Count == 0 ? "?" : string.Join(", ", bench.Threads);
        sb.AppendLine($"Generated by `pag bench` on {DateTime.UtcNow:yyyy-MM-dd}: {bench.Cpu}, {Environment.ProcessorCount} cores, torch threads = {threads}, TorchSharp-cpu 0.107.0 (libtorch 2.10). " +
                      $"Seconds per DDIM step: each configuration runs in its own process, once per round and in turn ({rounds} rounds; ADM 256×256 and SD 1.5: {bench.LargeRounds}; SDXL: {bench.XlRounds}), " +
                      $"a round's value being the median of {runs} runs of 5 steps after one warm-up run (ADM 256×256 and SD: a run of one step after a warm-up run; `+cache2` rows 6 and 2 steps, half of them running the perturbed branch); the table gives the median over rounds, " +
                      "the spread (max − min of the rounds ÷ median) and the largest peak RSS (the process's VmHWM). The allocator is tuned as in every `pag` command (`CpuRuntime`). " +
                      "GMACs/step: multiply-adds of the step as PagSharp runs it, counted from the model's structure (`AdmCost`, `SdCost`: convolutions, linears and attention products, " +
                      "with the shared prefix, split skips and identity attention; SAG as its two passes; `+cache2` the mean of a step with and one without the perturbed branch). " +
                      "Its ratios are the work ratios; the measured ones differ from them only as far as this CPU runs the parts of a step at different speeds (the forked part, for one, runs at a larger batch). " +
                      "GMAC/s: GMACs/step ÷ s/step; ÷ GEMM: that as a fraction of the GEMM peak of the row's type (below), i.e. how close the step comes to the fastest this machine multiplies. " +
                      "time ÷ work: the row's time ratio ÷ its work ratio (both against the unguided step of its type); above 1, the step is slower than its multiply-adds explain. " +
                      "Rows marked (bfloat16) hold the network in bfloat16 (`--dtype bfloat16`; guidance and sampler float32); their ratios are against the bfloat16 rows, " +
                      "and the last table sets each beside its float32 row.");
        sb.AppendLine();
        if (bench.Gemm.Count > 0)
        {
            int n = bench.Gemm[0].Case.Batch;
            var peaks = bench.Gemm.Select(g => g.Case.Dtype).Distinct().Select(t => $"{t} {bench.Peak(t)!.Value / 1e9:F1} GMAC/s").ToList();
            sb.AppendLine($"## GEMM peak: {string.Join(", ", peaks)} ({n}×{n} @ {n}×{n} matrix product, `GemmThroughput`)");
            sb.AppendLine();
            sb.AppendLine($"The reference for the ÷ GEMM column: {n}³ = {(double)n * n * n / 1e9:F2} G multiply-adds per product, through libtorch's two CPU GEMM paths: " +
                          $"`mm` (its BLAS; bfloat16 goes to oneDNN) and the same product as a 1×1 convolution of {n} channels over {n} pixels (oneDNN, as the networks' convolutions); " +
                          $"a type's peak is its faster kernel. Each kernel and type runs in its own process like every row, first in each round; " +
                          $"a round's value is the median of {runs} products after 2 warm-up ones. CPU: {bench.Cpu}.");
            sb.AppendLine();
            sb.AppendLine("| type | kernel | s/product | spread | GMAC/s | ÷ peak of the type | peak RSS (MB) |");
            sb.AppendLine("|---|---|---:|---:|---:|---:|---:|");
            foreach (var g in bench.Gemm)
                sb.AppendLine($"| {g.Case.Dtype} | {g.Case.Method} | {g.Sec:F4} | {g.Spread * 100:F0}% | {g.MacsPerSecond / 1e9:F1} | " +
                              $"{(g.MacsPerSecond / bench.Peak(g.Case.Dtype)!.Value).ToString("F2", CultureInfo.InvariantCulture)} | {g.PeakMb:F0} |");
            sb.AppendLine();
        }
        foreach (var group in bench.Rows.GroupBy(r => (r.Case.Model, r.Case.Batch)))
        {
            string title = group.Key.Model switch
            {
                "mnist" => "Built-in MNIST model",
                SdBench.Model => "Stable Diffusion 1.5 UNet (its unet config, random weights), 64×64 latents (512×512 images), 77 text tokens",
                SdBench.XlModel => "SDXL base UNet (its unet config, 2.57 B parameters, random weights), 128×128 latents (1024×1024 images), 77 text tokens; pag-mid = diffusers' mid, its 10 self-attention layers",
                _ => "ADM 256×256 (OpenAI's 256×256 configuration with random weights; class-conditional so that CFG can be timed, which adds only a label-embedding lookup to the unconditional model)",
            };
            sb.AppendLine($"## {title}, batch {group.Key.Batch}");
            sb.AppendLine();
            sb.AppendLine("| method | s/step | spread | ÷ none | ÷ CFG | GMACs/step | MACs ÷ none | MACs ÷ CFG | time ÷ work | GMAC/s | ÷ GEMM | peak RSS (MB) |");
            sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var r in group)
            {
                // Ratios against the unguided (and CFG) step held in the same type.
                var none = group.FirstOrDefault(o => o.Case.Method == "none" && o.Case.Dtype == r.Case.Dtype);
                var cfg = group.FirstOrDefault(o => o.Case.Method == "cfg" && o.Case.Dtype == r.Case.Dtype);
                bool withCfg = r.Case.Method.Contains("cfg", StringComparison.Ordinal) || r.Case.Method == "apg";
                string work = none is null || ReferenceEquals(r, none) ? "–" : Ratio(r.Sec / none.Sec, r.Macs / none.Macs);
                sb.AppendLine($"| {Label(r.Case)} | {r.Sec:F4} | {r.Spread * 100:F0}% | {Ratio(r.Sec, none?.Sec ?? 0)} | {(withCfg ? Ratio(r.Sec, cfg?.Sec ?? 0) : "–")} | " +
                              $"{r.Macs / 1e9:F1} | {Ratio(r.Macs, none?.Macs ?? 0)} | {(withCfg ? Ratio(r.Macs, cfg?.Macs ?? 0) : "–")} | {work} | " +
                              $"{r.MacsPerSecond / 1e9:F1} | {Percent(bench.OfPeak(r))} | {r.PeakMb:F0} |");
            }
            sb.AppendLine();
        }
        var pairs = bench.Rows.Where(r => r.Case.Dtype != "float32")
            .Select(h => (Full: bench.Rows.FirstOrDefault(f => f.Case == h.Case with { Dtype = "float32" }), Half: h))
            .Where(p => p.Full is not null).ToList();
        if (pairs.Count > 0)
        {
            sb.AppendLine("## Reduced precision against float32 (same model, batch and method)");
            sb.AppendLine();
            sb.AppendLine("| model | batch | method | type | float32 s/step | its s/step | speed-up | float32 peak RSS (MB) | its peak RSS (MB) | RSS ÷ float32 |");
            sb.AppendLine("|---|---:|---|---|---:|---:|---:|---:|---:|---:|");
            foreach (var (full, half) in pairs)
                sb.AppendLine($"| {half.Case.Model} | {half.Case.Batch} | {half.Case.Method} | {half.Case.Dtype} | {full!.Sec:F4} | {half.Sec:F4} | {Ratio(full.Sec, half.Sec)} | " +
                              $"{full.PeakMb:F0} | {half.PeakMb:F0} | {Ratio(half.PeakMb, full.PeakMb)} |");
            sb.AppendLine();
        }
        return sb.ToString();
    }
}
