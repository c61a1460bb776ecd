namespace PagSharp.Tests.Cli;

/// <summary><c>pag train</c> refuses what would silently start over or continue differently.</summary>
[Collection(CliCollection.Name)]
public sealed class TrainCommandTests
{
    [Fact]
    public void ResumeOnAFolderWithoutACheckpointFails()
    {
        using var dir = new TempDir();
        var (exit, output) = Pag.Run("train", "--output", dir.Path, "--resume", "--steps", "1");
        Assert.Equal(2, exit);
        Assert.Contains("holds no checkpoint", output);
        Assert.Empty(Directory.EnumerateFileSystemEntries(dir.Path));
    }

    [Theory]
    [InlineData("--precision", "float16", "float32 or bfloat16")]
    [InlineData("--snapshot-at", "10,x", "not a step")]
    [InlineData("--init-from", "/nonexistent/w.safetensors", "does not exist")]
    public void BadValuesFailBeforeAnythingIsWritten(string option, string value, string message)
    {
        using var dir = new TempDir();
        string output = Path.Combine(dir.Path, "run");
        var (exit, text) = Pag.Run("train", "--output", output, "--steps", "1", option, value);
        Assert.Equal(2, exit);
        Assert.Contains(message, text);
        Assert.False(Directory.Exists(output), "the run folder was created");
    }
}
