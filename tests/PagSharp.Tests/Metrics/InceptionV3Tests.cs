using System.Diagnostics;
using PagSharp.IO;
using PagSharp.Metrics;
using PagSharp.Tests.Imaging;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

/// <summary>The FID InceptionV3 on random weights: keys and shapes of pytorch-fid's checkpoint, loading, output shapes.</summary>
public sealed class InceptionV3Tests
{
    [Fact]
    public void StateDictHasTheCheckpointKeysAndShapes()
    {
        using var model = new InceptionV3();
        var sd = model.state_dict();
        var expected = new Dictionary<string, long[]>
        {
            ["Conv2d_1a_3x3.conv.weight"] = [32, 3, 3, 3],
            ["Conv2d_1a_3x3.bn.weight"] = [32],
            ["Conv2d_1a_3x3.bn.running_var"] = [32],
            ["Conv2d_4a_3x3.conv.weight"] = [192, 80, 3, 3],
            ["Mixed_5b.branch1x1.conv.weight"] = [64, 192, 1, 1],
            ["Mixed_5b.branch5x5_2.conv.weight"] = [64, 48, 5, 5],
            ["Mixed_5b.branch_pool.conv.weight"] = [32, 192, 1, 1],
            ["Mixed_5d.branch_pool.bn.running_mean"] = [64],
            ["Mixed_6a.branch3x3.conv.weight"] = [384, 288, 3, 3],
            ["Mixed_6b.branch7x7_2.conv.weight"] = [128, 128, 1, 7],
            ["Mixed_6e.branch7x7dbl_4.conv.weight"] = [192, 192, 7, 1],
            ["Mixed_7a.branch3x3_2.conv.weight"] = [320, 192, 3, 3],
            ["Mixed_7b.branch3x3_2b.conv.weight"] = [384, 384, 3, 1],
            ["Mixed_7c.branch3x3dbl_1.conv.weight"] = [448, 2048, 1, 1],
            ["Mixed_7c.branch_pool.conv.weight"] = [192, 2048, 1, 1],
            ["fc.weight"] = [1008, 2048],
            ["fc.bias"] = [1008],
        };
        foreach (var (key, shape) in expected)
        {
            Assert.True(sd.ContainsKey(key), key);
            Assert.Equal(shape, sd[key].shape);
        }
        Assert.DoesNotContain(sd.Keys, k => k.StartsWith("AuxLogits", StringComparison.Ordinal) || k.Contains("conv.bias"));
        // 94 BasicConv2d layers (each: conv.weight + 4 bn tensors, maybe num_batches_tracked) + fc.
        Assert.Equal(94, sd.Keys.Count(k => k.EndsWith(".conv.weight", StringComparison.Ordinal)));
        Assert.Equal(94 * 4 + 2, sd.Keys.Count(k => !k.EndsWith("num_batches_tracked", StringComparison.Ordinal) && (k.Contains(".bn.") || k.StartsWith("fc.", StringComparison.Ordinal))));
        // torchvision's inception_v3 (27,161,264) less AuxLogits (3,326,696) and its 1000-class fc (2,049,000), plus the 1008-class fc.
        Assert.Equal(23_850_960L, model.parameters().Sum(p => p.numel()));
        // BatchNorm starts at PyTorch's defaults (TorchSharp may leave normalisation tensors uninitialised).
        foreach (var (key, t) in sd.Where(kv => kv.Key.Contains(".bn.")))
        {
            if (key.EndsWith("weight") || key.EndsWith("running_var")) Assert.True(t.eq(1).all().item<bool>(), key);
            if (key.EndsWith("bias") || key.EndsWith("running_mean")) Assert.True(t.eq(0).all().item<bool>(), key);
        }
    }

    [Fact]
    public void SafetensorsRoundTripLoadsStrictlyAndGivesTheSameOutputs()
    {
        using var dir = new TempDir();
        using var g = new Generator(11);
        using var model = new InceptionV3();
        using (no_grad())
            foreach (var (key, t) in model.state_dict().Where(kv => kv.Key.Contains("running_")))
                t.copy_(rand(t.shape, generator: g) + 0.5);
        // Leave out num_batches_tracked, as older checkpoints do: loading fills it in.
        var sd = model.state_dict().Where(kv => !kv.Key.EndsWith("num_batches_tracked", StringComparison.Ordinal)).ToDictionary();
        string path = dir.File("inception.safetensors");
        SafeTensors.Save(path, sd);
        using var loaded = InceptionV3.Load(path);
        using var x = rand([1, 3, 75, 75], generator: g) * 2 - 1;
        using var _ = no_grad();
        using var f1 = model.Features(x);
        using var f2 = loaded.Features(x);
        Assert.Equal(new long[] { 1, 2048 }, f1.shape);
        Assert.True(MetricsTestSupport.Same(f1, f2));
        using var logits = loaded.Head(f2);
        Assert.Equal(new long[] { 1, 1008 }, logits.shape);

        // Wrong weights: the MNIST classifier's file.
        var e = Assert.Throws<PagSharpException>(() => InceptionV3.Load(MnistClassifier.BuiltInPath()));
        Assert.Contains("Conv2d_1a_3x3.conv.weight", e.Message);
        Assert.Throws<PagSharpException>(() => InceptionV3.Load(dir.File("absent.pth")));
    }

    [Fact]
    public void FeatureNetworkResizesGrayscaleTo299AndGivesPool3AndLogits()
    {
        using var net = new InceptionFeatureNetwork(new InceptionV3());
        using var g = new Generator(12);
        using var images = rand([1, 1, 32, 32], generator: g) * 2 - 1;
        var clock = Stopwatch.StartNew();
        using var set = FeatureExtractor.Extract(net, images);
        Assert.Equal(new long[] { 1, 2048 }, set.Features.shape);
        Assert.Equal(new long[] { 1, 1008 }, set.Probabilities.shape);
        Assert.True(set.Features.isfinite().all().item<bool>());
        Assert.Equal(1.0, set.Probabilities.sum().item<double>(), 1e-9);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), $"one 299×299 forward took {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Throws<PagSharpException>(() => net.Model.Features(zeros(1, 3, 64, 64)));
    }
}
