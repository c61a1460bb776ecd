using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>Features [N,D] (float32) and class probabilities [N,K] (float64, softmax of the logits) of an image set.</summary>
public sealed class FeatureSet : IDisposable
{
    /// <summary>Creates a feature set; it owns the tensors.</summary>
    public FeatureSet(string featureName, Tensor features, Tensor probabilities)
    {
        FeatureName = featureName;
        Features = features;
        Probabilities = probabilities;
    }

    /// <summary>The feature network's name.</summary>
    public string FeatureName { get; }
    /// <summary>Features [N,D], float32.</summary>
    public Tensor Features { get; }
    /// <summary>Class probabilities [N,K], float64.</summary>
    public Tensor Probabilities { get; }
    /// <summary>Number of images.</summary>
    public long Count => Features.shape[0];

    /// <summary>Mergeable float64 statistics of the features.</summary>
    public FeatureStats Stats() => FeatureStats.Of(FeatureName, Features);

    /// <summary>Releases the tensors.</summary>
    public void Dispose()
    {
        Features.Dispose();
        Probabilities.Dispose();
    }
}

/// <summary>Runs a <see cref="IFeatureNetwork"/> over an image set in batches, adapting channels and size first.</summary>
public static class FeatureExtractor
{
    /// <summary>
    /// Features and class probabilities of <paramref name="images"/> [N,C,H,W] (C = 1 or 3, values in [-1, 1]).
    /// Images are converted to the network's channel count (grayscale repeated to RGB; RGB to luminance
    /// 0.299 R + 0.587 G + 0.114 B) and resized bilinearly (no antialiasing, half-pixel centres) to its input size.
    /// </summary>
    /// <param name="network">The feature network.</param>
    /// <param name="images">The images; not modified.</param>
    /// <param name="batchSize">Images per forward call.</param>
    /// <param name="progress">Receives the number of images done after each batch.</param>
    /// <param name="cancellation">Checked between batches.</param>
    /// <exception cref="PagSharpException">The images have an unsupported shape, or hold NaN.</exception>
    public static FeatureSet Extract(IFeatureNetwork network, Tensor images, int batchSize = 100, IProgress<long>? progress = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(network);
        ArgumentNullException.ThrowIfNull(images);
        if (batchSize < 1) throw new PagSharpException($"the batch size must be at least 1 (got {batchSize})");
        if (images.dim() != 4 || (images.shape[1] != 1 && images.shape[1] != 3) || images.shape[2] < 1 || images.shape[3] < 1)
            throw new PagSharpException($"images must be [N,C,H,W] with C = 1 or 3; got [{string.Join(",", images.shape)}]");
        long n = images.shape[0];
        if (n == 0) throw new PagSharpException("the image set is empty");
        var features = new List<Tensor>();
        var probabilities = new List<Tensor>();
        try
        {
            using var _ = no_grad();
            for (long start = 0; start < n; start += batchSize)
            {
                cancellation.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                long b = Math.Min(batchSize, n - start);
                var x = Adapt(images.narrow(0, start, b), network.InputChannels, network.InputSize);
                if (!x.isfinite().all().item<bool>()) throw new PagSharpException($"images {start}…{start + b - 1} contain NaN or infinite values");
                var (f, logits) = network.Forward(x);
                features.Add(f.to_type(ScalarType.Float32).MoveToOuterDisposeScope());
                probabilities.Add(nn.functional.softmax(logits.to_type(ScalarType.Float64), 1).MoveToOuterDisposeScope());
                progress?.Report(start + b);
            }
            return new FeatureSet(network.FeatureName, cat(features, 0), cat(probabilities, 0));
        }
        finally
        {
            foreach (var t in features.Concat(probabilities)) t.Dispose();
        }
    }

    /// <summary>Converts a batch to <paramref name="channels"/> channels and <paramref name="size"/>×<paramref name="size"/> pixels, float32.</summary>
    internal static Tensor Adapt(Tensor x, int channels, int size)
    {
        x = x.to_type(ScalarType.Float32);
        if (x.shape[1] != channels)
        {
            if (channels == 3) x = x.expand(-1, 3, -1, -1);
            else
            {
                using var w = tensor(new[] { 0.299f, 0.587f, 0.114f }).reshape(1, 3, 1, 1);
                x = (x * w).sum([1L], keepdim: true);
            }
        }
        if (x.shape[2] != size || x.shape[3] != size)
            x = nn.functional.interpolate(x, [size, size], mode: InterpolationMode.Bilinear, align_corners: false);
        return x.contiguous();
    }
}
