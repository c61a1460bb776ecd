using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Pipelines;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Since there is one guidance engine, Stable Diffusion runs get what ADM runs had: PAG and CFG intervals and linear
/// ramps. The pipeline against the loop written out by hand on the tiny SD UNet fixture (DDIM-5, t = 801 … 1).
/// </summary>
public sealed class SdScheduleTests
{
    [Fact]
    public void PagIntervalAndRampsMatchTheLoopWrittenOut()
    {
        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            var layers = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers);
            var guidance = new GuidanceSettings
            {
                GuidanceScale = 6, GuidanceSchedule = new ScaleSchedule.Linear(6, 2), GuidanceInterval = (900, 100),
                PagScale = new ScaleSchedule.Linear(4, 1), PagLayers = layers, PagInterval = (700, 300),
            };
            DdimScheduler Scheduler() => new(SdPipelineParityTests.FixtureScheduler(), 5);
            using var lib = StableDiffusionPipeline.Denoise(unet, Scheduler(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"], guidance);

            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var sched = Scheduler();
            var x = f["latents_T"] * sched.InitNoiseSigma;
            int pagSteps = 0, cfgSteps = 0;
            for (int i = 0; i < 5; i++)
            {
                float t = sched.Timesteps[i];
                double w = t <= 900 && t >= 100 ? 2 + (6 - 2) * t / 999.0 : 1;   // linear ramp from t = 999 to 0, inside its interval
                double s = t <= 700 && t >= 300 ? 1 + (4 - 1) * t / 999.0 : 0;
                var tt = tensor(t);
                var c = unet.Forward(x, tt, f["prompt_embeds"]);
                var guided = c;
                if (w > 1)
                {
                    var u = unet.Forward(x, tt, f["negative_prompt_embeds"]);
                    guided = u + w * (c - u);
                    cfgSteps++;
                }
                if (s != 0)
                {
                    guided = guided + s * (c - unet.Forward(x, tt, f["prompt_embeds"], PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance)));
                    pagSteps++;
                }
                x = sched.Step(new ModelOutput(guided, null), i, x, null);
            }
            Assert.Equal(2, pagSteps); // t = 601 and 401
            Assert.Equal(4, cfgSteps); // all but t = 1
            SdFixtures.AssertRelative(x, lib, 1e-4, "intervals and ramps: pipeline vs the loop by hand");

            using var plain = StableDiffusionPipeline.Denoise(unet, Scheduler(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"],
                guidance with { PagInterval = null, GuidanceInterval = null, GuidanceSchedule = null, PagScale = new ScaleSchedule.Constant(4) });
            Close.AssertDiffer(plain, lib, 1e-3, "without intervals and ramps");
        }
        finally { TensorAssert.DisposeAll(f); }
    }
}
