using System.ComponentModel;
using System.Reflection;
using PagSharp.Cli;
using Spectre.Console.Cli;

namespace PagSharp.Tests.Cli;

/// <summary>The contract of every command: unknown options and stray arguments fail (exit 2) naming the option and
/// suggesting the closest valid one; every option has a description in --help.</summary>
[Collection(CliCollection.Name)]
public sealed class CliContractTests
{
    /// <summary>Every command class of the CLI (by reflection, so a new command is covered without editing this test).</summary>
    public static TheoryData<string> Commands()
    {
        var data = new TheoryData<string>();
        foreach (var name in CommandNames()) data.Add(name);
        return data;
    }

    private static IEnumerable<string> CommandNames() => typeof(App).Assembly.GetTypes()
        .Where(t => !t.IsAbstract && typeof(ICommand).IsAssignableFrom(t) && t.Namespace == "PagSharp.Cli.Commands")
        .Select(t => t.Name.Replace("Command", "", StringComparison.Ordinal))
        .Select(n => string.Concat(n.Select((c, i) => char.IsUpper(c) && i > 0 ? "-" + char.ToLowerInvariant(c) : char.ToLowerInvariant(c).ToString())))
        .Select(n => n is "txt2-img" or "img2-img" ? n.Replace("2-", "2", StringComparison.Ordinal) : n);

    [Fact]
    public void ReflectionFindsEveryCommandOfTheHelpPage()
    {
        var names = CommandNames().ToList();
        var (_, help) = Pag.Run("--help");
        foreach (var n in names) Assert.Contains(" " + n + " ", help.Replace("\n", " "));
        Assert.Contains("sample", names);
        Assert.Contains("train-classifier", names);
    }

    [Theory]
    [MemberData(nameof(Commands))]
    public void AMisspelledOptionFailsWithASuggestion(string command)
    {
        using var dir = new TempDir();
        // Take the command's first long option and swap two of its letters: a typo a user makes.
        var type = typeof(App).Assembly.GetTypes().Single(t => typeof(ICommand).IsAssignableFrom(t) && !t.IsAbstract && Matches(t, command));
        var valid = OptionSuggestions.OptionsOf(OptionSuggestions.SettingsTypeOf(type)!);
        string option = valid.First(o => o.StartsWith("--", StringComparison.Ordinal) && o.Length > 6 && o != "--help");
        string typo = option[..4] + option[5] + option[4] + option[6..];
        var before = FolderSnapshot.Of(dir.Path);
        var (exit, output) = Pag.Run(command, typo, "1", "--output", dir.File("out"));
        Assert.True(exit == 2, $"pag {command} {typo}: exit {exit}\n{output}");
        Assert.Contains($"unknown option '{typo}'", output);
        Assert.Contains($"did you mean '{option}'", output);
        Assert.DoesNotContain("   at ", output); // no stack trace
        before.AssertUnchanged(dir.Path, $"pag {command} {typo}");
    }

    [Theory]
    [InlineData("sample", "--pag-sclae", "--pag-scale")]
    [InlineData("sample", "--outptu", "--output")]
    [InlineData("txt2img", "--guidence-scale", "--guidance-scale")]
    public void TheIssuesExamplesFail(string command, string typo, string meant)
    {
        var (exit, output) = Pag.Run(command, typo, "2");
        Assert.Equal(2, exit);
        Assert.Contains($"did you mean '{meant}'", output);
    }

    [Fact]
    public void AStrayArgumentFails()
    {
        var (exit, output) = Pag.Run("layers", "stray");
        Assert.Equal(2, exit);
        Assert.Contains("stray", output);
    }

    [Fact]
    public void AnOptionFarFromEveryValidOneGetsNoGuess()
    {
        Assert.Null(OptionSuggestions.Closest("--zzzzzzzzzz", ["--pag-scale", "--output"]));
        Assert.Equal("--pag-scale", OptionSuggestions.Closest("pag-sacle", ["--pag-scale", "--output"]));
        Assert.Equal(1, OptionSuggestions.Distance("ab", "ba"));
        Assert.Equal(3, OptionSuggestions.Distance("kitten", "sitting"));
    }

