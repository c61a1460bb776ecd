namespace PagSharp.Tests;

/// <summary>
/// Floating-point comparisons that hold across CPUs: results of reductions differ in their last bits between AVX2 and
/// AVX-512 kernels and between thread counts (summation order), so large values are compared relatively.
/// </summary>
internal static class Tolerance
{
    /// <summary>|actual − expected| ≤ rel·max(|expected|, |actual|) + abs.</summary>
    public static void Close(double expected, double actual, double rel, double abs = 0, string? what = null)
    {
        double bound = rel * Math.Max(Math.Abs(expected), Math.Abs(actual)) + abs;
        Assert.True(Math.Abs(actual - expected) <= bound,
            $"{what ?? "value"}: expected {expected:R}, got {actual:R} (difference {Math.Abs(actual - expected):G3} > {bound:G3} = {rel:G2} relative + {abs:G2} absolute)");
    }
}
