using System.ComponentModel;
using PagSharp.Cli.Serve;
using PagSharp.IO;
using Spectre.Console;
using Spectre.Console.Cli;
using PagSharp.Cli.Hosting;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag serve</c>: a local web page to compare guidance methods (rows = seeds, columns = methods) on the built-in
/// model and the models given on the command line, with a JSON API (README "pag serve"). Runs until Ctrl-C.
/// </summary>
public sealed class ServeCommand : Command<ServeCommand.Settings>
{
    public sealed class Settings : CommandSettings
    {
        [CommandOption("--port <PORT>")][Description("TCP port (default 7860; 0 = any free port, printed at start).")]
        public int Port { get; init; } = 7860;
        [CommandOption("--host <ADDRESS>")][Description("Address to listen on (default 127.0.0.1: this machine only). Any other address (0.0.0.0 = every interface) lets everyone who can reach it run jobs, without authentication: use it on a trusted network only.")]
        public string? Host { get; init; }
        [CommandOption("--model <DIR>")][Description("A diffusers Stable Diffusion 1.x/2.x or SDXL folder the page may use (repeat for several). Only models named here, and the built-in one, can be picked.")]
        public string[]? Model { get; init; }
        [CommandOption("--preset <NAME>")][Description("An ADM model for the page: a released OpenAI checkpoint's configuration (adm-64-cond, adm-256-uncond, …), with --checkpoint.")]
        public string? Preset { get; init; }
        [CommandOption("--config <FILE>")][Description("An ADM model for the page: a guided-diffusion config JSON (as pag sample --config), with --checkpoint.")]
        public string? Config { get; init; }
        [CommandOption("--checkpoint <FILE>")][Description("The ADM model's weights (.safetensors, or a PyTorch .pt/.pth/.bin state dict).")]
        public string? Checkpoint { get; init; }
        [CommandOption("--output <DIR>")][Description("Folder of finished jobs, one subfolder per job (default out/serve).")]
        public string Output { get; init; } = Path.Combine("out", "serve");
        [CommandOption("--max-count <N>")][Description("Most seeds (rows) a job may ask for (default 16).")]
        public int MaxCount { get; init; } = 16;
        [CommandOption("--max-steps <N>")][Description("Most sampling steps a job may ask for (default 200).")]
        public int MaxSteps { get; init; } = 200;
        [CommandOption("--max-queue <N>")][Description("Most jobs waiting behind the running one (default 8); more are refused until one finishes.")]
        public int MaxQueue { get; init; } = 8;
        [CommandOption("--max-size <PIXELS>")][Description("Largest Stable Diffusion width and height a job may ask for (default 1024).")]
        public int MaxSize { get; init; } = 1024;

        public ServeOptions ToOptions() => new()
        {
            Host = Host ?? "127.0.0.1",
            Port = Port,
            // An address given on purpose may be reached under any name; the default answers loopback names only.
            AnyHostHeader = Host is not null && !new ServeOptions { Host = Host }.IsLoopback,
            Output = Output,
            Limits = new ServeLimits { MaxCount = MaxCount, MaxSteps = MaxSteps, MaxQueue = MaxQueue, MaxImageSize = MaxSize },
        };
    }

    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        var options = settings.ToOptions();
        options.Validate();
        if (!options.IsLoopback)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] listening on {Markup.Escape(options.Host)}: anyone who can reach this address can run jobs " +
                "(there is no authentication, and jobs use this machine's CPU and disk). Use it only on a trusted network, or leave out --host.");
        OutputPath.Check(options.Output, "--output", isFolder: true);
        using var models = ModelRegistry.Create(settings.Preset, settings.Config, settings.Checkpoint, settings.Model ?? [],
            w => AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(w)}"));
        var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC());
        return Run(options, models, stop.Token, m => AnsiConsole.MarkupLine(Markup.Escape(m))).GetAwaiter().GetResult();
    }

    /// <summary>Starts the server, prints its URL, and serves until <paramref name="stop"/> (Ctrl-C).</summary>
    internal static async Task<int> Run(ServeOptions options, ModelRegistry models, CancellationToken stop, Action<string> log)
    {
        var serve = ServeApp.Create(options, models, log);
        await using (serve.ConfigureAwait(false))
        {
            await serve.StartAsync(stop).ConfigureAwait(false);
            foreach (var url in serve.Urls) log($"pag serve: {BrowserUrl(url)}");
            log($"models: {string.Join(", ", models.Models.Select(m => m.Id))}; finished jobs go to {Path.GetFullPath(options.Output)}. Ctrl-C stops.");
            // Ctrl-C, or the host's own stop (SIGTERM: a service manager, a container runtime).
            using var either = CancellationTokenSource.CreateLinkedTokenSource(stop, serve.Web.Lifetime.ApplicationStopping);
            try { await Task.Delay(Timeout.Infinite, either.Token).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            log("stopping (a running job is cancelled and leaves no files)…");
        }
        return 0;
    }

    /// <summary>The URL to open: 0.0.0.0 / [::] (every interface) shown as localhost.</summary>
    internal static string BrowserUrl(string url) => url.Replace("://0.0.0.0:", "://localhost:", StringComparison.Ordinal).Replace("://[::]:", "://localhost:", StringComparison.Ordinal);
}