    [Fact]
    public void EveryOptionOfEveryCommandHasADescription()
    {
        var missing = typeof(App).Assembly.GetTypes()
            .Where(t => typeof(CommandSettings).IsAssignableFrom(t))
            .SelectMany(t => t.GetProperties(BindingFlags.Public | BindingFlags.Instance)
                .Where(p => p.GetCustomAttribute<CommandOptionAttribute>() is not null
                         && string.IsNullOrWhiteSpace(p.GetCustomAttribute<DescriptionAttribute>()?.Description))
                .Select(p => $"{t.Name}.{p.Name}"))
            .Distinct().ToList();
        Assert.True(missing.Count == 0, "options without a description: " + string.Join(", ", missing));
    }

    private static bool Matches(Type t, string command) =>
        string.Equals(t.Name, command.Replace("-", "", StringComparison.Ordinal) + "Command", StringComparison.OrdinalIgnoreCase);
}

/// <summary>Library messages name properties; the CLI shows the flags.</summary>
public sealed class FlagNamesTests
{
    [Fact]
    public void PropertyNamesBecomeFlags_WholeWordsOnly()
    {
        Assert.Equal("--steps must be ≥ 1 (got 0)", PagSharp.Cli.FlagNames.Translate("Steps must be ≥ 1 (got 0)"));
        Assert.Equal("use --sag-kernel ≤ 31", PagSharp.Cli.FlagNames.Translate("use SagSettings.KernelSize ≤ 31"));
        Assert.Equal("StepsPerBatch and --eta", PagSharp.Cli.FlagNames.Translate("StepsPerBatch and Eta"));
    }

    [Fact]
    public void ACommandShowsTheFlagOfALibraryProperty()
    {
        var (exit, output) = Pag.Run("sample", "--steps", "0", "--count", "1", "--output", Path.Combine(Path.GetTempPath(), "pagsharp-never-" + Guid.NewGuid().ToString("N")));
        Assert.Equal(2, exit);
        Assert.Contains("--steps must be ≥ 1", output);
    }
}

/// <summary>Bad values of the issue's list: one line, exit 2, no files written, no stack trace.</summary>
[Collection(CliCollection.Name)]
public sealed class BadValueTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    public static TheoryData<string, string[], string> Cases => new()
    {
        { "forward timestep above T", ["forward", "--input", "X", "--timesteps", "5000", "--labels", "1", "--output", "OUT/f.npy"], "5000 is out of range; the model's timesteps are 0..999" },
        { "forward negative timestep", ["forward", "--input", "X", "--timesteps", "-1", "--labels", "1", "--output", "OUT/f.npy"], "-1 is out of range" },
        { "forward label out of range", ["forward", "--input", "X", "--timesteps", "5", "--labels", "99,2", "--output", "OUT/f.npy"], "--labels: 99 is out of range" },
        { "forward label 99", ["forward", "--input", "X", "--timesteps", "5", "--labels", "99", "--output", "OUT/f.npy"], "99 is out of range; valid labels are 0..10" },
        { "output under /proc", ["sample", "--count", "1", "--steps", "2", "--output", "/proc/nonexistent/x"], "cannot be written" },
        { "output is a file", ["sample", "--count", "1", "--steps", "2", "--output", "FILE"], "is an existing file" },
        { "save-tensor under /proc", ["sample", "--count", "1", "--steps", "2", "--output", "OUT/s", "--save-tensor", "/proc/nonexistent/x.npy"], "cannot be written" },
        { "compare output is a folder", ["compare", "--rows", "1", "--steps", "2", "--output", "OUT"], "is an existing folder" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void FailsWithOneLineAndWritesNothing(string name, string[] args, string message)
    {
        string input = _tmp.File("x.npy"), file = _tmp.File("a-file"), outDir = _tmp.File("out");
        Directory.CreateDirectory(outDir);
        File.WriteAllText(file, "not a folder");
        using (var x = TorchSharp.torch.zeros(2, 1, 32, 32)) PagSharp.IO.Npy.Save(input, x);
        var resolved = args.Select(a => a == "X" ? input : a == "FILE" ? file : a.Replace("OUT", outDir)).ToArray();
        var (exit, output) = Pag.Run(resolved);
        Assert.True(exit == 2, $"{name}: exit {exit}\n{output}");
        Assert.Contains(message, output.ReplaceLineEndings(" "));
        Assert.DoesNotContain("   at ", output);
        Assert.Empty(Directory.EnumerateFileSystemEntries(outDir));
    }
}

/// <summary>The global --threads option.</summary>
public sealed class ThreadsOptionTests
{
    [Fact]
    public void ThreadsIsTakenFromAnywhereOnTheLine()
    {
        var (args, n) = PagSharp.Cli.App.TakeThreads(["sample", "--count", "1", "--threads", "2"]);
        Assert.Equal(["sample", "--count", "1"], args);
        Assert.Equal(2, n);
        (args, n) = PagSharp.Cli.App.TakeThreads(["--threads=1", "layers"]);
        Assert.Equal(["layers"], args);
        Assert.Equal(1, n);
        Assert.Null(PagSharp.Cli.App.TakeThreads(["layers"]).Threads);
    }

    [Theory]
    [InlineData("0")]
    [InlineData("-1")]
    [InlineData("two")]
    public void BadThreadCountsFail(string value)
    {
        var e = Assert.Throws<PagSharpException>(() => PagSharp.Cli.App.TakeThreads(["sample", "--threads", value]));
        Assert.Contains("--threads", e.Message);
    }
}

/// <summary>pag sample refuses a run that cannot fit in memory before writing anything, and splits batches that do not.</summary>
[Collection(CliCollection.Name)]
public sealed class MemoryCheckCliTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    [Fact]
    public void AHugeImageSizeIsRefusedWithTheEstimateAndTheAvailableMemory()
    {
        string cfg = _tmp.File("huge.json"), dir = _tmp.File("out");
        File.WriteAllText(cfg, """{"image_size": 8192, "in_channels": 1, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2,2", "attention_resolutions": "16", "num_head_channels": 32, "learn_sigma": true}""");
        var (exit, output) = Pag.Run("sample", "--config", cfg, "--random-weights", "--count", "1", "--steps", "2", "--output", dir);
        Assert.Equal(2, exit);
        string flat = output.ReplaceLineEndings(" ");
        Assert.Contains("GB of activations for a single sample", flat);
        Assert.Contains("is available", flat);
        Assert.False(Directory.Exists(dir));
    }

    [Fact]
    public void ABigBatchUnderALimitIsSplitWithAWarning()
    {
        string dir = _tmp.File("split");
        var (exit, output) = Pag.Run("sample", "--count", "4", "--batch-size", "64", "--labels", "1", "--guidance-scale", "3", "--pag-scale", "2",
            "--steps", "2", "--memory-limit", "200", "--output", dir);
        Assert.True(exit == 0, output);
        Assert.Contains("samples at a time", output.ReplaceLineEndings(" "));
        Assert.True(File.Exists(Path.Combine(dir, "00003.png")));
    }
}

