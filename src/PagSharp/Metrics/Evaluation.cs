namespace PagSharp.Metrics;

/// <summary>The metrics of one evaluation. Metrics that the inputs do not allow are null.</summary>
public sealed record EvaluationResult
{
    /// <summary>The feature network.</summary>
    public required string FeatureName { get; init; }
    /// <summary>Generated images (or feature vectors in the generated statistics).</summary>
    public required long GeneratedCount { get; init; }
    /// <summary>Reference images (or feature vectors in the reference statistics).</summary>
    public required long ReferenceCount { get; init; }
    /// <summary>Fréchet distance between the two feature Gaussians.</summary>
    public required double Fid { get; init; }
    /// <summary>Inception Score of the generated images (mean over splits); null when only statistics were given.</summary>
    public double? InceptionScore { get; init; }
    /// <summary>Standard deviation of the Inception Score over the splits.</summary>
    public double? InceptionScoreStd { get; init; }
    /// <summary>Splits of the Inception Score.</summary>
    public int Splits { get; init; }
    /// <summary>Improved precision; null unless both sides are images.</summary>
    public double? Precision { get; init; }
    /// <summary>Improved recall; null unless both sides are images.</summary>
    public double? Recall { get; init; }
    /// <summary>Neighbourhood size of precision and recall.</summary>
    public int K { get; init; }
    /// <summary>
    /// Fraction of generated images the feature network's classifier recognises: top class probability ≥
    /// <see cref="Evaluation.RecognitionThreshold"/> (for MNIST: a digit a person would read); null with statistics only.
    /// </summary>
    public double? Recognised { get; init; }
    /// <summary>Fraction of the labelled generated images classified as their label; null when no labels were given.</summary>
    public double? LabelAccuracy { get; init; }
    /// <summary>Number of generated images that had a label.</summary>
    public long LabelledCount { get; init; }
}

/// <summary>Combines the metrics: FID from statistics, IS from the generated class probabilities, precision/recall from both feature sets.</summary>
public static class Evaluation
{
    /// <summary>
    /// Computes every metric the inputs allow. <paramref name="generated"/> and <paramref name="reference"/> are the
    /// feature sets when images were given (null when only statistics were); their statistics must already be
    /// included in <paramref name="generatedStats"/> / <paramref name="referenceStats"/>. <paramref name="shuffleSeed"/>
    /// permutes the generated rows before the Inception Score's splits (see <see cref="InceptionScore.Compute"/>).
    /// </summary>
    public static EvaluationResult Evaluate(FeatureStats generatedStats, FeatureStats referenceStats,
        FeatureSet? generated, FeatureSet? reference, int k = PrecisionRecall.DefaultK, int splits = InceptionScore.DefaultSplits,
        long? shuffleSeed = null, IReadOnlyList<long?>? generatedLabels = null)
    {
        ArgumentNullException.ThrowIfNull(generatedStats);
        ArgumentNullException.ThrowIfNull(referenceStats);
        double fid = Fid.Compute(generatedStats, referenceStats);
        (double Mean, double Std)? score = generated is null ? null : InceptionScore.Compute(generated.Probabilities, splits, shuffleSeed);
        PrecisionRecallResult? pr = generated is null || reference is null ? null : PrecisionRecall.Compute(reference.Features, generated.Features, k);
        return new EvaluationResult
        {
            FeatureName = generatedStats.FeatureName,
            GeneratedCount = generatedStats.Count,
            ReferenceCount = referenceStats.Count,
            Fid = fid,
            InceptionScore = score?.Mean,
            InceptionScoreStd = score?.Std,
            Splits = splits,
            Precision = pr?.Precision,
            Recall = pr?.Recall,
            K = k,
            Recognised = generated is null ? null : RecognisedFraction(generated.Probabilities),
            LabelAccuracy = generated is null || generatedLabels is null ? null : LabelAccuracyOf(generated.Probabilities, generatedLabels, out long labelled) is var acc && labelled > 0 ? acc : null,
            LabelledCount = generated is null || generatedLabels is null ? 0 : generatedLabels.Count(l => l is not null),
        };
    }

    /// <summary>The top-class probability an image needs to count as recognised (the "max-softmax ≥ 0.9").</summary>
    public const double RecognitionThreshold = 0.9;

    /// <summary>Fraction of rows of <paramref name="probabilities"/> [N, classes] whose largest entry is ≥ <see cref="RecognitionThreshold"/>.</summary>
    public static double RecognisedFraction(TorchSharp.torch.Tensor probabilities)
    {
        using var max = probabilities.max(1).values;
        using var ok = max >= RecognitionThreshold;
        return ok.to_type(TorchSharp.torch.ScalarType.Float64).mean().item<double>();
    }

    /// <summary>Fraction of the labelled rows whose top class equals their label (rows with a null label are skipped).</summary>
    public static double LabelAccuracyOf(TorchSharp.torch.Tensor probabilities, IReadOnlyList<long?> labels, out long labelled)
    {
        if (labels.Count != probabilities.shape[0])
            throw new PagSharpException($"{labels.Count} labels for {probabilities.shape[0]} generated images");
        using var argmax = probabilities.argmax(1);
        var predicted = argmax.data<long>().ToArray();
        long hit = 0;
        labelled = 0;
        for (int i = 0; i < predicted.Length; i++)
            if (labels[i] is long l) { labelled++; if (predicted[i] == l) hit++; }
        return labelled == 0 ? double.NaN : (double)hit / labelled;
    }
}
