using PagSharp.Imaging;
using PagSharp.Metrics;
using static TorchSharp.torch;

namespace PagSharp.Tests.Samples;

/// <summary>The samples/ console project (public API only) builds with the tests and writes its grid of digits.</summary>
public sealed class QuickStartTests
{
    [Fact]
    public void TheQuickStartWritesAGridOfSixteenDigits()
    {
        using var tmp = new TempDir();
        string path = tmp.File("pag.png");
        PagSharp.Samples.QuickStart.Run(path);
        using var grid = Png.Load(path, channels: 1);
        // 4×4 tiles of 32×32 with 2-pixel padding: 4·32 + 5·2 = 138.
        Assert.Equal(new long[] { 1, 138, 138 }, grid.shape);
        Assert.True(grid.std().item<float>() > 0.2f, "the grid is flat: no digits drawn");
    }
}
