using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>
/// A network that maps images to feature vectors (for FID and precision/recall) and class logits (for the
/// Inception Score). Implementations: <see cref="MnistFeatureNetwork"/> and <see cref="InceptionFeatureNetwork"/>.
/// </summary>
public interface IFeatureNetwork : IDisposable
{
    /// <summary>Name recorded in feature statistics; statistics of different networks are never compared.</summary>
    string FeatureName { get; }

    /// <summary>Length of a feature vector.</summary>
    int FeatureDim { get; }

    /// <summary>Number of classes of the logits.</summary>
    int NumClasses { get; }

    /// <summary>Channels the network takes (1 or 3); <see cref="FeatureExtractor"/> converts images to this.</summary>
    int InputChannels { get; }

    /// <summary>Side of the square images the network takes; <see cref="FeatureExtractor"/> resizes (bilinear) to this.</summary>
    int InputSize { get; }

    /// <summary>Features [B,D] and logits [B,K] of images [B,<see cref="InputChannels"/>,S,S] in [-1, 1] (S = <see cref="InputSize"/>).</summary>
    (Tensor Features, Tensor Logits) Forward(Tensor images);
}
