using System.Diagnostics;
using PagSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Metrics;

/// <summary>Settings of <see cref="MnistClassifierTraining.Train"/>.</summary>
public sealed record ClassifierTrainOptions
{
    /// <summary>Passes over the training set.</summary>
    public int Epochs { get; init; } = 15;
    /// <summary>Images per step.</summary>
    public int BatchSize { get; init; } = 64;
    /// <summary>Peak AdamW learning rate (linear warm-up over <see cref="WarmupSteps"/>, then cosine decay to 0).</summary>
    public double LearningRate { get; init; } = 2e-3;
    /// <summary>Warm-up steps.</summary>
    public int WarmupSteps { get; init; } = 50;
    /// <summary>Decoupled weight decay.</summary>
    public double WeightDecay { get; init; } = 1e-4;
    /// <summary>Augmentation: each training image is shifted by a random whole number of pixels in [−MaxShift, MaxShift] on each axis.</summary>
    public int MaxShift { get; init; } = 2;
    /// <summary>Seeds the initialisation (a private torch generator) and the order and shifts (a .NET generator).</summary>
    public long Seed { get; init; }

    internal void Validate()
    {
        if (Epochs < 1) throw new PagSharpException($"Epochs must be at least 1 (got {Epochs})");
        if (BatchSize < 1) throw new PagSharpException($"the batch size must be at least 1 (got {BatchSize})");
        if (!(LearningRate > 0)) throw new PagSharpException($"the learning rate must be positive (got {LearningRate})");
        if (MaxShift < 0 || MaxShift > 8) throw new PagSharpException($"the shift augmentation must be 0 to 8 pixels (got {MaxShift})");
        if (WeightDecay < 0) throw new PagSharpException($"the weight decay must be ≥ 0 (got {WeightDecay})");
        if (WarmupSteps < 0) throw new PagSharpException($"the warm-up must be ≥ 0 steps (got {WarmupSteps})");
    }
}

/// <summary>Progress of classifier training: after each step, and with <see cref="TestAccuracy"/> after each epoch.</summary>
public sealed record ClassifierProgress(int Epoch, long Step, long TotalSteps, double Loss, double? TestAccuracy, double Seconds);

