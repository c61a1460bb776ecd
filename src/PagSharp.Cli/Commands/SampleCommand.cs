using TorchSharp;
using PagSharp.Runtime;
using PagSharp.Runs;
using PagSharp.Models.Adm;
using PagSharp.Pipelines;
using System.ComponentModel;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Imaging;
using Grid = PagSharp.Imaging.Grid;
using PagSharp.IO;
using PagSharp.Sampling;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag sample</c>: one PNG per sample, a grid, and <c>run.json</c> with every setting and per-sample seed.
/// Re-running into the same folder resumes (finished batches are skipped); a folder holding a different run is refused.
/// </summary>
public sealed class SampleCommand : Command<SampleCommand.Settings>
{
    public sealed class Settings : GuidanceOptionSettings
    {
        [CommandOption("--count <N>")][Description("Number of samples (default 16, or the batch of --init-noise).")]
        public int? Count { get; init; }
        [CommandOption("--output <DIR>")][Description("Output folder (default out/sample).")]
        public string Output { get; init; } = Path.Combine("out", "sample");
        [CommandOption("--init-noise <TENSOR>")][Description("x_T from FILE.npy or FILE.safetensors:KEY, shape [[N,C,H,W]].")]
        public string? InitNoise { get; init; }
        [CommandOption("--save-tensor <FILE>")][Description("Also save the final samples as float32 [[N,C,H,W]] .npy (model space, before conversion to pixels).")]
        public string? SaveTensor { get; init; }
        [CommandOption("--shard <K/N>")][Description("Produce only shard K (0-based) of N: batches b with b mod N = K.")]
        public string? Shard { get; init; }
        [CommandOption("--device <DEVICE>")][Description("cpu (default), cuda or cuda:N. CUDA needs a TorchSharp CUDA backend; this build ships the CPU one, and only cpu is tested here. Noise is drawn on the CPU from each sample's seed and moved, so results do not depend on the device's RNG.")]
        public string Device { get; init; } = "cpu";
    }

