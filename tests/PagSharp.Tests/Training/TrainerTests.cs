using PagSharp.Models.Adm;
using PagSharp.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Training;

public class TrainerTests
{
    private static readonly AdmConfig Tiny = new()
    {
        ImageSize = 8, InChannels = 1, NumChannels = 32, NumResBlocks = 1, ChannelMult = "1,2", AttentionResolutions = "4",
        NumHeadChannels = 32, ResblockUpdown = true, LearnSigma = true, NumClasses = 3, NullClass = 2, NoiseSchedule = "cosine",
    };

    private static (Tensor Images, Tensor Labels) Data()
    {
        using var g = new Generator(5);
        var images = rand(new long[] { 20, 1, 8, 8 }, generator: g) * 2 - 1;
        var labels = randint(0, 2, new long[] { 20 }, generator: g, dtype: ScalarType.Int64);
        return (images, labels);
    }

    private static TrainOptions Options => new() { Model = Tiny, BatchSize = 8, LearningRate = 1e-3, Seed = 3, EmaRate = 0.9 };

    [Fact]
    public void OneStepReducesTheLossOnAFixedBatch()
    {
        var (images, labels) = Data();
        using var trainer = new Trainer(Options, images, labels);
        using var g = new Generator(9);
        var x0 = images[..8];
        var y = labels[..8];
        var t = randint(0, 1000, new long[] { 8 }, generator: g, dtype: ScalarType.Int64);
        var noise = randn(new long[] { 8, 1, 8, 8 }, generator: g);
        double before;
        using (no_grad()) before = trainer.ComputeLoss(x0, y, t, noise).Loss.item<float>();
        trainer.TrainOn(x0, y, t, noise);
        double after;
        using (no_grad()) after = trainer.ComputeLoss(x0, y, t, noise).Loss.item<float>();
        Assert.True(after < before, $"loss did not decrease: {before} → {after}");
    }

    [Fact]
    public void ResumeFromCheckpointContinuesExactly()
    {
        var (images, labels) = Data();
        using var dir = new TempDir();
        // Tests run in parallel and share torch's global generator, so initial weights are aligned explicitly.
        using var straight = new Trainer(Options, images, labels);
        using var first = new Trainer(Options, images, labels);
        using (no_grad())
        {
            foreach (var (k, v) in first.Model.state_dict()) v.copy_(straight.Model.state_dict()[k]);
            foreach (var (k, v) in first.Ema.Shadow) v.copy_(straight.Ema.Shadow[k]);
        }
        for (int i = 0; i < 3; i++) straight.TrainStep();
        first.TrainStep();
        first.TrainStep();
        first.SaveCheckpoint(dir.Path);

        using var resumed = new Trainer(Options, images, labels);
        resumed.LoadCheckpoint(dir.Path);
        Assert.Equal(2, resumed.Step);
        resumed.TrainStep();

        var a = straight.Model.state_dict();
        var b = resumed.Model.state_dict();
        foreach (var (k, v) in a) Assert.True(v.equal(b[k]).all().item<bool>(), $"parameter {k} differs after resume");
        foreach (var (k, v) in straight.Ema.Shadow) Assert.True(v.equal(resumed.Ema.Shadow[k]).all().item<bool>(), $"EMA {k} differs after resume");
        foreach (var (k, v) in straight.Optimizer.ExpAvgSq) Assert.True(v.equal(resumed.Optimizer.ExpAvgSq[k]).all().item<bool>(), $"Adam state {k} differs after resume");
    }

    [Fact]
    public void ResumeWithADifferentConfigIsRefused()
    {
        var (images, labels) = Data();
        using var dir = new TempDir();
        using (var first = new Trainer(Options, images, labels)) first.SaveCheckpoint(dir.Path);
        using var other = new Trainer(Options with { Model = Tiny with { Dropout = 0.1 } }, images, labels);
        var e = Assert.Throws<PagSharpException>(() => other.LoadCheckpoint(dir.Path));
        Assert.Contains("different model config", e.Message);
    }

    [Fact]
    public void LabelsOutsideTheModelAreRejected()
    {
        var (images, _) = Data();
        var bad = full(20, 2L, dtype: ScalarType.Int64); // 2 is the null class
        Assert.Throws<PagSharpException>(() => new Trainer(Options, images, bad));
    }
}
