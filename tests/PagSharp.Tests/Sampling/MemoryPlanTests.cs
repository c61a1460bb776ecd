using PagSharp.Guidance;
using PagSharp.Models.Adm;
using PagSharp.Pipelines;
using PagSharp.Tests.Guidance;
using PagSharp.Tests.Models;

namespace PagSharp.Tests.Sampling;

/// <summary>The memory check before a run: the activation estimate, refusal with the numbers, and batch splitting.</summary>
public sealed class MemoryPlanTests
{
    [Fact]
    public void TheEstimateCountsSkipsWidestInputAndMaps()
    {
        // Tiny config: image 16, 32 channels, mult 1,2, one ResBlock per level, attention at 8×8 (heads of 16 channels).
        var cfg = TestModels.TinyConfig(classConditional: false);
        // Skips: conv_in 32·16² + level 0: 32·16² + down: 32·8² + level 1: 64·8² = 8192 + 8192 + 2048 + 4096.
        double skips = 8192 + 8192 + 2048 + 4096;
        // Widest decoder-like input: (64 + 32)·8² = 6144 vs (32 + 32)·16² = 16384 → 16384.
        double widest = 16384;
        // Largest map: 4 heads · 64² tokens² at 8×8.
        double map = 4 * 64.0 * 64;
        Assert.Equal(4.0 * 3 * (skips + 4 * widest), AdmMemory.ActivationBytes(cfg, 3, attentionMaps: false));
        Assert.Equal(4.0 * 3 * (skips + 4 * widest + 2 * map), AdmMemory.ActivationBytes(cfg, 3, attentionMaps: true));
    }

    [Fact]
    public void ARunThatCannotFitOneSampleIsRefusedWithTheNumbers()
    {
        using var net = TestModels.Tiny(classConditional: false);
        var options = new SamplingOptions { BatchSize = 8, MemoryLimitBytes = 10_000 };
        var e = Assert.Throws<PagSharpException>(() => Sampler.PlanMemory(net, options));
        Assert.Contains("for a single sample", e.Message);
        Assert.Contains("only 0 MB is available", e.Message);
        Assert.Throws<PagSharpException>(() => Sampler.Validate(net, options));
    }

    [Fact]
    public void ABatchThatDoesNotFitRunsInSmallerForwardBatches_WithTheSameSamples()
    {
        using var net = TestModels.Tiny(classConditional: false);
        var g = new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = [net.AttentionLayers[0].Name] };
        var options = new SamplingOptions { Steps = 3, BatchSize = 4, Guidance = g };
        double perSample = Sampler.MemorySlack * AdmMemory.ActivationBytes(net.Config, 2, false);
        var (fit, _, _) = Sampler.PlanMemory(net, options with { MemoryLimitBytes = (long)(2.5 * perSample) });
        Assert.Equal(2, fit);
        Assert.Equal(4, Sampler.PlanMemory(net, options with { MemoryLimitBytes = (long)(10 * perSample) }).ForwardBatch);
        using var whole = Sampler.Sample(net, options, [0, 1, 2, 3]);
        using var split = Sampler.Sample(net, options with { MemoryLimitBytes = (long)(2.5 * perSample) }, [0, 1, 2, 3]);
        Close.Assert(whole, split, 1e-3, "split forward batches vs one batch");
    }
}

/// <summary>The Stable Diffusion U-Net's estimate.</summary>
public sealed class SdMemoryTests
{
    [Fact]
    public void TheEstimateCountsSkipsWidestInputAndMaps()
    {
        // Two levels of 32 and 64 channels, one layer each, attention in the first, 8×8 latents.
        var cfg = new PagSharp.Models.Sd.SdUNetConfig
        {
            BlockOutChannels = [32, 64], LayersPerBlock = [1, 1], DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"],
            UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"], AttentionHeads = [2, 2], CrossAttentionDim = [16, 16], TransformerLayersPerBlock = [1, 1],
        };
        // Skips: conv_in 32·64 + level 0: 32·64 + down 32·16 + level 1: 64·16; widest: (32 + 32)·64 = 4096 vs (64 + 32)·16.
        double skips = 2048 + 2048 + 512 + 1024, widest = 4096, map = 2 * 64.0 * 64;
        Assert.Equal(4.0 * 2 * (skips + 4 * widest), PagSharp.Models.Sd.SdMemory.ActivationBytes(cfg, 8, 8, 2, false));
        Assert.Equal(4.0 * 2 * (skips + 4 * widest + 2 * map), PagSharp.Models.Sd.SdMemory.ActivationBytes(cfg, 8, 8, 2, true));
    }
}
