using PagSharp.Models.Adm;
using System.ComponentModel;
using System.Globalization;
using System.Text.Json;
using PagSharp.IO;
using PagSharp.Metrics;
using PagSharp.Models;
using PagSharp.Training.Datasets;
using Spectre.Console;
using Spectre.Console.Cli;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag train-classifier</c>: trains the MNIST classifier used as the feature network of <c>pag eval</c>.</summary>
public sealed class TrainClassifierCommand : Command<TrainClassifierCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--output <DIR>")][Description("Folder for model.safetensors and training.json.")]
        public string Output { get; init; } = MnistClassifier.BuiltInFolder;
        [CommandOption("--epochs <N>")][Description("Passes over the training digits.")]
        public int Epochs { get; init; } = new ClassifierTrainOptions().Epochs;
        [CommandOption("--seed <N>")][Description("Seed of the initial weights and batch order (default 0).")]
        public long Seed { get; init; }
        [CommandOption("--batch-size <N>")][Description("Digits per optimiser step.")]
        public int BatchSize { get; init; } = new ClassifierTrainOptions().BatchSize;
        [CommandOption("--lr <LR>")][Description("Learning rate.")]
        public double LearningRate { get; init; } = new ClassifierTrainOptions().LearningRate;
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        var options = new ClassifierTrainOptions { Epochs = s.Epochs, Seed = s.Seed, BatchSize = s.BatchSize, LearningRate = s.LearningRate };
        using var mnist = MnistDataset.Load();
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        AnsiConsole.MarkupLine($"training the MNIST classifier on {mnist.TrainImages.shape[0]} digits: {options.Epochs} epochs, batch {options.BatchSize}, seed {options.Seed}");
        long lastPrinted = 0;
        double seconds = 0;
        var progress = new SyncProgress<ClassifierProgress>(p =>
        {
            seconds = p.Seconds;
            if (p.TestAccuracy is double acc)
                AnsiConsole.MarkupLine($"epoch {p.Epoch}: test accuracy {acc:P2} ({p.Seconds:F0} s)");
            else if (p.Step - lastPrinted >= 50)
            {
                lastPrinted = p.Step;
                AnsiConsole.MarkupLine($"step {p.Step}/{p.TotalSteps} loss {p.Loss:F4} ({p.Seconds:F0} s)");
            }
        });
        using var model = MnistClassifierTraining.Train(mnist.TrainImages, mnist.TrainLabels, options, mnist.TestImages, mnist.TestLabels, progress, ct);
        double accuracy = MnistClassifierTraining.Accuracy(model, mnist.TestImages, mnist.TestLabels);
        long parameters = model.parameters().Sum(p => p.numel());
        string inv(double v) => v.ToString("R", CultureInfo.InvariantCulture);
        string weights = Path.Combine(s.Output, ModelStore.WeightsFile);
        SafeTensors.Save(weights, model.state_dict(), new Dictionary<string, string>
        {
            ["model"] = "PagSharp MnistClassifier",
            ["test_accuracy"] = inv(accuracy),
            ["epochs"] = options.Epochs.ToString(CultureInfo.InvariantCulture),
            ["seed"] = options.Seed.ToString(CultureInfo.InvariantCulture),
        });
        var summary = new Dictionary<string, object>
        {
            ["test_accuracy"] = accuracy,
            ["test_digits"] = mnist.TestImages.shape[0],
            ["train_digits"] = mnist.TrainImages.shape[0],
            ["parameters"] = parameters,
            ["epochs"] = options.Epochs,
            ["batch_size"] = options.BatchSize,
            ["learning_rate"] = options.LearningRate,
            ["weight_decay"] = options.WeightDecay,
            ["max_shift"] = options.MaxShift,
            ["seed"] = options.Seed,
            ["wall_seconds"] = Math.Round(seconds, 1),
            ["threads"] = TorchSharp.torch.get_num_threads(),
        };
        AtomicFile.WriteAllText(Path.Combine(s.Output, "training.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }) + "\n");
        AnsiConsole.MarkupLine($"done: {parameters:N0} parameters, test accuracy {accuracy:P2} on {mnist.TestImages.shape[0]} digits, {seconds:F0} s → {Markup.Escape(weights)}");
        return 0;
    }
}
