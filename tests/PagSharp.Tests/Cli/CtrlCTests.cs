using System.Diagnostics;
using System.Runtime.InteropServices;

namespace PagSharp.Tests.Cli;

/// <summary>Ctrl-C (SIGINT) on a real <c>pag sample</c> process: it stops between steps, keeps finished images, and a rerun completes the run.</summary>
[Collection(CliCollection.Name)]
public class CtrlCTests
{
    [Fact]
    public void SigintStopsCleanlyAndTheSameCommandResumes()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return;
        using var adm = new AdmACli();
        string output = adm.Dir.File("run");
        string[] args =
        {
            Path.Combine(AppContext.BaseDirectory, "pag.dll"), "sample", "--config", adm.Config, "--checkpoint", adm.Weights,
            "--steps", "100", "--count", "12", "--batch-size", "1", "--output", output,
        };

        using (var p = Start(args))
        {
            var deadline = DateTime.UtcNow.AddSeconds(120);
            while (!p.HasExited && DateTime.UtcNow < deadline && (!Directory.Exists(output) || Directory.GetFiles(output, "*.png").Length < 2))
                Thread.Sleep(50);
            Assert.False(p.HasExited, "the run finished before it could be interrupted");
            using (var kill = Process.Start("kill", new[] { "-INT", p.Id.ToString() })) kill!.WaitForExit();
            Assert.True(p.WaitForExit(60_000), "pag did not stop after SIGINT");
            p.WaitForExit(); // the asynchronous output readers are drained
            Assert.True(p.ExitCode == 130, $"exit code {p.ExitCode} after SIGINT (expected 130); output:\n{Log()}");
        }
        var kept = Directory.GetFiles(output, "*.png").OrderBy(f => f).ToArray();
        Assert.InRange(kept.Length, 2, 11);
        Assert.Empty(Directory.GetFiles(output, "*.tmp", SearchOption.AllDirectories));
        var keptBytes = kept.ToDictionary(f => f, File.ReadAllBytes);

        using (var p = Start(args))
        {
            Assert.True(p.WaitForExit(300_000), "the resumed run did not finish");
            Assert.Equal(0, p.ExitCode);
        }
        Assert.Equal(12, Directory.GetFiles(output, "*.png").Count(f => System.Text.RegularExpressions.Regex.IsMatch(Path.GetFileName(f), @"^\d{5}\.png$")));
        foreach (var (file, bytes) in keptBytes) Assert.Equal(bytes, File.ReadAllBytes(file));
    }

    /// <summary>What the started processes printed (stdout and stderr), for the failure messages.</summary>
    private readonly System.Text.StringBuilder _log = new();

    private string Log() { lock (_log) return _log.ToString(); }

    private Process Start(string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["OMP_NUM_THREADS"] = "1";
        var p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_log) _log.AppendLine(e.Data); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }
}
