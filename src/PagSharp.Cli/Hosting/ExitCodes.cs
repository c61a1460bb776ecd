namespace PagSharp.Cli.Hosting;

/// <summary>The <c>pag</c> process's exit codes besides 0 (success) and 1 (an I/O or unexpected error).</summary>
public static class ExitCodes
{
    /// <summary>Bad input: an unknown option, a value out of range, an unreadable or mismatched file.</summary>
    public const int BadInput = 2;

    /// <summary>Stopped by Ctrl-C (128 + SIGINT, as shells report it).</summary>
    public const int Cancelled = 130;
}
