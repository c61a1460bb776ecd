using PagSharp.Attention;
using PagSharp.Denoisers;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Imaging;
using PagSharp.Pipelines;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Self-Attention Guidance on a Stable Diffusion U-Net (the tiny fixture), as diffusers' StableDiffusionSAGPipeline
/// computes it: one guided step against the formulas written out here, and whole runs that SAG changes.
/// </summary>
public sealed class SdSagTests
{
    [Fact]
    public void OneStepMatchesTheSagFormulasWithCfg()
    {
        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var schedule = SdPipelineParityTests.FixtureScheduler();
            var x = f["latents_T"];
            var guidance = new GuidanceSettings { GuidanceScale = 5, Sag = new SagSettings { Scale = new ScaleSchedule.Constant(0.75), BlurSigma = 1, KernelSize = 9 } };
            using var model = new UNetDenoiser(unet, f["prompt_embeds"], f["negative_prompt_embeds"], x.shape);
            var denoiser = StableDiffusionPipeline.CreateDenoiser(model, guidance, schedule, x.shape);
            var sag = Assert.IsType<SagDenoiser>(denoiser);
            string mid = unet.AttentionLayers.First(l => l.Group == "middle").Name;
            Assert.Equal(mid, sag.Layer);
            const int t = 801;
            var got = denoiser.Predict(x, new StepContext(0, 5, t)).Output;

            // By hand: the unconditional branch's map at the mid block, x̂0 from it (not clipped), the masked blur,
            // re-noised with its ε, the unconditional prediction of that, and the combination.
            var tt = tensor((float)t);
            var plan = new PerturbationPlan().Capture(mid);
            var u = unet.Forward(x, tt, f["negative_prompt_embeds"], plan);
            var map = plan.TakeCaptured(mid);
            var c = unet.Forward(x, tt, f["prompt_embeds"]);
            double ab = DiffusersSchedule.AlphasCumprod(schedule)[t];
            var x0 = (x - Math.Sqrt(1 - ab) * u) / Math.Sqrt(ab);
            long tokens = map.shape[2], side = (long)Math.Sqrt(tokens);
            var received = map.mean(new long[] { 1 }).sum(1);
            var mask = nn.functional.interpolate((received > 1.0).to_type(ScalarType.Float32).reshape(1, 1, side, side),
                size: new[] { x.shape[2], x.shape[3] }, mode: InterpolationMode.Nearest);
            var x0Bar = GaussianBlur.Apply(x0, 9, 1.0) * mask + x0 * (1 - mask);
            var xBar = Math.Sqrt(ab) * x0Bar + Math.Sqrt(1 - ab) * u;
            var uBar = unet.Forward(xBar, tt, f["negative_prompt_embeds"]);
            var expected = u + 5 * (c - u) + 0.75 * (u - uBar);
            SdFixtures.AssertRelative(expected, got, 1e-4, "CFG + SAG on the SD U-Net");
            Close.AssertDiffer(u + 5 * (c - u), got, 1e-4, "SAG changed nothing");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void Txt2ImgSagScaleEqualsTheLibraryAndDiffersFromCfg()
    {
        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            var sagSettings = new SagSettings { Scale = new ScaleSchedule.Constant(0.75), BlurSigma = 1, KernelSize = 9 };
            DdimScheduler Scheduler() => new(SdPipelineParityTests.FixtureScheduler(), 3);
            using var withSag = StableDiffusionPipeline.Denoise(unet, Scheduler(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"],
                new GuidanceSettings { GuidanceScale = 5, Sag = sagSettings }, schedule: SdPipelineParityTests.FixtureScheduler());
            using var cfgOnly = StableDiffusionPipeline.Denoise(unet, Scheduler(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"],
                new GuidanceSettings { GuidanceScale = 5 }, schedule: SdPipelineParityTests.FixtureScheduler());
            Close.AssertDiffer(cfgOnly, withSag, 1e-4, "SAG vs CFG alone");
            Assert.True(withSag.isfinite().all().item<bool>());
        }
        finally { TensorAssert.DisposeAll(f); }
    }
}
