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

    [Fact]
    public void ResumeWithADifferentBatchSizeIsRefusedNamingIt()
    {
        var (images, labels) = Data();
        using var dir = new TempDir();
        using (var first = new Trainer(Options, images, labels)) first.SaveCheckpoint(dir.Path);
        using var other = new Trainer(Options with { BatchSize = 4 }, images, labels);
        var e = Assert.Throws<PagSharpException>(() => other.LoadCheckpoint(dir.Path));
        Assert.Contains("BatchSize 8 (now 4)", e.Message);
        // A longer run (more steps) is a valid resume.
        using var longer = new Trainer(Options with { Steps = 99999 }, images, labels);
        longer.LoadCheckpoint(dir.Path);
    }

    [Fact]
    public void BFloat16PrecisionKeepsFloat32MastersAndTracksTheFloat32Loss()
    {
        var (images, labels) = Data();
        using var f32 = new Trainer(Options, images, labels);
        using var bf16 = new Trainer(Options with { Precision = "bfloat16" }, images, labels);
        for (int i = 0; i < 3; i++) f32.TrainStep(); // the output layer starts at zero: move away from ε̂ = 0 first
        bf16.InitializeFrom(f32.Model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value), "the float32 trainer");
        using var g = new Generator(11);
        var x0 = images[..8];
        var y = labels[..8];
        var t = randint(0, 1000, new long[] { 8 }, generator: g, dtype: ScalarType.Int64);
        var noise = randn(new long[] { 8, 1, 8, 8 }, generator: g);
        double a, b;
        using (no_grad())
        {
            a = f32.ComputeLoss(x0, y, t, noise).Mse.item<float>();
            b = bf16.ComputeLoss(x0, y, t, noise).Mse.item<float>();
        }
        Assert.True(a != b, "the bfloat16 trainer computed in float32");
        Tolerance.Close(a, b, rel: 0.05, what: "bfloat16 vs float32 MSE on the same weights and batch");
        // Same weights, fresh optimizers: the (clipped) gradients of one step agree up to bfloat16 rounding.
        using var f32b = new Trainer(Options, images, labels);
        f32b.InitializeFrom(f32.Model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value), "the float32 trainer");
        bf16.TrainOn(x0, y, t, noise);
        f32b.TrainOn(x0, y, t, noise);
        foreach (var p in bf16.Model.parameters()) Assert.Equal(ScalarType.Float32, p.dtype);
        var gb = bf16.Model.named_parameters().ToDictionary(p => p.name, p => p.parameter.grad!);
        double num = 0, den = 0;
        foreach (var (n, p) in f32b.Model.named_parameters())
        {
            Assert.Equal(ScalarType.Float32, gb[n].dtype);
            num += (gb[n] - p.grad!).square().sum().item<float>();
            den += p.grad!.square().sum().item<float>();
        }
        Assert.True(den > 0 && Math.Sqrt(num / den) < 0.1, $"bfloat16 gradient differs from float32 by {Math.Sqrt(num / den):P1} (relative L2)");
    }

    [Fact]
    public void SnapshotsAreWrittenAtTheirStepsAndInitializeFromSetsModelAndEma()
    {
        var (images, labels) = Data();
        using var dir = new TempDir();
        using var trainer = new Trainer(Options with { Steps = 3, CheckpointEvery = 100, SnapshotSteps = [1, 3] }, images, labels);
        trainer.Run(dir.Path, null, null, CancellationToken.None);
        Assert.True(File.Exists(Trainer.SnapshotPath(dir.Path, 1)));
        Assert.False(File.Exists(Trainer.SnapshotPath(dir.Path, 2)));
        var snap = PagSharp.IO.SafeTensors.Load(Trainer.SnapshotPath(dir.Path, 3));
        foreach (var (k, v) in trainer.Ema.Shadow) Assert.True(v.equal(snap[k]).all().item<bool>(), $"snapshot {k}");

        using var fresh = new Trainer(Options, images, labels);
        fresh.InitializeFrom(snap, "snapshot");
        foreach (var (k, v) in fresh.Model.state_dict()) Assert.True(v.equal(snap[k]).all().item<bool>(), $"model {k}");
        foreach (var (k, v) in fresh.Ema.Shadow) Assert.True(v.equal(snap[k]).all().item<bool>(), $"EMA {k}");
        Assert.Throws<PagSharpException>(() => trainer.InitializeFrom(snap, "snapshot")); // not a new run
    }

    [Fact]
    public void UnknownPrecisionIsRejected()
    {
        var (images, labels) = Data();
        var e = Assert.Throws<PagSharpException>(() => new Trainer(Options with { Precision = "float16" }, images, labels));
        Assert.Contains("float32 or bfloat16", e.Message);
    }
}
