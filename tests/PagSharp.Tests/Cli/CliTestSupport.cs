using PagSharp.Cli;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using Spectre.Console;

namespace PagSharp.Tests.Cli;

/// <summary>CLI tests share the process-wide console, so they run one at a time.</summary>
[CollectionDefinition(Name)]
public sealed class CliCollection
{
    public const string Name = "pag CLI";
}

/// <summary>Runs <c>pag</c> in process and captures what it prints.</summary>
internal static class Pag
{
    public static (int Exit, string Output) Run(params string[] args)
    {
        var writer = new StringWriter();
        var previous = AnsiConsole.Console;
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(writer),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 1000;
        AnsiConsole.Console = console;
        try
        {
            int exit = App.Run(args);
            return (exit, writer.ToString());
        }
        finally
        {
            AnsiConsole.Console = previous;
        }
    }
}

/// <summary>Model A as the CLI sees it: a flat guided-diffusion config file next to the fixture weights.</summary>
internal sealed class AdmACli : IDisposable
{
    public TempDir Dir { get; } = new();
    public string Config { get; }
    public string Weights { get; } = AdmA.File("weights.safetensors");
    public string Cases { get; } = AdmA.File("cases.safetensors");
    public string Sampling { get; } = AdmA.File("sampling.safetensors");
    public string InitNoise => Sampling + ":x_T";

    public AdmACli()
    {
        Config = Dir.File("adm_a.json");
        File.WriteAllText(Config, AdmA.ArgsJson());
    }

    public void Dispose() => Dir.Dispose();
}

/// <summary>Every file under a folder (relative path → bytes and last write time).</summary>
internal sealed record FolderSnapshot(IReadOnlyDictionary<string, (byte[] Bytes, DateTime Written)> Files)
{
    public static FolderSnapshot Of(string dir) => new(Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories)
        .ToDictionary(f => Path.GetRelativePath(dir, f), f => (File.ReadAllBytes(f), File.GetLastWriteTimeUtc(f))));

    public void AssertUnchanged(string dir, string what)
    {
        var now = Of(dir);
        Assert.True(Files.Keys.Order().SequenceEqual(now.Files.Keys.Order()),
            $"{what}: files [{string.Join(", ", now.Files.Keys.Order())}], before [{string.Join(", ", Files.Keys.Order())}]");
        foreach (var (name, (bytes, written)) in Files)
        {
            Assert.True(bytes.AsSpan().SequenceEqual(now.Files[name].Bytes), $"{what}: {name} changed");
            Assert.True(written == now.Files[name].Written, $"{what}: {name} was rewritten");
        }
    }
}
