using PagSharp.Models.Adm;
using PagSharp.Runs;
using PagSharp.Denoisers;
using PagSharp.Pipelines;
using System.ComponentModel;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Diffusion;
using PagSharp.Imaging;
using PagSharp.Inverse;
using PagSharp.IO;
using PagSharp.Sampling;
using PagSharp.Training.Datasets;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using Grid = PagSharp.Imaging.Grid;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag restore</c>: inpainting, super-resolution and deblurring with Diffusion Posterior Sampling, with or without
/// PAG. Writes degraded input | restorations | ground truth side by side, per-sample PNGs and run.json.
/// </summary>
public sealed class RestoreCommand : Command<RestoreCommand.Settings>
{
    public sealed class Settings : GuidanceOptionSettings
    {
        [CommandOption("--image <FILE>")][Description("Ground-truth PNG/JPEG to degrade and restore.")]
        public string? Image { get; init; }
        [CommandOption("--digit <LIST>")][Description("Held-out MNIST test digits by class (0..9), comma-separated: the first held-out example of each (a class given twice takes its next example).")]
        public string? Digit { get; init; }
        [CommandOption("--index <LIST>")][Description("Held-out MNIST test digits by their index in the test set (0..999), comma-separated.")]
        public string? Index { get; init; }
        [CommandOption("--degraded <FILE>")][Description("An already-degraded PNG (measurement y) for the given --degradation (no ground truth).")]
        public string? Degraded { get; init; }
        [CommandOption("--degradation <SPEC>")][Description($"Operator: {OperatorSpec.ValidForms}.")]
        public string? Degradation { get; init; }
        [CommandOption("--sigma-y <S>")][Description("Measurement noise σ_y (image scale [[-1,1]]).")]
        public double SigmaY { get; init; } = 0.05;
        [CommandOption("--zeta <Z>")][Description("DPS step size ζ.")]
        public double Zeta { get; init; } = 1.0;
        [CommandOption("--grad-from <SOURCE>")][Description("ε for the measurement gradient: unguided (default, as the PSLD+PAG code) or guided.")]
        public string GradFrom { get; init; } = "unguided";
        [CommandOption("--count <N>")][Description("Restorations per input (seeds seed, seed+1, …).")]
        public int Count { get; init; } = 1;
        [CommandOption("--output <DIR>")][Description("Folder for the restorations, inputs, measurements and grid (default out/restore).")]
        public string Output { get; init; } = Path.Combine("out", "restore");
        [CommandOption("--save-tensor <FILE>")][Description("Save the restorations as float32 [[N,C,H,W]] .npy in [[-1,1]].")]
        public string? SaveTensor { get; init; }
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        if (new[] { s.Image, s.Digit, s.Index, s.Degraded }.Count(v => v is not null) != 1)
            throw new PagSharpException("give exactly one input: --image FILE, --digit CLASSES, --index INDICES or --degraded FILE");
        if (s.Degradation is null) throw new PagSharpException($"--degradation is required; valid forms: {OperatorSpec.ValidForms}");
        if (s.Count < 1) throw new PagSharpException($"--count must be ≥ 1 (got {s.Count})");
        var gradFrom = s.GradFrom switch
        {
            "unguided" => DpsGradientSource.Unguided,
            "guided" => DpsGradientSource.Guided,
            _ => throw new PagSharpException($"--grad-from '{s.GradFrom}': valid values are unguided, guided"),
        };
        if (s.SaveTensor is not null && !s.SaveTensor.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
            throw new PagSharpException($"--save-tensor '{s.SaveTensor}' must be a .npy file");

        using var loaded = s.LoadModel();
        var cfg = loaded.Config;
        var op = OperatorSpec.Parse(s.Degradation, cfg.ImageSize, s.SigmaY, s.Seed);
        var guidance = s.BuildGuidance(loaded.Net.AttentionLayers, loaded.Config.GuidanceDefaults);
        if (s.Sampler is not null && s.Sampler != "ddpm")
            throw new PagSharpException($"--scheduler {s.Sampler}: restore runs DPS on the ancestral DDPM chain; give --scheduler ddpm or leave it out");
        var options = s.BuildSampling(guidance) with { Scheduler = "ddpm" };
        options.Validate();
        string respacing = options.ResolvedRespacing(cfg.DiffusionSteps);

        // Inputs: ground truth (known) and measurement y.
        Tensor? truth = null;
        Tensor y;
        if (s.Degraded is not null)
        {
            var probe = op.Forward(zeros(1, cfg.InChannels, cfg.ImageSize, cfg.ImageSize));
            y = Png.Load(s.Degraded, channels: cfg.InChannels).unsqueeze(0);
            if (!y.shape.SequenceEqual(probe.shape))
                throw new PagSharpException($"--degraded image is [{string.Join(",", y.shape[1..])}]; '{s.Degradation}' measurements of this model are [{string.Join(",", probe.shape[1..])}]");
        }
        else
        {
            truth = s.Image is not null
                ? Png.Load(s.Image, cfg.ImageSize, cfg.InChannels).unsqueeze(0)
                : LoadDigits(s.Digit, s.Index, cfg.InChannels, cfg.ImageSize);
            using var g = new Generator((ulong)s.Seed);
            y = Measurement.Degrade(op, truth, g);
        }
        long inputs = y.shape[0];
        var labels = s.ParseLabels();
        if (labels is not null && !loaded.Net.IsClassConditional) throw new PagSharpException("this model is unconditional: --label/--labels are not valid");
        OutputPath.Check(s.Output, "--output", isFolder: true);
        if (s.SaveTensor is not null) OutputPath.Check(s.SaveTensor, "--save-tensor", isFolder: false);
        var dps = new DpsOptions { StepSize = s.Zeta, GradientFrom = gradFrom, Clip = !s.NoClip };
        int steps = Sampler.StepCount(options, cfg);
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        var started = DateTime.UtcNow;
        Tensor restored = null!;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("DPS", maxValue: steps);
                restored = Restoration.Run(loaded.Net, op, y, options, dps, s.Count,
                    info => { task.Value = info.Index + 1; task.Description = $"DPS step {info.Index + 1}/{info.Count}"; }, ct);
            });
        double seconds = (DateTime.UtcNow - started).TotalSeconds;

