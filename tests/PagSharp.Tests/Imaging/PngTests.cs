using PagSharp.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Imaging;

public class PngTests
{
    private static Tensor Random(params long[] shape)
    {
        var gen = new torch.Generator(1234);
        return torch.rand(shape, generator: gen) * 2 - 1;
    }

    private static float MaxAbsDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void SaveThenLoad_RoundTripsWithinOneStep(int channels)
    {
        using var dir = new TempDir();
        string path = dir.File($"img{channels}.png");
        using var image = Random(channels, 7, 9);
        Png.Save(path, image);
        using var loaded = Png.Load(path, channels: channels);
        Assert.Equal(new long[] { channels, 7, 9 }, loaded.shape);
        Assert.True(MaxAbsDiff(image, loaded) <= 1f / 127.5f + 1e-6f);

        // The stored bytes are exactly round((x + 1) * 127.5), so loading gives b / 127.5 - 1.
        using var expected = ((image + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1;
        Assert.True(MaxAbsDiff(expected, loaded) < 1e-6f);
        Assert.Single(Directory.GetFiles(dir.Path)); // no temporary file left behind
    }

    [Fact]
    public void Save_ClipsOutOfRangeValues()
    {
        using var dir = new TempDir();
        string path = dir.File("clip.png");
        using var image = torch.tensor(new float[] { -3f, -1f, 0f, 1f, 5f, 0.5f }, [1, 2, 3]);
        Png.Save(path, image);
        using var loaded = Png.Load(path, channels: 1);
        float[] v = loaded.data<float>().ToArray();
        Assert.Equal(-1f, v[0]);
        Assert.Equal(-1f, v[1]);
        Assert.Equal(128f / 127.5f - 1f, v[2], 5); // round(127.5) = 128 (half to even)
        Assert.Equal(1f, v[3]);
        Assert.Equal(1f, v[4]);
    }

    [Fact]
    public void Load_ConvertsChannels()
    {
        using var dir = new TempDir();
        string gray = dir.File("gray.png"), rgb = dir.File("rgb.png");
        using var g = Random(1, 4, 5);
        Png.Save(gray, g);
        using var asRgb = Png.Load(gray, channels: 3);
        Assert.Equal(new long[] { 3, 4, 5 }, asRgb.shape);
        Assert.True(MaxAbsDiff(asRgb[0], asRgb[1]) == 0 && MaxAbsDiff(asRgb[1], asRgb[2]) == 0);

        // Pure red, green and blue pixels become their luminance weights.
        using var colours = torch.tensor(new float[] { 1, -1, -1, -1, 1, -1, -1, -1, 1 }, [3, 1, 3]);
        Png.Save(rgb, colours);
        using var asGray = Png.Load(rgb, channels: 1);
        float[] v = asGray.data<float>().ToArray();
        Assert.Equal(0.299f * 255 / 127.5f - 1, v[0], 4);
        Assert.Equal(0.587f * 255 / 127.5f - 1, v[1], 4);
        Assert.Equal(0.114f * 255 / 127.5f - 1, v[2], 4);
    }

    [Fact]
    public void Load_ResizesShorterSideAndCropsCentre()
    {
        using var dir = new TempDir();
        string path = dir.File("wide.png");
        // 30x90 RGB: left third red, middle third green, right third blue.
        using var image = torch.full([3, 30, 90], -1f);
        image[0, .., ..30] = torch.tensor(1f);
        image[1, .., 30..60] = torch.tensor(1f);
        image[2, .., 60..] = torch.tensor(1f);
        Png.Save(path, image);

        using var loaded = Png.Load(path, size: 10);
        Assert.Equal(new long[] { 3, 10, 10 }, loaded.shape);
        // The centre crop is the green third: the red and blue thirds are cut away. (The antialiasing filter,
        // 3 source pixels wide when shrinking 3x, blends a little red/blue into the outermost output columns.)
        using var inner = loaded[.., .., 1..9];
        Assert.True(MaxAbsDiff(inner[1], torch.ones(10, 8)) < 1e-5f);
        Assert.True(MaxAbsDiff(inner[0], -torch.ones(10, 8)) < 1e-5f);
        Assert.True(MaxAbsDiff(inner[2], -torch.ones(10, 8)) < 1e-5f);
        Assert.True(loaded[0, 5, 0].item<float>() > -1f && loaded[0, 5, 0].item<float>() < 0f);
        Assert.True(loaded[1, 5, 0].item<float>() > 0f);

        // Enlarging works too, and a constant image stays constant (weights are normalised).
        string tall = dir.File("tall.png");
        using var constant = torch.full([1, 9, 5], 0.2f);
        Png.Save(tall, constant);
        using var big = Png.Load(tall, size: 12, channels: 1);
        Assert.Equal(new long[] { 1, 12, 12 }, big.shape);
        float expected = MathF.Round(1.2f * 127.5f) / 127.5f - 1f;
        Assert.True(MaxAbsDiff(big, torch.full([1, 12, 12], expected)) < 1e-4f);
    }

    [Fact]
    public void Load_ReadsJpeg()
    {
        using var dir = new TempDir();
        string path = dir.File("photo.jpg");
        using (var bitmap = new SkiaSharp.SKBitmap(8, 6))
        {
            bitmap.Erase(new SkiaSharp.SKColor(200, 100, 50));
            using var data = bitmap.Encode(SkiaSharp.SKEncodedImageFormat.Jpeg, 95);
            File.WriteAllBytes(path, data.ToArray());
        }
        using var loaded = Png.Load(path);
        Assert.Equal(new long[] { 3, 6, 8 }, loaded.shape);
        Assert.Equal(200 / 127.5f - 1, loaded[0, 3, 4].item<float>(), 1);
        Assert.Equal(50 / 127.5f - 1, loaded[2, 3, 4].item<float>(), 1);
    }

    [Fact]
    public void Load_UnreadableFile_ThrowsNamingTheFile()
    {
        using var dir = new TempDir();
        string path = dir.File("broken.png");
        File.WriteAllText(path, "this is not an image");
        var e = Assert.Throws<PagSharpException>(() => Png.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("PNG", e.Message);

        string missing = dir.File("missing.png");
        e = Assert.Throws<PagSharpException>(() => Png.Load(missing));
        Assert.Contains(missing, e.Message);

        // A truncated PNG is reported rather than silently half-decoded.
        string good = dir.File("good.png"), truncated = dir.File("truncated.png");
        using var image = Random(3, 40, 40);
        Png.Save(good, image);
        byte[] bytes = File.ReadAllBytes(good);
        File.WriteAllBytes(truncated, bytes[..(bytes.Length / 2)]);
        e = Assert.Throws<PagSharpException>(() => Png.Load(truncated));
        Assert.Contains(truncated, e.Message);
    }

    [Fact]
    public void Save_RejectsBadInput()
    {
        using var dir = new TempDir();
        Assert.Throws<PagSharpException>(() => Png.Save(dir.File("a.png"), torch.zeros(2, 4, 4)));
        Assert.Throws<PagSharpException>(() => Png.Save(dir.File("b.png"), torch.zeros(1, 1, 4, 4)));
        Assert.Throws<PagSharpException>(() => Png.Save(dir.File("c.png"), torch.zeros(new long[] { 1, 4, 4 }, dtype: ScalarType.Int32)));
        Assert.Throws<PagSharpException>(() => Png.Save(dir.File("d.png"), torch.full([1, 2, 2], float.NaN)));
        Assert.Throws<PagSharpException>(() => Png.Load(dir.File("a.png"), channels: 2));
        Assert.Empty(Directory.GetFiles(dir.Path));
    }
}
