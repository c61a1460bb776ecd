using PagSharp.Guidance;
using PagSharp.Pipelines;
using PagSharp.Runtime;
using PagSharp.Tests.Guidance;
using PagSharp.Tests.Models;
using PagSharp.Tests.Sd;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Runtime;

/// <summary>Networks held in bfloat16: weights in bfloat16, input cast to it, output back to float32, results close to float32.</summary>
public sealed class ComputeTypeTests
{
    [Fact]
    public void AnAdmNetworkInBFloat16SamplesCloseToFloat32()
    {
        using var f32 = TestModels.Tiny(classConditional: false);
        using var bf16 = TestModels.Tiny(classConditional: false);
        ComputeType.Apply(bf16, ScalarType.BFloat16);
        Assert.All(bf16.parameters(), p => Assert.Equal(ScalarType.BFloat16, p.dtype));
        // One guided step (random tiny networks are too chaotic for whole trajectories to stay close in bfloat16).
        var g = new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = [f32.AttentionLayers[0].Name] };
        using var source = new PagSharp.Diffusion.NoiseSource([0L, 1L]);
        using var x = source.Randn(3, 16, 16);
        var step = new PagSharp.Denoisers.StepContext(0, 1, 500);
        using var da = new GuidedDenoiser(TestModels.Adm(f32, null), g, 1000);
        using var db = new GuidedDenoiser(TestModels.Adm(bf16, null), g, 1000);
        using var _ = no_grad();
        var a = da.Predict(x, step).Output;
        var b = db.Predict(x, step).Output;
        Assert.Equal(ScalarType.Float32, b.dtype);
        double scale = a.abs().max().item<float>(), diff = TestModels.MaxAbsDiff(a, b);
        Assert.True(diff > 0, "the bfloat16 network computed in float32");
        Assert.True(diff < 0.05 * scale, $"bfloat16 guided prediction differs by {diff} (max |x| {scale})");
        // The sampling loop runs with it and hands back float32.
        using var samples = Sampler.Sample(bf16, new SamplingOptions { Steps = 2, BatchSize = 2, Guidance = g }, [0, 1]);
        Assert.Equal(ScalarType.Float32, samples.dtype);
    }

    [Fact]
    public void ASdUNetInBFloat16DenoisesCloseToFloat32()
    {
        using var f32 = SdFixtures.LoadUnet();
        using var bf16 = SdFixtures.LoadUnet();
        ComputeType.Apply(bf16, ScalarType.BFloat16);
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            var g = new GuidanceSettings { GuidanceScale = 5, PagScale = new ScaleSchedule.Constant(3), PagLayers = PagSharp.Attention.DiffusersLayerSpec.Resolve("mid", f32.AttentionLayers) };
            PagSharp.Diffusion.Schedulers.DdimScheduler S() => new(SdPipelineParityTests.FixtureScheduler(), 3);
            using var a = StableDiffusionPipeline.Denoise(f32, S(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"], g);
            using var b = StableDiffusionPipeline.Denoise(bf16, S(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"], g);
            Assert.Equal(ScalarType.Float32, b.dtype);
            double scale = a.abs().max().item<float>(), diff = TestModels.MaxAbsDiff(a, b);
            Assert.True(diff > 0 && diff < 0.05 * scale, $"bfloat16 latents differ by {diff} (max |x| {scale})");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void UnknownTypesAreRefused() =>
        Assert.Contains("valid: float32, bfloat16, float16", Assert.Throws<PagSharpException>(() => ComputeType.Parse("int8")).Message);
}
