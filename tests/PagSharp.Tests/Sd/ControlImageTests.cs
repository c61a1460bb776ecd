using PagSharp.Imaging;

namespace PagSharp.Tests.Sd;

/// <summary>Control-image preparation: PIL-style Lanczos resizing and Canny edges.</summary>
public class ControlImageTests
{
    [Fact]
    public void Lanczos_SameSizeIsACopy_ConstantStaysConstant()
    {
        var img = Enumerable.Range(0, 5 * 4 * 3).Select(i => (byte)(i * 7)).ToArray();
        Assert.Equal(img, ControlImage.ResizeLanczos(img, 5, 4, 3, 5, 4));
        var flat = Enumerable.Repeat((byte)77, 37 * 23 * 3).ToArray();
        foreach (var (w, h) in new[] { (16, 16), (64, 40), (37, 5), (100, 100) })
            Assert.All(ControlImage.ResizeLanczos(flat, 37, 23, 3, w, h), b => Assert.Equal(77, b));
    }

    [Fact]
    public void Lanczos_HalvingAStepEdge_KeepsItSymmetric()
    {
        // Left half 0, right half 200 (one channel): downscaling by 2 gives 0 … 200 with a symmetric ring around the edge.
        int w = 16, h = 2;
        var img = new byte[w * h];
        for (int y = 0; y < h; y++) for (int x = w / 2; x < w; x++) img[y * w + x] = 200;
        var r = ControlImage.ResizeLanczos(img, w, h, 1, 8, 2);
        Assert.Equal(0, r[0]);
        Assert.Equal(200, r[7]);
        Assert.Equal(200, r[3] + r[4]);   // symmetric about the edge
        Assert.True(r[3] < 100 && r[4] > 100);
        Assert.Equal(r.Take(8), r.Skip(8)); // rows equal
    }

    [Fact]
    public void Canny_FindsTheOutlineOfASquare_AndNothingOnFlatAreas()
    {
        int w = 32, h = 32;
        var rgb = new byte[w * h * 3];
        for (int y = 8; y < 24; y++) for (int x = 8; x < 24; x++) for (int c = 0; c < 3; c++) rgb[(y * w + x) * 3 + c] = 255;
        var e = ControlImage.Canny(rgb, w, h, 100, 200);
        bool Edge(int x, int y) => e[(y * w + x) * 3] == 255;
        Assert.False(Edge(2, 2));
        Assert.False(Edge(16, 16));
        Assert.True(Enumerable.Range(7, 2).Any(x => Edge(x, 16)), "left side");
        Assert.True(Enumerable.Range(23, 2).Any(x => Edge(x, 16)), "right side");
        Assert.True(Enumerable.Range(7, 2).Any(y => Edge(16, y)), "top side");
        // Edges are thin (non-maximum suppression): at most 2 pixels wide across the left side.
        Assert.InRange(Enumerable.Range(4, 8).Count(x => Edge(x, 16)), 1, 2);
        Assert.All(Enumerable.Range(0, w * h), i => Assert.True(e[3 * i] == e[3 * i + 1] && e[3 * i] == e[3 * i + 2]));
        Assert.Throws<PagSharpException>(() => ControlImage.Canny(rgb, w, h, 200, 100));
    }
}
