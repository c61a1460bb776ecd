using PagSharp.Models.Adm;
using PagSharp.Pipelines;
using PagSharp.Metrics;
using PagSharp.Models;
using PagSharp.Sampling;
using static TorchSharp.torch;

namespace PagSharp.Tests.Models;

/// <summary>The committed MNIST model: loads strictly with its config, and draws the digits it is asked for.</summary>
public class BuiltInModelTests
{
    [Fact]
    public void CommittedModelLoadsAndItsConfigMatchesItsWeights()
    {
        using var model = ModelStore.Load(null, null, null); // strict name + shape match against models/mnist/config.json
        Assert.Equal(1, model.Config.InChannels);
        Assert.Equal(32, model.Config.ImageSize);
        Assert.Equal(11, model.Config.ResolvedNumClasses);
        Assert.Equal(10, model.Config.NullClass);
        long parameters = model.Net.parameters().Sum(p => p.numel());
        Assert.InRange(parameters, 1_000_000, 3_000_000);
        Assert.True(model.Net.parameters().All(p => p.isfinite().all().item<bool>()), "weights are finite");
        Assert.True(new FileInfo(Path.Combine(ModelStore.BuiltInDir, ModelStore.WeightsFile)).Length < 25_000_000);
    }

    [Fact]
    public void ClassConditionalSamplesAreRecognisedAsTheirDigits()
    {
        using var model = ModelStore.Load(null, null, null);
        using var classifier = MnistClassifier.Load(MnistClassifier.BuiltInPath());
        var options = new SamplingOptions { Steps = 25, Seed = 0, BatchSize = 10, Labels = Enumerable.Range(0, 10).ToArray() };
        using var _ = no_grad();
        var samples = Sampler.Sample(model.Net, options, Enumerable.Range(0, 10).Select(i => (long)i).ToArray());
        var predicted = classifier.forward(samples.clamp(-1, 1)).argmax(1).data<long>().ToArray();
        int correct = predicted.Where((p, i) => p == i).Count();
        Assert.True(correct >= 8, $"only {correct}/10 class-conditional samples were classified as their label: [{string.Join(",", predicted)}]");
    }
}
