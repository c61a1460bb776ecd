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
        long? shuffleSeed = null)
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
        };
    }
}
