using PagSharp.Imaging;
using PagSharp.Training.Datasets;
using TorchSharp;

namespace PagSharp.Tests.Training;

public class ImageFolderDatasetTests
{
    private static void WriteImage(string path, int channels, int h, int w, float value)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var t = torch.full([channels, h, w], value);
        Png.Save(path, t);
    }

    [Fact]
    public void FlatFolder_IsUnlabelled()
    {
        using var dir = new TempDir();
        WriteImage(dir.File("b.png"), 3, 20, 30, 0.2f);
        WriteImage(dir.File("a.png"), 1, 16, 16, -0.6f);
        WriteImage(dir.File("c.PNG"), 3, 40, 24, 1f);
        File.WriteAllText(dir.File("notes.txt"), "ignored");

        using var ds = ImageFolderDataset.Load(dir.Path, size: 8, channels: 3);
        Assert.Equal(new long[] { 3, 3, 8, 8 }, ds.Images.shape);
        Assert.Null(ds.Labels);
        Assert.Equal(0, ds.NumClasses);
        Assert.Empty(ds.ClassNames);
        Assert.Equal(["a.png", "b.png", "c.PNG"], ds.Files.Select(Path.GetFileName));
        // Constant images stay constant through resize and crop; the gray one is repeated into RGB.
        float[] expected = [-0.6f, 0.2f, 1f];
        for (int i = 0; i < 3; i++)
        {
            float q = MathF.Round((expected[i] + 1) * 127.5f) / 127.5f - 1;
            Assert.True((ds.Images[i] - q).abs().max().item<float>() < 1e-4f);
        }
    }

    [Fact]
    public void Subfolders_AreClassesInSortedOrder()
    {
        using var dir = new TempDir();
        WriteImage(dir.File("zebra/1.png"), 3, 10, 10, 0.5f);
        WriteImage(dir.File("apple/1.png"), 3, 12, 10, -0.5f);
        WriteImage(dir.File("apple/2.png"), 3, 12, 10, -0.5f);
        WriteImage(dir.File("mango/x/deep.png"), 3, 10, 10, 0f);
        Directory.CreateDirectory(dir.File(".hidden"));

        using var ds = ImageFolderDataset.Load(dir.Path, size: 6, channels: 1);
        Assert.Equal(new long[] { 4, 1, 6, 6 }, ds.Images.shape);
        Assert.Equal(["apple", "mango", "zebra"], ds.ClassNames);
        Assert.Equal(3, ds.NumClasses);
        Assert.NotNull(ds.Labels);
        Assert.Equal(new long[] { 0, 0, 1, 2 }, ds.Labels!.data<long>().ToArray());
        Assert.Equal(torch.ScalarType.Int64, ds.Labels.dtype);
    }

    [Fact]
    public void EmptyOrBadFolders_Throw()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<PagSharpException>(() => ImageFolderDataset.Load(dir.Path, 8, 3));
        Assert.Contains("no images", e.Message);
        Assert.Contains(dir.Path, e.Message);

        Assert.Throws<PagSharpException>(() => ImageFolderDataset.Load(dir.File("missing"), 8, 3));

        Directory.CreateDirectory(dir.File("emptyclass"));
        WriteImage(dir.File("full/a.png"), 3, 4, 4, 0f);
        e = Assert.Throws<PagSharpException>(() => ImageFolderDataset.Load(dir.Path, 8, 3));
        Assert.Contains("emptyclass", e.Message);
    }

    [Fact]
    public void UnreadableImage_ThrowsNamingFile()
    {
        using var dir = new TempDir();
        WriteImage(dir.File("good.png"), 3, 8, 8, 0f);
        File.WriteAllText(dir.File("bad.jpg"), "garbage");
        var e = Assert.Throws<PagSharpException>(() => ImageFolderDataset.Load(dir.Path, 8, 3));
        Assert.Contains("bad.jpg", e.Message);
    }
}
