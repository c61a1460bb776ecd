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
    }

    public const string RunFile = "run.json";

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        using var loaded = s.LoadModel();
        var guidance = s.BuildGuidance(loaded.Net.AttentionLayers);
        var options = s.BuildSampling(guidance);
        options.Validate();
        string respacing = options.ResolvedRespacing(loaded.Config.DiffusionSteps);
        using var init = s.InitNoise is null ? null : TensorSpec.Load(s.InitNoise);
        int count = s.Count ?? (int?)init?.shape[0] ?? 16;
        if (count < 1) throw new PagSharpException($"--count must be ≥ 1 (got {count})");
        if (init is not null && init.shape[0] != count)
            throw new PagSharpException($"--init-noise holds {init.shape[0]} samples but --count is {count}");
        if (init is not null && (init.dim() != 4 || !init.shape[1..].SequenceEqual(loaded.SampleShape)))
            throw new PagSharpException($"--init-noise has shape [{string.Join(",", init.shape)}]; this model expects [N,{string.Join(",", loaded.SampleShape)}]");
        var (shardK, shardN) = ParseShard(s.Shard);
        if (s.SaveTensor is not null && !s.SaveTensor.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
            throw new PagSharpException($"--save-tensor '{s.SaveTensor}' must be a .npy file");

        // Reject bad labels / guidance before anything is written.
        Sampler.Validate(loaded.Net, options);

        int bs = options.BatchSize, batches = (count + bs - 1) / bs;
        var myBatches = Enumerable.Range(0, batches).Where(b => b % shardN == shardK).ToArray();
        var sampleInfo = new JsonArray();
        for (int i = 0; i < count; i++)
        {
            if ((i / bs) % shardN != shardK) continue;
            sampleInfo.Add(new JsonObject
            {
                ["index"] = i,
                ["seed"] = options.SampleSeed(i),
                ["label"] = LabelOf(options, loaded, i) is int lab ? lab : null,
                ["file"] = FileName(i),
            });
        }
        var settingsJson = new JsonObject
        {
            ["model"] = loaded.Source,
            ["model_config"] = JsonNode.Parse(loaded.Config.ToJson()),
            ["sampler"] = options.Scheduler, ["timestep_respacing"] = respacing, ["eta"] = s.Eta, ["clip_denoised"] = !s.NoClip,
            ["guidance_scale"] = guidance.GuidanceScale,
            ["pag_scale"] = guidance.PagScale?.ToString(), ["pag_formula"] = guidance.Formula.ToString(),
            ["pag_layers"] = new JsonArray(guidance.PagLayers.Select(l => (JsonNode)l!).ToArray()),
            ["pag_interval"] = s.PagInterval, ["perturbation"] = guidance.Perturbation.Spec, ["split_batch"] = s.SplitBatch,
            ["labels"] = options.Labels is null ? null : new JsonArray(options.Labels.Select(l => (JsonNode)l!).ToArray()),
            ["seed"] = s.Seed, ["count"] = count, ["batch_size"] = bs,
            ["init_noise"] = s.InitNoise is null ? null : Path.GetFullPath(s.InitNoise.Split(':')[0]),
            ["shard"] = $"{shardK}/{shardN}",
        };
        // Keys for the newer options only when they are used, so run.json files of earlier runs still match.
        if (guidance.GuidanceSchedule is not null) settingsJson["guidance_schedule"] = guidance.GuidanceSchedule.ToString();
        if (s.GuidanceInterval is not null) settingsJson["guidance_interval"] = s.GuidanceInterval;
        if (guidance.UsesPag && guidance.PagCacheInterval != 1) settingsJson["pag_cache_interval"] = guidance.PagCacheInterval;
        if (guidance.Sag is { } sag)
        {
            settingsJson["method"] = "sag";
            settingsJson["sag"] = new JsonObject
            {
                ["scale"] = sag.Scale.ToString(), ["formula"] = sag.Formula.ToString(),
                ["layer"] = sag.Layer ?? Guidance.SagDenoiser.DefaultLayer(loaded.Net.AttentionLayers),
                ["blur_sigma"] = sag.BlurSigma, ["kernel_size"] = sag.KernelSize, ["interval"] = s.SagInterval,
            };
        }
        Directory.CreateDirectory(s.Output);
        string runPath = Path.Combine(s.Output, RunFile);
        if (File.Exists(runPath))
        {
            var existing = JsonNode.Parse(File.ReadAllText(runPath))?["settings"];
            if (existing is null || !JsonNode.DeepEquals(existing, settingsJson))
                throw new PagSharpException($"{s.Output} holds a run with different settings ({Differences(existing, settingsJson)}); choose another --output or delete it");
        }
        else
        {
            AtomicFile.WriteAllText(runPath, new JsonObject { ["settings"] = settingsJson, ["samples"] = sampleInfo }
                .ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }

        if (guidance.PagLayers.Count > 0)
            AnsiConsole.MarkupLine($"PAG layers ({guidance.Perturbation.Spec}): {Markup.Escape(string.Join(", ", guidance.PagLayers))}");
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, App.CtrlC()).Token;
        string partialDir = Path.Combine(s.Output, ".tensors");
        int written = 0, skipped = 0;
        try
        {
            AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var steps = Diffusion.Respacing.SpaceTimesteps(loaded.Config.DiffusionSteps, respacing).Length;
                    var task = ctx.AddTask("sampling", maxValue: myBatches.Length * steps);
                    int done = 0;
                    foreach (int b in myBatches)
                    {
                        var idx = Enumerable.Range(b * bs, Math.Min(bs, count - b * bs)).Select(i => (long)i).ToArray();
                        string partial = Path.Combine(partialDir, $"batch_{b:D5}.npy");
                        if (idx.All(i => File.Exists(Path.Combine(s.Output, FileName(i)))) && (s.SaveTensor is null || File.Exists(partial)))
                        {
                            skipped += idx.Length;
                            done++;
                            task.Value = done * steps;
                            continue;
                        }
                        using var scope = NewDisposeScope();
                        var x0 = init?.narrow(0, idx[0], idx.Length);
                        var progress = new SyncProgress<SamplingProgress>(p =>
                        {
                            task.Value = done * steps + p.Step;
                            task.Description = $"batch {Array.IndexOf(myBatches, b) + 1}/{myBatches.Length} step {p.Step}/{p.StepsPerBatch} {p.StepsPerSecond:F2} it/s";
                        });
                        var x = Sampler.Sample(loaded.Net, options, idx, x0, progress, ct);
                        if (s.SaveTensor is not null) Npy.Save(partial, x);
                        for (int j = 0; j < idx.Length; j++)
                            Png.Save(Path.Combine(s.Output, FileName(idx[j])), x[j]);
                        written += idx.Length;
                        done++;
                        task.Value = done * steps;
                    }
                });
        }
        catch (OperationCanceledException)
        {
            AnsiConsole.MarkupLine($"[yellow]stopped: {written} samples written this time ({skipped} were already there); rerun the same command to resume[/]");
            return App.ExitCancelled;
        }

        var mine = myBatches.SelectMany(b => Enumerable.Range(b * bs, Math.Min(bs, count - b * bs))).ToArray();
        using (var images = stack(mine.Select(i => Png.Load(Path.Combine(s.Output, FileName(i)), channels: loaded.Config.InChannels)).ToArray()))
        using (var grid = Grid.Make(images, (int)Math.Ceiling(Math.Sqrt(mine.Length))))
            Png.Save(Path.Combine(s.Output, "grid.png"), grid);
        if (s.SaveTensor is not null)
        {
            using var all = cat(myBatches.Select(b => Npy.Load(Path.Combine(partialDir, $"batch_{b:D5}.npy"))).ToArray(), 0);
            Npy.Save(s.SaveTensor, all);
            // The per-batch tensors stay: a rerun skips finished batches only when their tensors are still there.
        }
        AnsiConsole.MarkupLine($"{written} samples written, {skipped} already present → {Markup.Escape(s.Output)} (grid.png, {RunFile})");
        return 0;
    }

    public static string FileName(long index) => $"{index:D5}.png";

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

    internal static string Differences(JsonNode? a, JsonObject b)
    {
        if (a is not JsonObject ao) return "unreadable run.json";
        var keys = ao.Select(kv => kv.Key).Union(b.Select(kv => kv.Key));
        return string.Join(", ", keys.Where(k => !JsonNode.DeepEquals(ao[k], b[k])).Select(k => $"{k}: {ao[k]?.ToJsonString() ?? "null"} → {b[k]?.ToJsonString() ?? "null"}"));
    }
}
