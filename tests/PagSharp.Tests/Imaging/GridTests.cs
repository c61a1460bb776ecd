using PagSharp.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Imaging;

public class GridTests
{
    private static readonly float[] Levels = [-0.8f, -0.4f, 0f, 0.4f, 0.8f];

    private static Tensor ConstantImages(int channels, int h, int w) =>
        torch.stack(Levels.Select(v => torch.full([channels, h, w], v)).ToArray());

    [Fact]
    public void Make_PlacesTilesRowMajorWithPadding()
    {
        using var images = ConstantImages(1, 4, 6);
        using var grid = Grid.Make(images, nrow: 3, padding: 2, padValue: 1f);
        // 2 rows of 3: H' = 2*(4+2)+2, W' = 3*(6+2)+2.
        Assert.Equal(new long[] { 1, 14, 26 }, grid.shape);
        for (int i = 0; i < Levels.Length; i++)
        {
            int r = i / 3, c = i % 3;
            int cy = 2 + r * 6 + 2, cx = 2 + c * 8 + 3;
            Assert.Equal(Levels[i], grid[0, cy, cx].item<float>());
            // Tile corners are inside the tile too.
            Assert.Equal(Levels[i], grid[0, 2 + r * 6, 2 + c * 8].item<float>());
            Assert.Equal(Levels[i], grid[0, 2 + r * 6 + 3, 2 + c * 8 + 5].item<float>());
        }
        Assert.Equal(1f, grid[0, 0, 0].item<float>());
        Assert.Equal(1f, grid[0, 7, 9].item<float>()); // gap between tiles
        Assert.Equal(1f, grid[0, 10, 21].item<float>()); // empty sixth cell
    }

    [Fact]
    public void Make_SingleRowAndNoPadding()
    {
        using var images = ConstantImages(3, 2, 2);
        using var grid = Grid.Make(images, nrow: 10, padding: 0);
        Assert.Equal(new long[] { 3, 2, 10 }, grid.shape);
        for (int i = 0; i < Levels.Length; i++)
            Assert.Equal(Levels[i], grid[2, 1, 2 * i + 1].item<float>());
        Assert.Throws<PagSharpException>(() => Grid.Make(images, nrow: 0));
        Assert.Throws<PagSharpException>(() => Grid.Make(torch.zeros(3, 4, 4), nrow: 2));
    }

    // Layout for 2x3 tiles of 32x32 at scale 2 with short labels (narrower than the 64 px tiles, so columns are not widened): text scale 2 (lines of 20 px),
    // header 4 + 20 + 4 = 28 px, row-label column 4 + width("r0") + 4 = 30 px, gaps of 2 px.
    private const int HeaderH = 28, RowLabelW = 30, Gap = 2, Tile = 64;

    private static (Tensor image, Tensor images) WriteLabelled(string path, IReadOnlyList<string> colLabels, IReadOnlyList<string>? rowLabels)
    {
        var images = torch.stack(Enumerable.Range(0, 6).Select(i => torch.full([1, 32, 32], -1f + i * 0.3f)).ToArray());
        Grid.SaveLabelled(path, images, rows: 2, cols: 3, colLabels, rowLabels, scale: 2);
        return (Png.Load(path), images);
    }

    [Fact]
    public void SaveLabelled_HasExpectedSizeTilesAndText()
    {
        using var dir = new TempDir();
        var (image, images) = WriteLabelled(dir.File("labelled.png"), ["s=0", "s=1", "s=2"], ["r0", "r1"]);
        using var _i = image;
        using var _s = images;
        int gridX = RowLabelW + Gap;
        Assert.Equal(new long[] { 3, HeaderH + 2 * (Tile + Gap), gridX + 3 * (Tile + Gap) }, image.shape);

        // Tile centres hold the (gray) tile values in all three channels.
        for (int i = 0; i < 6; i++)
        {
            int r = i / 3, c = i % 3;
            int y = HeaderH + r * (Tile + Gap) + Tile / 2, x = gridX + c * (Tile + Gap) + Tile / 2;
            float expected = MathF.Round((-1f + i * 0.3f + 1f) * 127.5f) / 127.5f - 1f;
            for (int ch = 0; ch < 3; ch++)
                Assert.Equal(expected, image[ch, y, x].item<float>(), 4);
        }

        // The header above each column and the row-label column contain dark (text) pixels.
        for (int c = 0; c < 3; c++)
        {
            using var header = image[.., ..HeaderH, (gridX + c * (Tile + Gap))..(gridX + (c + 1) * (Tile + Gap))];
            Assert.True(header.min().item<float>() < -0.9f, $"column {c} header has no text");
        }
        using var rowLabelArea = image[.., HeaderH.., ..RowLabelW];
        Assert.True(rowLabelArea.min().item<float>() < -0.9f);
    }

    [Fact]
    public void SaveLabelled_LabelsChangeHeaderPixels()
    {
        using var dir = new TempDir();
        var (blank, a) = WriteLabelled(dir.File("blank.png"), ["", "", ""], null);
        var (text, b) = WriteLabelled(dir.File("text.png"), ["p=1", "p=2", "p=3"], null);
        using var _1 = blank; using var _2 = a; using var _3 = text; using var _4 = b;
        Assert.Equal(blank.shape, text.shape);
        using var blankHeader = blank[.., ..HeaderH, ..];
        using var textHeader = text[.., ..HeaderH, ..];
        Assert.Equal(1f, blankHeader.min().item<float>()); // all white without labels
        Assert.True(textHeader.min().item<float>() < -0.9f);
        // Different labels give different header pixels.
        var (other, c) = WriteLabelled(dir.File("other.png"), ["p=1", "p=2", "p=4"], null);
        using var _5 = other; using var _6 = c;
        Assert.True((other[.., ..HeaderH, ..] - textHeader).abs().max().item<float>() > 1f);
        // Below the header the images are identical.
        Assert.Equal(0f, (blank[.., HeaderH.., ..] - text[.., HeaderH.., ..]).abs().max().item<float>());
    }