/// <summary>Trains and evaluates <see cref="MnistClassifier"/>: AdamW, cross-entropy, random-shift augmentation, deterministic for a seed.</summary>
public static class MnistClassifierTraining
{
    /// <summary>
    /// Trains a new classifier on <paramref name="images"/> [N,1,32,32] in [-1, 1] with labels [N] (int64, 0–9).
    /// When test images and labels are given, the test accuracy is reported after each epoch.
    /// </summary>
    public static MnistClassifier Train(Tensor images, Tensor labels, ClassifierTrainOptions options,
        Tensor? testImages = null, Tensor? testLabels = null, IProgress<ClassifierProgress>? progress = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        const int side = MnistClassifier.ImageSize, pixels = side * side;
        if (images.dim() != 4 || images.shape[1] != 1 || images.shape[2] != side || images.shape[3] != side)
            throw new PagSharpException($"classifier training images must be [N,1,{side},{side}]; got [{string.Join(",", images.shape)}]");
        int n = (int)images.shape[0];
        if (labels.dim() != 1 || labels.shape[0] != n) throw new PagSharpException($"expected {n} labels; got shape [{string.Join(",", labels.shape)}]");

        float[] data = images.to_type(ScalarType.Float32).contiguous().data<float>().ToArray();
        long[] targets = labels.to_type(ScalarType.Int64).contiguous().data<long>().ToArray();
        if (targets.Any(t => t < 0 || t >= MnistClassifier.NumClasses))
            throw new PagSharpException($"labels must be 0 to {MnistClassifier.NumClasses - 1}");

        var model = new MnistClassifier();
        using (var generator = new Generator(unchecked((ulong)options.Seed)))
            model.Initialise(generator);
        model.train();
        var parameters = model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).ToArray();
        var optimizer = new AdamW(parameters, options.LearningRate) { WeightDecay = options.WeightDecay };
        var rng = new Random(unchecked((int)options.Seed ^ 0x2545F491));
        int stepsPerEpoch = (n + options.BatchSize - 1) / options.BatchSize;
        long total = (long)stepsPerEpoch * options.Epochs, step = 0;
        var clock = Stopwatch.StartNew();
        var order = Enumerable.Range(0, n).ToArray();
        var batchData = new float[options.BatchSize * pixels];
        var batchTargets = new long[options.BatchSize];
        try
        {
            for (int epoch = 1; epoch <= options.Epochs; epoch++)
            {
                rng.Shuffle(order);
                for (int start = 0; start < n; start += options.BatchSize)
                {
                    cancellation.ThrowIfCancellationRequested();
                    int b = Math.Min(options.BatchSize, n - start);
                    Array.Fill(batchData, -1f, 0, b * pixels);
                    for (int i = 0; i < b; i++)
                    {
                        int src = order[start + i];
                        batchTargets[i] = targets[src];
                        int dx = rng.Next(-options.MaxShift, options.MaxShift + 1), dy = rng.Next(-options.MaxShift, options.MaxShift + 1);
                        CopyShifted(data, src * pixels, batchData, i * pixels, side, dx, dy);
                    }
                    optimizer.Lr = LearningRate(options, step, total);
                    double loss;
                    using (var scope = NewDisposeScope())
                    {
                        var x = tensor(batchData.AsSpan(0, b * pixels).ToArray(), [b, 1, side, side]);
                        var y = tensor(batchTargets.AsSpan(0, b).ToArray(), [b]);
                        optimizer.ZeroGrad();
                        var l = nn.functional.cross_entropy(model.forward(x), y);
                        l.backward();
                        optimizer.StepUpdate();
                        loss = l.item<float>();
                    }
                    step++;
                    progress?.Report(new ClassifierProgress(epoch, step, total, loss, null, clock.Elapsed.TotalSeconds));
                }
                if (testImages is not null && testLabels is not null)
                {
                    double acc = Accuracy(model, testImages, testLabels);
                    model.train();
                    progress?.Report(new ClassifierProgress(epoch, step, total, double.NaN, acc, clock.Elapsed.TotalSeconds));
                }
            }
        }
        catch
        {
            model.Dispose();
            throw;
        }
        model.eval();
        return model;
    }

    /// <summary>Fraction of <paramref name="images"/> whose arg-max class equals the label (evaluated in eval mode, batches of 500).</summary>
    public static double Accuracy(MnistClassifier model, Tensor images, Tensor labels)
    {
        model.eval();
        using var _ = no_grad();
        long n = images.shape[0], correct = 0;
        for (long start = 0; start < n; start += 500)
        {
            using var scope = NewDisposeScope();
            long b = Math.Min(500, n - start);
            var pred = model.forward(images.narrow(0, start, b)).argmax(1);
            correct += pred.eq(labels.narrow(0, start, b)).sum().item<long>();
        }
        return (double)correct / n;
    }

    /// <summary>Linear warm-up, then cosine decay to 0.</summary>
    internal static double LearningRate(ClassifierTrainOptions o, long step, long total)
    {
        if (step < o.WarmupSteps) return o.LearningRate * (step + 1) / o.WarmupSteps;
        double progress = (double)(step - o.WarmupSteps) / Math.Max(1, total - o.WarmupSteps);
        return o.LearningRate * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }

    /// <summary>Copies one side×side image shifted by (dx, dy) pixels; uncovered pixels keep the destination's value (background).</summary>
    private static void CopyShifted(float[] src, int srcOffset, float[] dst, int dstOffset, int side, int dx, int dy)
    {
        for (int y = 0; y < side; y++)
        {
            int sy = y - dy;
            if (sy < 0 || sy >= side) continue;
            int x0 = Math.Max(0, dx), x1 = Math.Min(side, side + dx);
            if (x1 > x0) Array.Copy(src, srcOffset + sy * side + x0 - dx, dst, dstOffset + y * side + x0, x1 - x0);
        }
    }
}
