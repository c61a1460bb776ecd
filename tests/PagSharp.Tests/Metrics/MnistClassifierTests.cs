using PagSharp.IO;
using PagSharp.Metrics;
using PagSharp.Tests.Imaging;
using PagSharp.Training.Datasets;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

public sealed class MnistClassifierTests
{
    [Fact]
    public void CommittedClassifierLoadsStrictlyAndReaches98PercentOnTheTestDigits()
    {
        string path = MnistClassifier.BuiltInPath();
        Assert.InRange(new FileInfo(path).Length, 1, 2_000_000);
        using var model = MnistClassifier.Load(path);
        Assert.InRange(model.parameters().Sum(p => p.numel()), 100_000, 400_000);
        using var mnist = MnistDataset.Load();
        double accuracy = MnistClassifierTraining.Accuracy(model, mnist.TestImages, mnist.TestLabels);
        Assert.True(accuracy >= 0.98, $"test accuracy {accuracy:P2}");
    }

    [Fact]
    public void WrongWeightsAreRejectedWithEveryMismatch()
    {
        using var dir = new TempDir();
        using var model = new MnistClassifier();
        var sd = model.state_dict().Where(kv => kv.Key != "fc2.bias").ToDictionary(kv => kv.Key, kv => kv.Value);
        sd["fc1.weight"] = zeros(128, 100);
        sd["extra"] = zeros(1);
        string path = dir.File("bad.safetensors");
        SafeTensors.Save(path, sd);
        var e = Assert.Throws<PagSharpException>(() => MnistClassifier.Load(path));
        Assert.Contains("fc2.bias", e.Message);
        Assert.Contains("fc1.weight", e.Message);
        Assert.Contains("extra", e.Message);
    }

    [Fact]
    public void TrainingIsDeterministicForASeed()
    {
        using var g = new Generator(7);
        using var images = rand([40, 1, 32, 32], generator: g) * 2 - 1;
        using var labels = arange(40).remainder(10);
        var options = new ClassifierTrainOptions { Epochs = 1, BatchSize = 16, Seed = 3, WarmupSteps = 1 };
        using var a = MnistClassifierTraining.Train(images, labels, options);
        using var b = MnistClassifierTraining.Train(images, labels, options);
        var sa = a.state_dict();
        var sb = b.state_dict();
        foreach (var (key, t) in sa) Assert.True(MetricsTestSupport.Same(t, sb[key]), key);
        using var features = a.Features(images.narrow(0, 0, 2));
        Assert.Equal(new long[] { 2, MnistClassifier.FeatureDim }, features.shape);
        Assert.Throws<PagSharpException>(() => a.Features(zeros(1, 1, 28, 28)));
        Assert.Throws<PagSharpException>(() => MnistClassifierTraining.Train(images, labels, options with { Epochs = 0 }));
    }
}
