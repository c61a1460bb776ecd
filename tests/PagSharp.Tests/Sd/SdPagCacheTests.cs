using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Pipelines;
using PagSharp.Attention;
using PagSharp.IO;
using PagSharp.Tests.Cli;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Sampling;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>GuidanceSettings.PagCacheInterval (an approximation): the pipeline against the loop written out by hand.</summary>
[Collection(PagSharp.Tests.Cli.CliCollection.Name)]
public class SdPagCacheTests
{
    [Theory]
    [InlineData(1.0)] // PAG alone
    [InlineData(5.0)] // CFG + PAG
    public void CacheInterval2_ReusesTheDirectionOfTheStepBefore(double w)
    {
        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            var layers = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers);
            var guidance = new GuidanceSettings { GuidanceScale = w, PagScale = SdFixtures.Pag(3), PagLayers = layers, PagCacheInterval = 2 };
            DdimScheduler Scheduler() => new(SdPipelineParityTests.FixtureScheduler(), 3);
            using var cached = StableDiffusionPipeline.Denoise(unet, Scheduler(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"], guidance);
            using var exact = StableDiffusionPipeline.Denoise(unet, Scheduler(), f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"],
                guidance with { PagCacheInterval = 1 });

            // By hand, one branch per U-Net call: steps 0 and 2 compute c − p, step 1 reuses the direction of step 0.
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var sched = Scheduler();
            var x = f["latents_T"] * sched.InitNoiseSigma;
            Tensor direction = null!;
            for (int i = 0; i < 3; i++)
            {
                var t = tensor(sched.Timesteps[i]);
                var input = sched.ScaleModelInput(x, i);
                var c = unet.Forward(input, t, f["prompt_embeds"]);
                if (i != 1)
                    direction = c - unet.Forward(input, t, f["prompt_embeds"], PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance));
                var basis = c;
                if (w > 1)
                {
                    var u = unet.Forward(input, t, f["negative_prompt_embeds"]);
                    basis = u + (float)w * (c - u);
                }
                var guided = basis + 3f * direction;
                x = sched.Step(new ModelOutput(guided, null), i, x, null);
            }
            SdFixtures.AssertRelative(x, cached, 1e-4, "cached pipeline vs the loop by hand");
            Close.AssertDiffer(exact, cached, 1e-4, "cache interval 2 vs exact PAG");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void Txt2Img_PagCacheInterval_EqualsTheLibrary_AndIsRecorded()
    {
        using var sd = new TinySdFolder();
        string sampling = SdFixtures.Unet("sampling.safetensors"), outDir = sd.Dir.File("out"), saved = sd.Dir.File("latents.npy");
        var (exit, log) = Pag.Run("txt2img", "--model", sd.Root, "--prompt-embeds", sampling + ":prompt_embeds",
            "--negative-prompt-embeds", sampling + ":negative_prompt_embeds", "--guidance-scale", "5", "--pag-scale", "3", "--steps", "3",
            "--count", "1", "--output-type", "latent", "--init-noise", sampling + ":latents_T", "--pag-cache-interval", "2",
            "--save-tensor", saved, "--output", outDir);
        Assert.True(exit == 0, log);
        Assert.Contains("\"pag_cache_interval\": 2", File.ReadAllText(Path.Combine(outDir, "run.json")));

        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(sampling);
        try
        {
            var guidance = new GuidanceSettings
            {
                GuidanceScale = 5, PagScale = SdFixtures.Pag(3), PagLayers = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers), PagCacheInterval = 2,
            };
            using var expected = StableDiffusionPipeline.Denoise(unet, new DdimScheduler(SdPipelineParityTests.FixtureScheduler(), 3),
                f["latents_T"], f["prompt_embeds"], f["negative_prompt_embeds"], guidance);
            using var actual = Npy.Load(saved);
            SdFixtures.AssertRelative(expected, actual, 1e-5, "pag txt2img --pag-cache-interval 2 vs the library");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void CacheInterval0_IsRejected()
    {
        var ex = Assert.Throws<PagSharpException>(() => new GuidanceSettings { PagCacheInterval = 0 }.Validate());
        Assert.Contains("cache interval", ex.Message);
    }
}
