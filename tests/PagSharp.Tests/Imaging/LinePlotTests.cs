using PagSharp.Imaging;

namespace PagSharp.Tests.Imaging;

public class LinePlotTests
{
    private static readonly byte[] PngSignature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Save_WritesPngOfRequestedSizeWithSeriesColours(bool logY)
    {
        using var dir = new TempDir();
        string path = dir.File("chart.png");
        var loss = Enumerable.Range(1, 200).Select(i => ((double)i, 2.0 / Math.Sqrt(i))).ToList();
        var other = Enumerable.Range(1, 20).Select(i => (i * 10.0, 0.05 + 0.01 * i)).ToList();
        LinePlot.Save(path, [("train loss", loss), ("val loss", other)], "Loss per step", "step", "loss", logY);

        byte[] bytes = File.ReadAllBytes(path);
        Assert.Equal(PngSignature, bytes[..8]);
        using var image = Png.Load(path);
        Assert.Equal(new long[] { 3, 500, 800 }, image.shape);

        // Both series' colours appear (first palette entries: (0,90,200) and (230,110,0)).
        Assert.True(CountColour(image, 0, 90, 200) > 50);
        Assert.True(CountColour(image, 230, 110, 0) > 20);
    }

    [Fact]
    public void Save_CustomSizeSinglePointAndErrors()
    {
        using var dir = new TempDir();
        string path = dir.File("fid.png");
        LinePlot.Save(path, [("FID", new List<(double, double)> { (2.5, 31.0) })], "FID vs scale", "scale", "FID", width: 400, height: 300);
        using var image = Png.Load(path);
        Assert.Equal(new long[] { 3, 300, 400 }, image.shape);

        Assert.Throws<PagSharpException>(() => LinePlot.Save(dir.File("x.png"), [("a", new List<(double, double)> { (1, double.NaN) })], "", "", ""));
        Assert.Throws<PagSharpException>(() => LinePlot.Save(dir.File("y.png"), [("a", new List<(double, double)> { (1, -1) })], "", "", "", logY: true));
        Assert.Throws<PagSharpException>(() => LinePlot.Save(dir.File("z.png"), [("a", new List<(double, double)> { (1, 1) })], "", "", "", width: 10));
    }

    /// <summary>A line rising into the top-right corner keeps that corner visible: the legend moves to a free corner.</summary>
    [Fact]
    public void LegendAvoidsTheLines()
    {
        using var dir = new TempDir();
        string path = dir.File("rising.png");
        var rising = Enumerable.Range(0, 11).Select(i => ((double)i, (double)i)).ToList();
        LinePlot.Save(path, [("rising", rising)], "", "x", "y");
        using var image = Png.Load(path);
        // The line's colour is present in the top-right tenth of the image (the legend's default corner) ...
        using var topRight = image.narrow(1, 0, 80).narrow(2, 640, 160).contiguous();
        Assert.True(CountColour(topRight, 0, 90, 200) > 20);
        // ... and the legend sits in the free top-left corner of the plot area instead: its black text is there (the
        // tick labels are outside the plot area, and nothing else in the plot is black).
        using var topLeft = image.narrow(1, 0, 70).narrow(2, 80, 160).contiguous();
        Assert.True(CountColour(topLeft, 0, 0, 0) > 50);
    }

    private static int CountColour(TorchSharp.torch.Tensor image, int r, int g, int b)
    {
        float[] v = image.data<float>().ToArray();
        int plane = (int)(image.shape[1] * image.shape[2]), count = 0;
        static int Byte(float x) => (int)MathF.Round((x + 1) * 127.5f);
        for (int i = 0; i < plane; i++)
            if (Byte(v[i]) == r && Byte(v[plane + i]) == g && Byte(v[2 * plane + i]) == b) count++;
        return count;
    }
}
