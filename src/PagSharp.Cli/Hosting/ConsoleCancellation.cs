namespace PagSharp.Cli.Hosting;

/// <summary>Ctrl-C as a cancellation token for long-running commands.</summary>
public static class ConsoleCancellation
{
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