        // Outputs.
        var shown = op.Visualize(y, cfg.ImageSize, cfg.ImageSize);
        var rows = new List<Tensor>();
        for (int i = 0; i < inputs; i++)
        {
            rows.Add(shown[i..(i + 1)]);
            rows.Add(restored[(i * s.Count)..((i + 1) * s.Count)]);
            if (truth is not null) rows.Add(truth[i..(i + 1)]);
        }
        int cols = 1 + s.Count + (truth is null ? 0 : 1);
        var columnLabels = new List<string> { "degraded" };
        columnLabels.AddRange(Enumerable.Range(0, s.Count).Select(c => s.Count == 1 ? "restored" : $"seed {s.Seed + c}"));
        if (truth is not null) columnLabels.Add("truth");
        Directory.CreateDirectory(s.Output);
        Grid.SaveLabelled(Path.Combine(s.Output, "restore.png"), cat(rows.ToArray(), 0).clamp(-1, 1), (int)inputs, cols, columnLabels, null, 3);
        for (int i = 0; i < restored.shape[0]; i++) Png.Save(Path.Combine(s.Output, $"restored_{i:D5}.png"), restored[i]);
        if (s.SaveTensor is not null) Npy.Save(s.SaveTensor, restored);

        var metrics = new JsonObject();
        if (truth is not null)
        {
            var truthAll = truth.repeat_interleave(s.Count, 0);
            double psnr = ImageQuality.Psnr(restored, truthAll).mean().item<float>();
            double ssim = ImageQuality.Ssim(restored, truthAll).mean().item<float>();
            metrics["psnr_restored"] = psnr;
            metrics["ssim_restored"] = ssim;
            if (shown.shape.SequenceEqual(truth.shape))
                metrics["psnr_degraded"] = (double)ImageQuality.Psnr(shown, truth).mean().item<float>();
            AnsiConsole.MarkupLine($"PSNR {psnr:F2} dB, SSIM {ssim:F3}" + (metrics["psnr_degraded"] is JsonNode d ? $" (degraded input: {d.GetValue<double>():F2} dB)" : ""));
        }
        var run = new JsonObject
        {
            ["model"] = ModelStore.Describe(loaded.Source), ["degradation"] = s.Degradation, ["sigma_y"] = s.SigmaY, ["zeta"] = s.Zeta,
            ["grad_from"] = s.GradFrom, ["timestep_respacing"] = respacing,
            ["input"] = s.Image ?? s.Degraded ?? (s.Digit is not null ? $"mnist test digits of classes {s.Digit}" : $"mnist test digits at indices {s.Index}"), ["count"] = s.Count, ["seed"] = s.Seed,
            ["seconds"] = seconds, ["metrics"] = metrics,
        };
        foreach (var (key, value) in RunManifest.Guidance(guidance, loaded.Net.AttentionLayers)) run[key] = value;
        AtomicFile.WriteAllText(Path.Combine(s.Output, "run.json"), run.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(Path.Combine(s.Output, "restore.png"))} ({seconds:F0} s)");
        return 0;
    }

    private static Tensor LoadDigits(string? classes, string? indices, int channels, int size)
    {
        string option = classes is not null ? "--digit" : "--index";
        if (channels != 1 || size != MnistDataset.ImageSize)
            throw new PagSharpException($"{option} needs a 1×{MnistDataset.ImageSize}×{MnistDataset.ImageSize} model (this one is {channels}×{size}×{size}); use --image");
        int max = classes is not null ? 9 : MnistDataset.TestCount - 1;
        var values = (classes ?? indices!).Split(',', StringSplitOptions.TrimEntries).Select(v =>
            int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) && i >= 0 && i <= max ? i
                : throw new PagSharpException($"{option} '{v}': valid {(classes is not null ? "digit classes" : "test-set indices")} are 0..{max}")).ToArray();
        using var mnist = MnistDataset.Load();
        long[] idx;
        if (classes is null) idx = values.Select(i => (long)i).ToArray();
        else
        {
            // The n-th mention of class c takes the n-th held-out example of c (in test-set order).
            var labels = mnist.TestLabels.data<long>().ToArray();
            var seen = new Dictionary<int, int>();
            idx = values.Select(c =>
            {
                int nth = seen[c] = seen.GetValueOrDefault(c) + 1;
                int found = -1;
                for (int i = 0, k = 0; i < labels.Length; i++)
                    if (labels[i] == c && ++k == nth) { found = i; break; }
                return found >= 0 ? (long)found : throw new PagSharpException($"--digit: the test set holds fewer than {nth} examples of {c}");
            }).ToArray();
        }
        return mnist.TestImages.index_select(0, tensor(idx)).clone();
    }
}