    [Fact]
    public void SaveLabelled_WrapsLongLabelsAndRejectsBadCounts()
    {
        using var dir = new TempDir();
        using var images = torch.zeros(4, 3, 32, 32);
        string path = dir.File("wrap.png");
        Grid.SaveLabelled(path, images, 1, 4, ["a very long column label", "b", "c", "d"], scale: 2);
        using var loaded = Png.Load(path);
        Assert.True(loaded.shape[1] > 32 * 2 + 28); // header grew to hold several lines
        Assert.Equal(2 + 4 * (2 * 64 + 2), loaded.shape[2]); // columns widened to twice the tile width

        // A label a little wider than a tile widens the columns just enough; tiles stay centred in them.
        string wide = dir.File("wide.png");
        using var ramp = torch.stack(Enumerable.Range(0, 2).Select(i => torch.full([1, 32, 32], i == 0 ? -1f : 1f)).ToArray());
        Grid.SaveLabelled(wide, ramp, 1, 2, ["scale=2.5", "x"], scale: 2);
        using var w = Png.Load(wide);
        int colW = (9 * 6 - 1) * 2 + 12; // label width at text scale 2 plus room
        Assert.Equal(2 + 2 * (colW + 2), w.shape[2]);
        int tileX = 2 + colW + 2 + (colW - 64) / 2;
        Assert.Equal(1f, w[0, 28 + 32, tileX].item<float>());
        Assert.Equal(1f, w[0, 28 + 32, tileX + 63].item<float>());
        int blackX = 2 + (colW - 64) / 2;
        Assert.Equal(-1f, w[0, 28 + 32, blackX].item<float>());
        Assert.Equal(-1f, w[0, 28 + 32, blackX + 63].item<float>());
        Assert.Equal(1f, w[0, 28 + 32, blackX - 1].item<float>()); // white margins beside the black tile
        Assert.Equal(1f, w[0, 28 + 32, blackX + 64].item<float>());
        Assert.Throws<PagSharpException>(() => Grid.SaveLabelled(dir.File("x.png"), images, 2, 2, ["a", "b", "c"]));
        Assert.Throws<PagSharpException>(() => Grid.SaveLabelled(dir.File("x.png"), images, 2, 2, ["a", "b"], ["r"]));
        Assert.Throws<PagSharpException>(() => Grid.SaveLabelled(dir.File("x.png"), images, 3, 2, ["a", "b"]));
    }

    [Fact]
    public void Wrap_BreaksAtSpacesAndSplitsLongWords()
    {
        Assert.Equal(["ab cd", "ef"], Grid.Wrap("ab cd ef", 5));
        Assert.Equal(["abcde", "fgh"], Grid.Wrap("abcdefgh", 5));
        Assert.Equal([""], Grid.Wrap("", 5));
    }

    [Fact]
    public void SaveLabelled_TypographicCharacters_DrawAsTheirAsciiSpelling()
    {
        Assert.Equal("... x <= sigma eps -> plain", BitmapFont.Printable("… × ≤ σ ε → plain"));
        Assert.Equal("?", BitmapFont.Printable("?"));
        using var dir = new TempDir();
        var (fancy, a) = WriteLabelled(dir.File("fancy.png"), ["… c2", "s≤2", "σ=1"], null);
        var (ascii, b) = WriteLabelled(dir.File("ascii.png"), ["... c2", "s<=2", "sigma=1"], null);
        var (unknown, c) = WriteLabelled(dir.File("unknown.png"), ["? c2", "s?2", "?=1"], null);
        using var _1 = fancy; using var _2 = a; using var _3 = ascii; using var _4 = b; using var _5 = unknown; using var _6 = c;
        Assert.Equal(ascii.shape, fancy.shape);
        Assert.Equal(0f, (fancy - ascii).abs().max().item<float>());
        Assert.True(!unknown.shape.SequenceEqual(fancy.shape) || (unknown - fancy).abs().max().item<float>() > 1f,
            "typographic characters were drawn as '?'");
    }

    [Fact]
    public void BitmapFont_CoversPrintableAscii()
    {
        Assert.Equal(95, BitmapFont.GlyphCount);
        for (char ch = '!'; ch <= '~'; ch++)
        {
            bool ink = false;
            for (int y = 0; y < BitmapFont.GlyphHeight; y++)
                for (int x = 0; x < BitmapFont.GlyphWidth; x++)
                    ink |= BitmapFont.IsInk(ch, x, y);
            Assert.True(ink, $"glyph '{ch}' is empty");
        }
        Assert.False(BitmapFont.IsInk(' ', 2, 3));
        // Digits are pairwise distinct.
        var shapes = Enumerable.Range('0', 10).Select(ch => string.Concat(
            Enumerable.Range(0, 35).Select(k => BitmapFont.IsInk((char)ch, k % 5, k / 5) ? '#' : '.'))).ToList();
        Assert.Equal(10, shapes.Distinct().Count());
    }
}
