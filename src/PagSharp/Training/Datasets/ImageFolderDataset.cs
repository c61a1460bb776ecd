using PagSharp.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Training.Datasets;

/// <summary>
/// Images read from a folder of PNG/JPEG files, for training on your own data (<c>--data FOLDER</c>).
/// </summary>
/// <remarks>
/// <para><b>Layout.</b> If the folder has subfolders (names starting with '.' are ignored), each subfolder is one
/// class: subfolder names sorted ordinally become labels 0…K−1 (<see cref="ClassNames"/>) and the images anywhere
/// under a subfolder belong to it; loose images next to class subfolders are an error. Without subfolders the images
/// directly in the folder are loaded unlabelled (<see cref="Labels"/> is null).</para>
/// <para><b>Files.</b> Files ending in .png, .jpg or .jpeg (any case) are images; other files are ignored. Order is
/// class by class, then by relative path (ordinal), so loads are deterministic.</para>
/// <para><b>Pixels.</b> Each image is loaded with <see cref="Png.Load"/>: shorter side resized to the requested size,
/// centre-cropped to a square, converted to the requested channel count, values in [-1, 1].</para>
/// </remarks>
public sealed class ImageFolderDataset : IDisposable
{
    private static readonly string[] Extensions = [".png", ".jpg", ".jpeg"];

    /// <summary>Images, float [N,C,size,size] in [-1, 1].</summary>
    public Tensor Images { get; }

    /// <summary>Class labels, int64 [N] in 0…<see cref="NumClasses"/>−1; null when the folder has no class subfolders.</summary>
    public Tensor? Labels { get; }

    /// <summary>Number of classes (subfolders); 0 when unlabelled.</summary>
    public int NumClasses => ClassNames.Count;

    /// <summary>Class subfolder names in label order; empty when unlabelled.</summary>
    public IReadOnlyList<string> ClassNames { get; }

    /// <summary>The image files, in the order of <see cref="Images"/>.</summary>
    public IReadOnlyList<string> Files { get; }

    /// <summary>Number of images.</summary>
    public int Count => Files.Count;

    private ImageFolderDataset(Tensor images, Tensor? labels, IReadOnlyList<string> classNames, IReadOnlyList<string> files)
    {
        Images = images;
        Labels = labels;
        ClassNames = classNames;
        Files = files;
    }

    /// <summary>Loads every image under <paramref name="folder"/> as described in the remarks.</summary>
    /// <param name="folder">The folder to read.</param>
    /// <param name="size">Side of the square images, in pixels.</param>
    /// <param name="channels">1 (grayscale) or 3 (RGB).</param>
    /// <exception cref="PagSharpException">The folder is missing or empty, a class folder is empty, an image cannot be read, or an argument is invalid.</exception>
    public static ImageFolderDataset Load(string folder, int size, int channels)
    {
        ArgumentNullException.ThrowIfNull(folder);
        if (size <= 0 || size > 4096) throw new PagSharpException($"Cannot load image folder '{folder}' with size = {size}; the size must be 1 to 4096 pixels.");
        if (channels != 1 && channels != 3) throw new PagSharpException($"Cannot load image folder '{folder}' with channels = {channels}; valid values are 1 (grayscale) and 3 (RGB).");
        if (!Directory.Exists(folder)) throw new PagSharpException($"Image folder '{folder}' does not exist; give a folder of PNG/JPEG files, or one subfolder of them per class.");

        string[] subfolders = Directory.GetDirectories(folder)
            .Where(d => !Path.GetFileName(d).StartsWith('.'))
            .OrderBy(d => Path.GetFileName(d), StringComparer.Ordinal)
            .ToArray();

        var files = new List<string>();
        List<long>? labels = null;
        var classNames = new List<string>();
        if (subfolders.Length == 0)
        {
            files.AddRange(ImagesIn(folder, SearchOption.TopDirectoryOnly));
            if (files.Count == 0)
                throw new PagSharpException($"Image folder '{folder}' contains no images; expected .png, .jpg or .jpeg files, or one subfolder of them per class.");
        }
        else
        {
            var loose = ImagesIn(folder, SearchOption.TopDirectoryOnly);
            if (loose.Count > 0)
                throw new PagSharpException(
                    $"Image folder '{folder}' has both class subfolders and loose images (such as '{loose[0]}'); put every image in a class subfolder, or use a folder without subfolders for unlabelled images.");
            labels = [];
            for (int k = 0; k < subfolders.Length; k++)
            {
                var classFiles = ImagesIn(subfolders[k], SearchOption.AllDirectories);
                if (classFiles.Count == 0)
                    throw new PagSharpException($"Class folder '{subfolders[k]}' contains no images; every class subfolder needs .png, .jpg or .jpeg files.");
                classNames.Add(Path.GetFileName(subfolders[k]));
                files.AddRange(classFiles);
                labels.AddRange(Enumerable.Repeat((long)k, classFiles.Count));
            }
        }

        long per = (long)channels * size * size;
        if (per * files.Count > Array.MaxLength)
            throw new PagSharpException($"Image folder '{folder}' has {files.Count} images; at {channels}x{size}x{size} that exceeds what fits in memory at once. Use fewer images or a smaller size.");
        var data = new float[per * files.Count];
        var errors = new Exception?[files.Count];
        Parallel.For(0, files.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Max(1, Environment.ProcessorCount) }, i =>
        {
            try
            {
                float[] px = Png.LoadPixels(files[i], size, channels, out _, out _);
                Array.Copy(px, 0, data, per * i, per);
            }
            catch (Exception e)
            {
                errors[i] = e;
            }
        });
        // Report the first failing file in load order, so the error does not depend on thread timing.
        foreach (Exception? e in errors)
        {
            if (e is PagSharpException) throw new PagSharpException($"Cannot load image folder '{folder}': {e.Message}", e);
            if (e is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(e);
        }

        Tensor images = torch.tensor(data, [files.Count, channels, size, size]);
        Tensor? labelTensor = labels is null ? null : torch.tensor(labels.ToArray(), [labels.Count]);
        return new ImageFolderDataset(images, labelTensor, classNames, files);
    }

    private static List<string> ImagesIn(string dir, SearchOption option) =>
        Directory.EnumerateFiles(dir, "*", option)
            .Where(f => Extensions.Contains(Path.GetExtension(f).ToLowerInvariant()))
            .Where(f => !Path.GetRelativePath(dir, f).Split(Path.DirectorySeparatorChar).Any(part => part.StartsWith('.')))
            .OrderBy(f => Path.GetRelativePath(dir, f), StringComparer.Ordinal)
            .ToList();

    /// <summary>Releases the tensors.</summary>
    public void Dispose()
    {
        Images.Dispose();
        Labels?.Dispose();
    }
}
