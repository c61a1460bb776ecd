using PagSharp.Cli.Commands;
using PagSharp.Cli.Hosting;
using Spectre.Console;
using Spectre.Console.Cli;
using PagSharp.Runtime;

namespace PagSharp.Cli;

/// <summary>The <c>pag</c> command line.</summary>
public static class App
{
    public const int ExitBadInput = ExitCodes.BadInput;
    public const int ExitCancelled = ExitCodes.Cancelled;

    public static int Run(string[] args)
    {
        StartupTrace.Mark("main");
        int? threads;
        try { (args, threads) = TakeThreads(args); }
        catch (PagSharpException e)
        {
            AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
            return ExitBadInput;
        }
        CpuRuntime.Configure(threads);
        StartupTrace.Mark("torch");
        var app = new CommandApp();
        var commands = new Dictionary<string, Type>(StringComparer.Ordinal);
        app.Configure(c =>
        {
            c.SetApplicationName("pag");
            // Unknown options and stray arguments are errors (exit 2), never silently ignored.
            c.UseStrictParsing();
            c.ConfigureConsole(AnsiConsole.Console); // the current console (tests swap it), not the one Spectre caches on first use
            Add<SampleCommand>(c, commands, "sample").WithDescription("Generate images (built-in MNIST model by default) with none / CFG / PAG / SAG guidance (PAG or SAG combine with CFG).");
            Add<Txt2ImgCommand>(c, commands, "txt2img").WithDescription("Stable Diffusion 1.x/2.x and SDXL text-to-image from a diffusers folder with CFG and PAG, as diffusers' StableDiffusion(XL)PAGPipeline.");
            Add<Img2ImgCommand>(c, commands, "img2img").WithDescription("Stable Diffusion 1.x/2.x and SDXL image-to-image with CFG and PAG (--image, --strength), as diffusers' …PAGImg2ImgPipeline.");
            Add<InpaintCommand>(c, commands, "inpaint").WithDescription("Stable Diffusion 1.x/2.x and SDXL inpainting with CFG and PAG (--image, --mask-image; 9- and 4-channel UNets), as diffusers' …PAGInpaintPipeline.");
            Add<CompareCommand>(c, commands, "compare").WithDescription("One labelled grid: rows = seeds, columns = guidance methods, all from the same noise.");
            Add<LayersCommand>(c, commands, "layers").WithDescription("List the perturbable self-attention layers of a model.");
            Add<ForwardCommand>(c, commands, "forward").WithDescription("Run the network once and save its raw output (for checks against PyTorch).");
            Add<BenchCommand>(c, commands, "bench").WithDescription("Benchmark seconds per step and peak memory of each guidance method; writes docs/performance.md.");
            Add<RestoreCommand>(c, commands, "restore").WithDescription("Inpainting, super-resolution and deblurring with DPS, with or without PAG.");
            Add<TrainCommand>(c, commands, "train").WithDescription("Train an ADM U-Net (improved-DDPM hybrid loss, EMA, checkpoints, resume).");
            Add<EvalCommand>(c, commands, "eval").WithDescription("FID, Inception Score, precision and recall of generated images against a reference set or saved statistics.");
            Add<SweepCommand>(c, commands, "sweep").WithData(new SweepCommand.Runner(Run)).WithDescription("Run a plan of sampling configurations, evaluate each (FID, IS, precision, recall) and write a report with tables, grids and charts.");
            Add<ServeCommand>(c, commands, "serve").WithDescription("A local web page (and JSON API) to compare guidance methods side by side: rows = seeds, columns = none / CFG / PAG / SAG / SEG / SLG / APG / CFG-Zero*.");
            Add<TrainClassifierCommand>(c, commands, "train-classifier").WithDescription("Train the MNIST classifier that pag eval uses as its feature network.");
            c.SetExceptionHandler((ex, _) =>
            {
                var e = ex is CommandRuntimeException { InnerException: { } inner } ? inner : ex;
                switch (e)
                {
                    case CommandParseException:
                        var valid = args.Length > 0 && commands.TryGetValue(args[0], out var type) && OptionSuggestions.SettingsTypeOf(type) is { } st
                            ? OptionSuggestions.OptionsOf(st) : [];
                        AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(OptionSuggestions.Explain(e.Message, valid))}");
                        return ExitBadInput;
                    case PagSharpException or CommandRuntimeException:
                        AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(FlagNames.Translate(e.Message))}");
                        return ExitBadInput;
                    case IOException or UnauthorizedAccessException:
                        // Disk full, a path that vanished, permissions: one line, no stack trace.
                        AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
                        return 1;
                    case OperationCanceledException:
                        AnsiConsole.MarkupLine("[yellow]stopped.[/]");
                        return ExitCancelled;
                    default:
                        AnsiConsole.WriteException(e);
                        return 1;
                }
            });
        });
        if (args.Length > 0 && commands.TryGetValue(args[0], out var command) && OptionSuggestions.SettingsTypeOf(command) is { } settingsType)
        {
            try { OptionValues.Check(args, settingsType); }
            catch (PagSharpException e)
            {
                AnsiConsole.MarkupLine($"[red]error:[/] {Markup.Escape(e.Message)}");
                return ExitBadInput;
            }
        }
        return app.Run(args);
    }

    /// <summary>
    /// The global option <c>--threads N</c> (anywhere on the line): torch's intra-op threads for this run (default:
    /// OMP_NUM_THREADS, else one per core). Removed from the arguments before the command parses them.
    /// </summary>
    internal static (string[] Args, int? Threads) TakeThreads(string[] args)
    {
        var rest = new List<string>();
        int? threads = null;
        for (int i = 0; i < args.Length; i++)
        {
            string? value = null;
            if (args[i] == "--threads") value = i + 1 < args.Length ? args[++i] : throw new PagSharpException("--threads needs a value: the number of torch threads, e.g. --threads 1");
            else if (args[i].StartsWith("--threads=", StringComparison.Ordinal)) value = args[i]["--threads=".Length..];
            else { rest.Add(args[i]); continue; }
            threads = int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) && n is >= 1 and <= 1024
                ? n : throw new PagSharpException($"--threads: '{value}' is not valid; expected an integer from 1 to 1024");
        }
        return (rest.ToArray(), threads);
    }

    private static ICommandConfigurator Add<T>(IConfigurator c, Dictionary<string, Type> commands, string name) where T : class, ICommand
    {
        commands[name] = typeof(T);
        return c.AddCommand<T>(name);
    }
}
