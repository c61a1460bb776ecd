using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>
/// Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) ‖ p(y))), computed on each of <c>splits</c> consecutive
/// parts of the set (part i is rows ⌊iN/s⌋ … ⌊(i+1)N/s⌋ − 1, as in the original code) and reported as the mean and
/// the (population) standard deviation over the parts. 1 means "no information"; the number of classes is the maximum.
/// </summary>
/// <remarks>
/// Consecutive splits assume the rows are in random order. For a class-ordered set (such as the MNIST splits, which are
/// class-major) every split holds one or two classes and scores near 1; pass a <c>shuffleSeed</c> to split a fixed
/// random permutation of the rows instead.
/// </remarks>
public static class InceptionScore
{
    /// <summary>The conventional number of splits.</summary>
    public const int DefaultSplits = 10;

    /// <summary>Computes the score from class probabilities [N,K] (rows are distributions), in float64.</summary>
    /// <param name="probabilities">Class probabilities, one row per image.</param>
    /// <param name="splits">Number of parts.</param>
    /// <param name="shuffleSeed">When given, the rows are permuted by <c>randperm</c> of a generator with this seed before splitting.</param>
    /// <exception cref="PagSharpException">Not a probability matrix, or fewer rows than splits.</exception>
    public static (double Mean, double Std) Compute(Tensor probabilities, int splits = DefaultSplits, long? shuffleSeed = null)
    {
        ArgumentNullException.ThrowIfNull(probabilities);
        if (splits < 1) throw new PagSharpException($"the Inception Score needs at least 1 split (got {splits})");
        if (probabilities.dim() != 2 || probabilities.shape[1] < 1)
            throw new PagSharpException($"the Inception Score needs class probabilities [N,K]; got shape [{string.Join(",", probabilities.shape)}]");
        long n = probabilities.shape[0];
        if (n < splits)
            throw new PagSharpException($"the Inception Score with {splits} splits needs at least {splits} images; got {n}");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var p = probabilities.to_type(ScalarType.Float64);
        if (!p.isfinite().all().item<bool>() || p.min().item<double>() < 0 || (p.sum(1) - 1).abs().max().item<double>() > 1e-3)
            throw new PagSharpException("the Inception Score needs rows of non-negative probabilities that sum to 1 (apply softmax to logits)");
        if (shuffleSeed is long seed)
        {
            using var generator = new Generator(unchecked((ulong)seed));
            p = p.index_select(0, randperm(n, generator: generator));
        }
        var scores = new double[splits];
        for (int i = 0; i < splits; i++)
        {
            long start = i * n / splits, end = (i + 1) * n / splits;
            var part = p.narrow(0, start, end - start);
            var marginal = part.mean([0L], keepdim: true);
            // p log(p / p(y)) with 0 log 0 = 0; p(y) ≥ p/n > 0 wherever p > 0.
            var kl = (part * (part.clamp_min(1e-300).log() - marginal.clamp_min(1e-300).log())).sum(1);
            scores[i] = Math.Exp(kl.mean().item<double>());
        }
        double mean = scores.Average();
        double std = Math.Sqrt(scores.Sum(s => (s - mean) * (s - mean)) / splits);
        return (mean, std);
    }
}
