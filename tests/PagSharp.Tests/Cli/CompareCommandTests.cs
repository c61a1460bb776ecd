using PagSharp.Imaging;

namespace PagSharp.Tests.Cli;

[Collection(CliCollection.Name)]
public class CompareCommandTests
{
    [Fact]
    public void WritesOneLabelledGridWithARowPerSeedAndAColumnPerMethod()
    {
        using var adm = new AdmACli();
        string output = adm.Dir.File("compare.png");
        var (exit, text) = Pag.Run("compare", "--config", adm.Config, "--checkpoint", adm.Weights, "--steps", "2",
            "--rows", "2", "--methods", "none,pag:2,pag:4", "--scale", "1", "--output", output);
        Assert.True(exit == 0, text);
        using var grid = Png.Load(output);
        // 3 columns of 32-pixel tiles and 2 rows, plus a header and row labels: wider than 3 tiles, taller than 2.
        Assert.True(grid.shape[2] > 3 * 32 && grid.shape[1] > 2 * 32, $"grid is {grid.shape[2]}×{grid.shape[1]}");
    }

    [Theory]
    [InlineData("none,pag:x")]
    [InlineData("magic:2")]
    [InlineData("cfg:3")]          // unconditional model: no null class, no labels
    public void BadMethodsExitWithTwoAndWriteNothing(string methods)
    {
        using var adm = new AdmACli();
        string output = adm.Dir.File("compare.png");
        var (exit, text) = Pag.Run("compare", "--config", adm.Config, "--checkpoint", adm.Weights, "--steps", "2",
            "--rows", "1", "--methods", methods, "--output", output);
        Assert.True(exit == 2, text);
        Assert.False(File.Exists(output));
    }
}
