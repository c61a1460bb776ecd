using System.Diagnostics;
using static TorchSharp.torch;

namespace PagSharp.Runtime;

/// <summary>
/// The large-matrix-multiply throughput of this machine as libtorch reaches it: an n×n @ n×n product (n³
/// multiply-adds) in one type, timed after warm-up calls, with torch's threads as they are set
/// (<see cref="CpuRuntime.Configure"/>). A dense GEMM of this size is about the fastest thing a CPU does with these
/// kernels, so multiply-adds per second of a whole sampling step divided by it tells how far the step is from the
/// hardware's practical limit (<c>pag bench</c>'s "÷ GEMM" column). libtorch has two CPU GEMM paths, timed apart:
/// <see cref="Mm"/> (<c>mm</c>: the BLAS it was built with; bfloat16 goes to oneDNN) and <see cref="Conv1x1"/>
/// (the same product as a 1×1 convolution of n channels over n pixels: oneDNN, as the U-Nets' convolutions). On this
/// project's AMD CPU float32 <c>mm</c> reached about a third of the 1×1 convolution, so the peak of a type is the
/// faster of the two (<see cref="Peak"/>).
/// </summary>
/// <param name="Dtype">The type of both operands and the product.</param>
/// <param name="Kernel"><see cref="Mm"/> or <see cref="Conv1x1"/>.</param>
/// <param name="Size">n: the matrices are n×n.</param>
/// <param name="Seconds">Seconds of each timed multiply, in the order run.</param>
public sealed record GemmThroughput(ScalarType Dtype, string Kernel, int Size, IReadOnlyList<double> Seconds)
{
    /// <summary><c>mm(a, b)</c> of two n×n matrices.</summary>
    public const string Mm = "mm";
    /// <summary><c>conv2d</c> of an n-channel 1×n image with n×n×1×1 weights: the same n³ multiply-adds through oneDNN.</summary>
    public const string Conv1x1 = "conv1x1";
    /// <summary>The kernels <see cref="Measure"/> knows.</summary>
    public static readonly string[] Kernels = { Mm, Conv1x1 };

    /// <summary>Multiply-adds of one n×n @ n×n product: n³.</summary>
    public double Macs => (double)Size * Size * Size;

    /// <summary>The median of <see cref="Seconds"/> (the mean of the middle two for an even count).</summary>
    public double MedianSeconds => Median(Seconds);

    /// <summary>Multiply-adds per second of the median multiply.</summary>
    public double MacsPerSecond => Macs / MedianSeconds;

    /// <summary>
    /// Times <paramref name="repetitions"/> products of two n×n matrices of normal random values in
    /// <paramref name="dtype"/> on the CPU with <paramref name="kernel"/> after <paramref name="warmup"/> untimed ones
    /// (the first call of a type lets oneDNN generate its kernels). Runs in inference mode; each product is freed
    /// before the next.
    /// </summary>
    public static GemmThroughput Measure(ScalarType dtype, int size = 2048, int warmup = 2, int repetitions = 5, string kernel = Mm)
    {
        if (size < 1 || warmup < 0 || repetitions < 1)
            throw new PagSharpException($"GEMM size must be ≥ 1, warm-up ≥ 0 and repetitions ≥ 1 (got {size}, {warmup}, {repetitions})");
        if (!Kernels.Contains(kernel)) throw new PagSharpException($"unknown GEMM kernel '{kernel}'; valid: {string.Join(", ", Kernels)}");
        using var _ = inference_mode();
        using var gen = new Generator(0);
        // mm: [n,n] @ [n,n]; conv1x1: input [1,n,1,n] (n channels, n pixels), weights [n,n,1,1].
        long[] aShape = kernel == Mm ? new long[] { size, size } : new long[] { 1, size, 1, size };
        long[] bShape = kernel == Mm ? new long[] { size, size } : new long[] { size, size, 1, 1 };
        using var a = randn(aShape, generator: gen).to_type(dtype);
        using var b = randn(bShape, generator: gen).to_type(dtype);
        var seconds = new List<double>(repetitions);
        for (int i = 0; i < warmup + repetitions; i++)
        {
            var sw = Stopwatch.StartNew();
            using (var c = kernel == Mm ? mm(a, b) : nn.functional.conv2d(a, b)) { }
            if (i >= warmup) seconds.Add(sw.Elapsed.TotalSeconds);
        }
        return new GemmThroughput(dtype, kernel, size, seconds);
    }

    /// <summary>The highest multiply-adds per second among <paramref name="measured"/> of type <paramref name="dtype"/> (null if none).</summary>
    public static double? Peak(IEnumerable<GemmThroughput> measured, ScalarType dtype) =>
        measured.Where(g => g.Dtype == dtype).Select(g => (double?)g.MacsPerSecond).Max();

    /// <summary>The median of <paramref name="values"/> (the mean of the middle two for an even count).</summary>
    public static double Median(IEnumerable<double> values)
    {
        var v = values.OrderBy(x => x).ToArray();
        if (v.Length == 0) throw new PagSharpException("the median of no values");
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }
}
