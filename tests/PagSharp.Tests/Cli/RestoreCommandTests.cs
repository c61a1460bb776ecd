using System.Text.Json.Nodes;

namespace PagSharp.Tests.Cli;

/// <summary><c>pag restore</c>'s inputs: digit classes, test-set indices, and the scheduler it runs on.</summary>
[Collection(CliCollection.Name)]
public sealed class RestoreCommandTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    [Fact]
    public void DigitTakesClassesAndIndexTakesTestSetIndices()
    {
        string dir = _tmp.File("r");
        var (exit, output) = Pag.Run("restore", "--digit", "7,7", "--degradation", "box:14", "--steps", "2", "--output", dir);
        Assert.True(exit == 0, output);
        Assert.Equal("mnist test digits of classes 7,7", (string?)JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run.json")))!["input"]);
        Assert.True(File.Exists(Path.Combine(dir, "restored_00001.png")));
        using (var mnist = PagSharp.Training.Datasets.MnistDataset.Load())
        {
            var labels = mnist.TestLabels.data<long>().ToArray();
            int second7 = Enumerable.Range(0, labels.Length).Where(i => labels[i] == 7).ElementAt(1);
            // --index of the second held-out 7 restores the same digit as the second "7" of --digit (same seed per position).
            string byIndex = _tmp.File("i");
            (exit, output) = Pag.Run("restore", "--index", $"0,{second7}", "--degradation", "box:14", "--steps", "2", "--output", byIndex);
            Assert.True(exit == 0, output);
            Assert.Equal(File.ReadAllBytes(Path.Combine(dir, "restored_00001.png")), File.ReadAllBytes(Path.Combine(byIndex, "restored_00001.png")));
        }
    }

    [Theory]
    [InlineData(new[] { "--digit", "10" }, "valid digit classes are 0..9")]
    [InlineData(new[] { "--index", "1000" }, "valid test-set indices are 0..999")]
    [InlineData(new[] { "--digit", "1", "--sampler", "ddim" }, "restore runs DPS on the ancestral DDPM chain")]
    public void BadInputsFail(string[] extra, string message)
    {
        string dir = _tmp.File("bad");
        var (exit, output) = Pag.Run(new[] { "restore", "--degradation", "box:14", "--steps", "2", "--output", dir }.Concat(extra).ToArray());
        Assert.Equal(2, exit);
        Assert.Contains(message, output.ReplaceLineEndings(" "));
        Assert.False(Directory.Exists(dir));
    }
}
