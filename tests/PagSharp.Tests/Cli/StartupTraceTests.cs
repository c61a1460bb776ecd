using System.Diagnostics;
using System.Globalization;
using PagSharp.Tests.IO;

namespace PagSharp.Tests.Cli;

/// <summary>
/// PAG_STARTUP_TRACE=1 on a real <c>pag sample</c> process (docs/startup.sh reads these lines): every milestone once,
/// in order, with non-decreasing clock values; without the variable nothing is written. No time is asserted.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class StartupTraceTests
{
    private static (int Exit, string Stderr) RunPag(bool trace, string output)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { Path.Combine(AppContext.BaseDirectory, "pag.dll"), "sample", "--count", "1", "--steps", "2", "--output", output })
            psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        if (trace) psi.Environment["PAG_STARTUP_TRACE"] = "1";
        else psi.Environment.Remove("PAG_STARTUP_TRACE");
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(300_000), "pag sample did not finish");
        return (p.ExitCode, stderr + stdout.Result);
    }

    [Fact]
    public void Trace_WritesEachMilestoneOnceInOrder_AndNothingWithoutTheVariable()
    {
        using var dir = new TempDir();
        var (exit, log) = RunPag(trace: true, dir.File("traced"));
        Assert.True(exit == 0, log);
        var marks = log.Split('\n').Where(l => l.StartsWith("pag-startup ", StringComparison.Ordinal))
            .Select(l => l.Split(' ')).Select(f => (Name: f[1], UnixMs: double.Parse(f[2], CultureInfo.InvariantCulture), SinceStart: double.Parse(f[3], CultureInfo.InvariantCulture)))
            .ToList();
        Assert.Equal(new[] { "main", "torch", "model-loaded", "first-step", "exit" }, marks.Select(m => m.Name)); // first-step once, though 2 steps ran
        for (int i = 1; i < marks.Count; i++) Assert.True(marks[i].UnixMs >= marks[i - 1].UnixMs, log);

        var (exit2, log2) = RunPag(trace: false, dir.File("plain"));
        Assert.True(exit2 == 0, log2);
        Assert.DoesNotContain("pag-startup", log2);
    }
}