    public const string RunFile = RunFolder.ManifestFile;

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        var device = PagSharp.Runtime.DeviceSpec.Parse(s.Device);
        using var loaded = s.LoadModel();
        using var guide = s.LoadGuide();
        StartupTrace.Mark("model-loaded");
        if (device.type != TorchSharp.DeviceType.CPU)
        {
            loaded.Net.to(device);
            guide?.Net.to(device);
        }
        var guidance = s.BuildGuidance(loaded.Net.AttentionLayers, loaded.Config.GuidanceDefaults);
        var options = s.BuildSampling(guidance, loaded.Config.Sampling);
        options.Validate();
        string respacing = options.ResolvedRespacing(loaded.Config.DiffusionSteps);
        using var init = s.InitNoise is null ? null : TensorSpec.Load(s.InitNoise);
        int count = s.Count ?? (int?)init?.shape[0] ?? 16;
        if (count < 1) throw new PagSharpException($"--count must be ≥ 1 (got {count})");
        if (init is not null && init.shape[0] != count)
            throw new PagSharpException($"--init-noise holds {init.shape[0]} samples but --count is {count}");
        if (init is not null && (init.dim() != 4 || !init.shape[1..].SequenceEqual(loaded.SampleShape)))
            throw new PagSharpException($"--init-noise has shape [{string.Join(",", init.shape)}]; this model expects [N,{string.Join(",", loaded.SampleShape)}]");
        if (init is not null && !init.isfinite().all().item<bool>())
            throw new PagSharpException($"--init-noise '{s.InitNoise}' holds NaN or infinite values");
        var (shardK, shardN) = ParseShard(s.Shard);
        if (s.SaveTensor is not null && !s.SaveTensor.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
            throw new PagSharpException($"--save-tensor '{s.SaveTensor}' must be a .npy file");

        // Reject bad labels / guidance before anything is written.
        Sampler.Validate(loaded.Net, options, guide?.Net);
        var (forward, estimate, budget) = Sampler.PlanMemory(loaded.Net, options);
        if (forward < options.BatchSize)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] batches of {options.BatchSize} need about {MemoryBudget.Format(estimate)} but {MemoryBudget.Format(budget ?? 0)} is available: " +
                $"the forward calls run {forward} samples at a time (same seeds; results equal up to float rounding)");

        int bs = options.BatchSize;
        var settingsJson = new JsonObject
        {
            ["model"] = ModelStore.Describe(loaded.Source),
            ["model_config"] = JsonNode.Parse(loaded.Config.ToJson()),
            ["dtype"] = s.Dtype, ["sampler"] = options.Scheduler, ["karras_sigmas"] = options.KarrasSigmas, ["timestep_respacing"] = respacing, ["steps"] = Sampler.StepCount(options, loaded.Config),
            ["eta"] = s.Eta, ["clip_denoised"] = !s.NoClip,
            ["labels"] = options.Labels is null ? null : new JsonArray(options.Labels.Select(l => (JsonNode)l!).ToArray()),
            ["seed"] = s.Seed, ["count"] = count, ["batch_size"] = bs,
            ["init_noise"] = s.InitNoise is null ? null : Path.GetFullPath(s.InitNoise.Split(':')[0]),
            ["shard"] = $"{shardK}/{shardN}",
        };
        foreach (var (key, value) in RunManifest.Guidance(guidance, loaded.Net.AttentionLayers)) settingsJson[key] = value;
        if (guide is not null) settingsJson["guidance_model"] = ModelStore.Describe(guide.Source);
        if (s.SaveTensor is not null) CheckOutputFile(s.SaveTensor, "--save-tensor");

        using var run = RunFolder.Open(s.Output, settingsJson, count, bs, (shardK, shardN), i => new JsonObject
        {
            ["index"] = i,
            ["seed"] = options.SampleSeed(i),
            ["label"] = LabelOf(options, loaded, i) is int lab ? lab : null,
            ["file"] = RunFolder.FileName(i),
        });
        if (guidance.PagLayers.Count > 0)
            AnsiConsole.MarkupLine($"PAG layers ({guidance.Perturbation.Spec}): {Markup.Escape(string.Join(", ", guidance.PagLayers))}");
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        int written = 0, skipped = 0;
        var myBatches = run.Batches;
        try
        {
            AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    int steps = Sampler.StepCount(options, loaded.Config);
                    var task = ctx.AddTask("sampling", maxValue: Math.Max(1, myBatches.Count * steps));
                    int done = 0;
                    foreach (int b in myBatches)
                    {
                        var idx = run.IndicesOf(b).Select(i => (long)i).ToArray();
                        if (run.IsDone(b, images: true, tensor: s.SaveTensor is not null))
                        {
                            skipped += idx.Length;
                            done++;
                            task.Value = done * steps;
                            continue;
                        }
                        using var scope = NewDisposeScope();
                        var x0 = init?.narrow(0, idx[0], idx.Length);
                        int batchNo = done;
                        var progress = new SyncProgress<SamplingProgress>(p =>
                        {
                            StartupTrace.FirstStep();
                            task.Value = batchNo * steps + p.Step;
                            task.Description = $"batch {batchNo + 1}/{myBatches.Count} step {p.Step}/{p.StepsPerBatch} {p.StepsPerSecond:F2} it/s";
                        });
                        var x = Sampler.Sample(loaded.Net, options, idx, x0, progress, ct, guide?.Net);
                        run.SaveBatch(b, x, s.SaveTensor is null ? null : x);
                        written += idx.Length;
                        done++;
                        task.Value = done * steps;
                    }
                });
        }
        catch (OperationCanceledException)
        {
            AnsiConsole.MarkupLine($"[yellow]stopped: {written} samples written this time ({skipped} were already there); rerun the same command to resume[/]");
            return ExitCodes.Cancelled;
        }

        run.SaveGrid(loaded.Config.InChannels);
        if (s.SaveTensor is not null)
        {
            using var all = run.CollectTensors();
            Npy.Save(s.SaveTensor, all);
            // The per-batch tensors stay: a rerun skips finished batches only when their tensors are still there.
        }
        AnsiConsole.MarkupLine($"{written} samples written, {skipped} already present → {Markup.Escape(s.Output)} ({RunFolder.GridFile}, {RunFolder.ManifestFile})");
        return 0;
    }

    /// <summary>Refuses an output file path that cannot be written: an existing folder, or a parent that is a file.</summary>
    internal static void CheckOutputFile(string path, string option) => OutputPath.Check(path, option, isFolder: false);

    public static string FileName(long index) => RunFolder.FileName(index);

    private static int? LabelOf(SamplingOptions o, LoadedAdm m, int i) =>
        !m.Net.IsClassConditional ? null : o.Labels is { } l ? l[i % l.Count] : m.Config.NullClass;

    public static (int K, int N) ParseShard(string? shard)
    {
        if (shard is null) return (0, 1);
        var p = shard.Split('/');
        if (p.Length != 2 || !int.TryParse(p[0], out int k) || !int.TryParse(p[1], out int n) || n < 1 || k < 0 || k >= n)
            throw new PagSharpException($"--shard '{shard}' must be K/N with 0 ≤ K < N, e.g. 0/4");
        return (k, n);
    }

    internal static string Differences(JsonNode? a, JsonObject b) => RunFolder.Differences(a, b);
}
