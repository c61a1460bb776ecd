using PagSharp.Cli.Commands;
using Spectre.Console;
using Spectre.Console.Cli;
using PagSharp.Runtime;

namespace PagSharp.Cli;

/// <summary>The <c>pag</c> command line.</summary>
public static class App
{
    public const int ExitBadInput = 2;
    public const int ExitCancelled = 130;

    public static int Run(string[] args)
    {
        CpuRuntime.Configure();
        var app = new CommandApp();
        app.Configure(c =>
        {
            c.SetApplicationName("pag");
            c.ConfigureConsole(AnsiConsole.Console); // the current console (tests swap it), not the one Spectre caches on first use
            c.AddCommand<SampleCommand>("sample").WithDescription("Generate images (built-in MNIST model by default) with none / CFG / PAG / SAG guidance (PAG or SAG combine with CFG).");
            c.AddCommand<Txt2ImgCommand>("txt2img").WithDescription("Stable Diffusion 1.x/2.x text-to-image from a diffusers folder with CFG and PAG, as diffusers' StableDiffusionPAGPipeline.");
            c.AddCommand<CompareCommand>("compare").WithDescription("One labelled grid: rows = seeds, columns = guidance methods, all from the same noise.");
            c.AddCommand<LayersCommand>("layers").WithDescription("List the perturbable self-attention layers of a model.");
            c.AddCommand<ForwardCommand>("forward").WithDescription("Run the network once and save its raw output (for checks against PyTorch).");
            c.AddCommand<BenchCommand>("bench").WithDescription("Benchmark seconds per step and peak memory of each guidance method; writes docs/performance.md.");
            c.AddCommand<RestoreCommand>("restore").WithDescription("Inpainting, super-resolution and deblurring with DPS, with or without PAG.");
            c.AddCommand<TrainCommand>("train").WithDescription("Train an ADM U-Net (improved-DDPM hybrid loss, EMA, checkpoints, resume).");
            c.AddCommand<EvalCommand>("eval").WithDescription("FID, Inception Score, precision and recall of generated images against a reference set or saved statistics.");
            c.AddCommand<SweepCommand>("sweep").WithDescription("Run a plan of sampling configurations, evaluate each (FID, IS, precision, recall) and write a report with tables, grids and charts.");
            c.AddCommand<TrainClassifierCommand>("train-classifier").WithDescription("Train the MNIST classifier that pag eval uses as its feature network.");
            c.SetExceptionHandler((ex, _) =>
            {
                var e = ex is CommandRuntimeException { InnerException: { } inner } ? inner : ex;
                switch (e)
                {
                    case PagSharpException or CommandParseException or CommandRuntimeException:
                        AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
                        return ExitBadInput;
                    case OperationCanceledException:
                        AnsiConsole.MarkupLine("[yellow]stopped.[/]");
                        return ExitCancelled;
                    default:
                        AnsiConsole.WriteException(e);
                        return 1;
                }
            });
        });
        return app.Run(args);
    }

    /// <summary>A token cancelled by Ctrl-C (the first press; a second press ends the process).</summary>
    public static CancellationToken CtrlC()
    {
        var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) =>
        {
            if (cts.IsCancellationRequested) return;
            e.Cancel = true;
            cts.Cancel();
        };
        return cts.Token;
    }
}