/// <summary>pag compare's method tokens for the guidance family.</summary>
public sealed class CompareTokensTests
{
    [Fact]
    public void ApgCfgZeroAndAutoTokensParse()
    {
        var m = PagSharp.Cli.Methods.MethodTokens.Parse("apg:3,cfgzero:2+pag:1,auto:1.5+cfg:4");
        Assert.Equal((3.0, true, false), (m[0].Cfg, m[0].Apg, m[0].ZeroStar));
        Assert.Equal((2.0, 1.0, true), (m[1].Cfg, m[1].Pag, m[1].ZeroStar));
        Assert.Equal((4.0, 1.5), (m[2].Cfg, m[2].Auto));
        Assert.Contains("alternative", Assert.Throws<PagSharpException>(() => PagSharp.Cli.Methods.MethodTokens.Parse("apg:3+cfgzero:3")).Message);
        Assert.Contains("valid: none, pag, sag, seg, slg, cfg, apg, cfgzero, auto", Assert.Throws<PagSharpException>(() => PagSharp.Cli.Methods.MethodTokens.Parse("seq:1")).Message);
        var branches = PagSharp.Cli.Methods.MethodTokens.Parse("seg:3,slg:2+pag:1,cfg:5+seg:2+slg:1");
        Assert.Equal((3.0, 0.0, 0.0), (branches[0].Seg, branches[0].Slg, branches[0].Pag));
        Assert.Equal((0.0, 2.0, 1.0), (branches[1].Seg, branches[1].Slg, branches[1].Pag));
        Assert.Equal((5.0, 2.0, 1.0), (branches[2].Cfg, branches[2].Seg, branches[2].Slg));
        Assert.Contains("SEG/SLG cannot be combined with SAG", Assert.Throws<PagSharpException>(() => PagSharp.Cli.Methods.MethodTokens.Parse("sag:1+seg:1")).Message);
    }
}
