using PagSharp.Cli.Hosting;
using PagSharp.Cli.Methods;
using PagSharp.Guidance;
using PagSharp.IO;
using PagSharp.Pipelines;
using System.ComponentModel;
using System.Globalization;
using PagSharp.Imaging;
using PagSharp.Sampling;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using Grid = PagSharp.Imaging.Grid;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag compare</c>: one labelled grid, rows = seeds, columns = methods (e.g. none, PAG s=1,2,3, CFG, CFG+PAG),
/// every column from the same initial noise.
/// </summary>
public sealed class CompareCommand : Command<CompareCommand.Settings>
{
    public sealed class Settings : GuidanceOptionSettings
    {
        [CommandOption("--rows <N>")][Description("Number of seeds (rows): seed, seed+1, …")]
        public int Rows { get; init; } = 4;
        [CommandOption("--methods <LIST>")][Description("Columns, comma-separated: none, pag:S, sag:S, seg:S (SEG branch; --seg-blur-sigma/--seg-layers), slg:S (skip-layer branch; --slg-*), auto:S (autoguidance; needs --guidance-model), cfg:W, apg:W (APG combination), cfgzero:W (CFG-Zero*), and + combinations such as cfg:W+pag:S (paper convention; PAG uses --perturbation/--pag-layers, SAG the --sag-layer/--sag-blur-sigma/--sag-kernel options, APG the --apg-* options). Default: none,pag:1,pag:2,pag:3 plus cfg:3,cfg:3+pag:2 when the model has a null class and labels are given.")]
        public string? Methods { get; init; }
        [CommandOption("--output <FILE>")][Description("Output PNG (default out/compare.png).")]
        public string Output { get; init; } = Path.Combine("out", "compare.png");
        [CommandOption("--scale <N>")][Description("Integer upscaling of each tile.")]
        public int Scale { get; init; } = 2;
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        if (s.Rows < 1) throw new PagSharpException($"--rows must be ≥ 1 (got {s.Rows})");
        if (s.Scale < 1) throw new PagSharpException($"--scale must be ≥ 1 (got {s.Scale})");
        using var loaded = s.LoadModel();
        var labels = s.ParseLabels();
        bool cfgPossible = loaded.Config.NullClass is not null && labels is not null;
        var methods = MethodTokens.Parse(s.Methods ?? (cfgPossible ? "none,pag:1,pag:2,pag:3,cfg:3,cfg:3+pag:2" : "none,pag:1,pag:2,pag:3"));
        if (methods.Count == 0) throw new PagSharpException("--methods is empty");
        if (methods.Any(m => m.Cfg > 1) && labels is null)
            throw new PagSharpException("CFG columns need class labels: give --label N or --labels A,B,…");
        OutputPath.Check(s.Output, "--output", isFolder: false);
        var indices = Enumerable.Range(0, s.Rows).Select(i => (long)i).ToArray();
        // Build (and so validate) every column's options before sampling anything.
        using var guide = s.LoadGuide();
        if (methods.Any(m => m.Auto > 0) && guide is null) throw new PagSharpException("auto:S columns need --guidance-model CHECKPOINT (a weaker version of the same model)");
        var columns = methods.Select(m => s.BuildSampling(
            m.Apply(s.BuildGuidance(loaded.Net.AttentionLayers, loaded.Config.GuidanceDefaults, m.Pag, m.Cfg, m.Sag, m.Seg, m.Slg), s.ApgFromOptions()),
            loaded.Config.Sampling)).ToArray();
        foreach (var c in columns) Sampler.Validate(loaded.Net, c, guide?.Net);

        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        var results = new Tensor[columns.Length];
        AnsiConsole.Progress().Start(ctx =>
        {
            for (int c = 0; c < columns.Length; c++)
            {
                var task = ctx.AddTask(methods[c].Label);
                results[c] = Sampler.Sample(loaded.Net, columns[c], indices, null,
                    new SyncProgress<SamplingProgress>(p => task.Value = 100.0 * p.Step / p.StepsPerBatch), ct, guide?.Net);
                task.Value = 100;
            }
        });
        // Row-major: image (r, c) at r * cols + c.
        using var stacked = stack(results, 1).flatten(0, 1);
        var rowLabels = indices.Select(i => $"seed {s.Seed + i}" + (labels is null ? "" : $" y={labels[(int)(i % labels.Count)]}")).ToArray();
        Grid.SaveLabelled(s.Output, stacked, s.Rows, columns.Length, methods.Select(m => m.Label).ToArray(), rowLabels, s.Scale);
        foreach (var r in results) r.Dispose();
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(s.Output)} ({s.Rows} seeds × {columns.Length} methods)");
        return 0;
    }
}
