using System.Text.RegularExpressions;

namespace PagSharp.Tests.Cli;

/// <summary>Every command's <c>--help</c> renders (option descriptions are Spectre markup: a stray [..] breaks it).</summary>
[Collection(CliCollection.Name)]
public sealed class HelpTests
{
    [Fact]
    public void EveryCommandListedByTopLevelHelpPrintsItsOwnHelp()
    {
        var (exit, output) = Pag.Run("--help");
        Assert.Equal(0, exit);
        var commands = Regex.Matches(output.Split("COMMANDS:")[1], @"^\s{4}([a-z][a-z0-9-]+)\s", RegexOptions.Multiline)
            .Select(m => m.Groups[1].Value).ToList();
        Assert.Contains("sample", commands);
        Assert.Contains("restore", commands);
        foreach (string command in commands)
        {
            var (code, help) = Pag.Run(command, "--help");
            Assert.True(code == 0 && help.Contains("USAGE:"), $"pag {command} --help failed (exit {code}):\n{help}");
        }
    }
}
