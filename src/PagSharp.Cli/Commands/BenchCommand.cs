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
using PagSharp.Sampling;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag bench</c>: seconds per sampling step and peak memory for each guidance method, each measured in its own
/// child process (so peak RSS belongs to that configuration alone); writes a markdown report.
/// </summary>
public sealed class BenchCommand : Command<BenchCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--output <FILE>")][Description("Markdown report (default docs/performance.md).")]
        public string Output { get; init; } = Path.Combine("docs", "performance.md");
        [CommandOption("--runs <N>")][Description("Timed runs per configuration and round (their median is the round's value).")]
        public int Runs { get; init; } = 5;
        [CommandOption("--rounds <N>")][Description("Rounds: every configuration is measured once per round, in turn, so that drift of a shared machine hits all alike; the median over rounds is reported (256×256: at most 2 rounds of 1 run).")]
        public int Rounds { get; init; } = 3;
        [CommandOption("--sdxl")][Description("Also time the SDXL base UNet (128×128 latents; about a minute per UNet pass on two cores). Without it the report gives SDXL's work ratios only.")]
        public bool Sdxl { get; init; }
        [CommandOption("--quick")][Description("Skip the 256×256 ADM and the Stable Diffusion configurations.")]
        public bool Quick { get; init; }
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
        cases.Add(new Case("mnist", 64, 2, "cfg+pag-mid"));
        if (!s.Quick)
        {
            foreach (var m in Methods) cases.Add(new Case("adm-256", 1, m.EndsWith(CacheSuffix, StringComparison.Ordinal) ? 2 : 1, m));
            foreach (var m in SdBench.Methods) cases.Add(new Case(SdBench.Model, 1, m.EndsWith(CacheSuffix, StringComparison.Ordinal) ? 2 : 1, m));
        }
        if (s.Sdxl) foreach (var m in SdBench.XlMethods) cases.Add(new Case(SdBench.XlModel, 1, 1, m));
        if (s.Runs < 1 || s.Rounds < 1) throw new PagSharpException($"--runs and --rounds must be ≥ 1 (got {s.Runs}, {s.Rounds})");
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
        var measured = cases.ToDictionary(c => c, _ => new List<(double Sec, double PeakMb)>());
        for (int round = 0; round < s.Rounds; round++)
            foreach (var c in cases)
            {
                bool big = c.Model != "mnist";
                if (big && round >= 2) continue;
                AnsiConsole.MarkupLine($"round {round + 1}/{s.Rounds}: {c.Model} batch {c.Batch} {c.Method} …");
                var (sec, mb) = Spawn(c, big ? 1 : s.Runs);
                measured[c].Add((sec, mb));
                AnsiConsole.MarkupLine($"  {sec:F3} s/step, peak RSS {mb:F0} MB");
            }
        var results = cases.Select(c =>
        {
            var secs = measured[c].Select(m => m.Sec).OrderBy(v => v).ToArray();
            double median = secs.Length % 2 == 1 ? secs[secs.Length / 2] : (secs[secs.Length / 2 - 1] + secs[secs.Length / 2]) / 2;
            return (c, median, (secs[^1] - secs[0]) / median, measured[c].Max(m => m.PeakMb), macs[c]);
        }).ToList();
        AtomicFile.WriteAllText(s.Output, Report(results, s.Runs, s.Rounds) + (s.Sdxl ? "" : XlWorkRatios()));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(s.Output)}");
        return 0;
    }

    private static (double Sec, double PeakMb) Spawn(Case c, int runs)
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
        return (doc.GetProperty("sec_per_step").GetDouble(), doc.GetProperty("peak_mb").GetDouble());
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
    private static double StepMacs(AdmUNet net, Case c)
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
            _ => throw new PagSharpException($"unknown benchmark method {c.Method}"),
        };
        if (v.Cache) macs = (macs + Step(v.Method.StartsWith("cfg", StringComparison.Ordinal), null)) / 2;
        net.SplitSkips = true;
        return macs;
    }

    private static int RunChild(Case c, int runs)
    {
        if (c.Model is SdBench.Model or SdBench.XlModel)
        {
            var v = Variant.Parse(c.Method);
            return Answer(SdBench.Time(c, v.Method, v.Cache, runs));
        }
        var cfg = ConfigOf(c);
        using var net = new AdmUNet(cfg);
        net.eval();
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

    /// <summary>A child's answer: the median of its timed runs and its peak RSS, as one JSON line.</summary>
    private static int Answer(List<double> timed)
    {
        double median = timed.OrderBy(v => v).ElementAt(timed.Count / 2);
        Console.WriteLine(JsonSerializer.Serialize(new { sec_per_step = median, peak_mb = PeakRssMb() }));
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

    private static string Report(List<(Case Case, double Sec, double Spread, double PeakMb, double Macs)> results, int runs, int rounds)
    {
        var sb = new StringBuilder();
        string cpu = File.Exists("/proc/cpuinfo")
            ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':')[1].Trim() ?? "?" : "?";
        sb.AppendLine("# Performance");
        sb.AppendLine();
        sb.AppendLine($"Generated by `pag bench` on {DateTime.UtcNow:yyyy-MM-dd}: {cpu}, {Environment.ProcessorCount} cores, torch threads = {Environment.ProcessorCount}, TorchSharp-cpu 0.107.0 (libtorch 2.10). " +
                      $"Seconds per DDIM step: each configuration runs in its own process, once per round and in turn ({rounds} rounds; ADM 256×256 and SD: {Math.Min(rounds, 2)}), " +
                      $"a round's value being the median of {runs} runs of 5 steps after one warm-up run (ADM 256×256 and SD: a run of one step after a warm-up run; `+cache2` rows 6 and 2 steps, half of them running the perturbed branch); the table gives the median over rounds, " +
                      "the spread (max − min of the rounds ÷ median) and the largest peak RSS (the process's VmHWM). The allocator is tuned as in every `pag` command (`CpuRuntime`). " +
                      "GMACs/step: multiply-adds of the step as PagSharp runs it, counted from the model's structure (`AdmCost`, `SdCost`: convolutions, linears and attention products, " +
                      "with the shared prefix, split skips and identity attention; SAG as its two passes; `+cache2` the mean of a step with and one without the perturbed branch). " +
                      "Its ratios are the work ratios; the measured ones differ from them only as far as this CPU runs the parts of a step at different speeds (the forked part, for one, runs at a larger batch).");
        sb.AppendLine();
        foreach (var group in results.GroupBy(r => (r.Case.Model, r.Case.Batch)))
        {
            var none = group.FirstOrDefault(r => r.Case.Method == "none");
            var cfg = group.FirstOrDefault(r => r.Case.Method == "cfg");
            static string Ratio(double v, double by) => by > 0 ? (v / by).ToString("F2", CultureInfo.InvariantCulture) : "–";
            string title = group.Key.Model switch
            {
                "mnist" => "Built-in MNIST model",
                SdBench.Model => "Stable Diffusion 1.5 UNet (its unet config, random weights), 64×64 latents (512×512 images), 77 text tokens",
                SdBench.XlModel => "SDXL base UNet (its unet config, 2.57 B parameters, random weights), 128×128 latents (1024×1024 images), 77 text tokens; pag-mid = diffusers' mid, its 10 self-attention layers",
                _ => "ADM 256×256 (OpenAI's 256×256 configuration with random weights; class-conditional so that CFG can be timed, which adds only a label-embedding lookup to the unconditional model)",
            };
            sb.AppendLine($"## {title}, batch {group.Key.Batch}");
            sb.AppendLine();
            sb.AppendLine("| method | s/step | spread | ÷ none | ÷ CFG | GMACs/step | MACs ÷ none | MACs ÷ CFG | peak RSS (MB) |");
            sb.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
            foreach (var r in group)
            {
                bool withCfg = r.Case.Method.Contains("cfg", StringComparison.Ordinal);
                sb.AppendLine($"| {r.Case.Method} | {r.Sec:F4} | {r.Spread * 100:F0}% | {Ratio(r.Sec, none.Sec)} | {(withCfg ? Ratio(r.Sec, cfg.Sec) : "–")} | " +
                              $"{r.Macs / 1e9:F1} | {Ratio(r.Macs, none.Macs)} | {(withCfg ? Ratio(r.Macs, cfg.Macs) : "–")} | {r.PeakMb:F0} |");
            }
            sb.AppendLine();
        }
        return sb.ToString();
    }
}
