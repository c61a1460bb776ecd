using System.Diagnostics;
using System.Globalization;

namespace PagSharp.Cli.Hosting;

/// <summary>
/// With <c>PAG_STARTUP_TRACE=1</c> in the environment, <c>pag</c> writes one line per milestone of its start-up to
/// standard error: <c>pag-startup NAME UNIX_MS SINCE_START_MS</c>, the wall clock in milliseconds since 1970 (so a
/// script that notes the time before it launches the process can measure what precedes Main) and the milliseconds
/// since the process started (from the kernel's start time, 10 ms resolution). Milestones: <c>main</c> (Main entered),
/// <c>torch</c> (libtorch loaded and configured), <c>model-loaded</c> (<c>pag sample</c>, <c>pag txt2img</c>: the
/// weights are in memory), <c>first-step</c> (the first sampling step has finished), <c>exit</c> (Main returns).
/// <c>docs/startup.sh</c> runs commands with it and takes medians. Without the variable nothing is written.
/// </summary>
internal static class StartupTrace
{
    public const string Variable = "PAG_STARTUP_TRACE";

    private static readonly bool Enabled = Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } v && v != "0";
    private static int _firstStep;

    /// <summary>Writes the milestone <paramref name="name"/> (when enabled).</summary>
    public static void Mark(string name)
    {
        if (!Enabled) return;
        var now = DateTime.UtcNow;
        double unixMs = (now - DateTime.UnixEpoch).TotalMilliseconds;
        double sinceStart;
        try { sinceStart = (now - Process.GetCurrentProcess().StartTime.ToUniversalTime()).TotalMilliseconds; }
        catch (Exception e) when (e is InvalidOperationException or NotSupportedException or System.ComponentModel.Win32Exception) { sinceStart = double.NaN; }
        Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"pag-startup {name} {unixMs:F3} {sinceStart:F1}"));
    }

    /// <summary>Marks <c>first-step</c> the first time it is called in this process.</summary>
    public static void FirstStep()
    {
        if (Enabled && Interlocked.Exchange(ref _firstStep, 1) == 0) Mark("first-step");
    }
}
