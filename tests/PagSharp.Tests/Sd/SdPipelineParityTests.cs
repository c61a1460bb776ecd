using PagSharp.Guidance;
using PagSharp.Pipelines;
using PagSharp.Attention;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Sampling;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>5-step DDIM runs of diffusers' StableDiffusionPAGPipeline on the tiny UNet (fixtures README §5.2).</summary>
public class SdPipelineParityTests
{
    private const double Rel = 1e-4;

    internal static SchedulerConfig FixtureScheduler() =>
        SchedulerConfig.FromJson(SdFixtures.ConfigProperty(SdFixtures.Unet("sampling.json"), "scheduler_config_effective"), "sampling.json");

    [Fact]
    public void Ddim_TimestepsAndSchedule_MatchDiffusers()
    {
        var cfg = FixtureScheduler();
        var s = new DdimScheduler(cfg, 5);
        Assert.Equal(new[] { 801, 601, 401, 201, 1 }, s.IntTimesteps);
        var t = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try { Assert.Equal(new long[] { 801, 601, 401, 201, 1 }, t["timesteps"].data<long>().ToArray()); }
        finally { TensorAssert.DisposeAll(t); }
        // Other spacings, as diffusers computes them for T = 1000.
        Assert.Equal(new[] { 999, 799, 599, 399, 199 }, new DdimScheduler(cfg with { TimestepSpacing = "trailing" }, 5).IntTimesteps);
        Assert.Equal(new[] { 999, 749, 500, 250, 0 }, new DdimScheduler(cfg with { TimestepSpacing = "linspace" }, 5).IntTimesteps);
        Assert.Equal(new[] { 999, 966, 932, 899, 866 }, new DdimScheduler(cfg with { TimestepSpacing = "trailing" }, 30).IntTimesteps.Take(5));
    }

    public static TheoryData<string, double, double, string, bool> Runs => new()
    {
        { "final_none", 1, 0, "mid", true },
        { "final_cfg5", 5, 0, "mid", true },
        { "final_pag3_mid", 1, 3, "mid", true },
        { "final_pag3_mid", 1, 3, "mid", false },
        { "final_cfg5_pag3_mid", 5, 3, "mid", true },
        { "final_cfg5_pag3_mid", 5, 3, "mid", false },
        { "final_cfg5_pag3_down_blocks_1", 5, 3, "down_blocks.1", true },
    };

    [Theory]
    [MemberData(nameof(Runs))]
    public void Pipeline_ReproducesFinalLatents(string key, double g, double s, string layers, bool sharedPrefix)
    {
        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            var guidance = new GuidanceSettings
            {
                GuidanceScale = g, PagScale = SdFixtures.Pag(s), SharedPrefix = sharedPrefix,
                PagLayers = DiffusersLayerSpec.Resolve(layers, unet.AttentionLayers),
            };
            var traj = new List<Tensor>();
            using var final = StableDiffusionPipeline.Denoise(unet, new DdimScheduler(FixtureScheduler(), 5), f["latents_T"],
                f["prompt_embeds"], f["negative_prompt_embeds"], guidance, onStep: st => traj.Add(st.Sample.clone()));
            SdFixtures.AssertRelative(f[key], final, Rel, key);
            final.mul_(1); // the loop runs in inference mode, the result is an ordinary tensor: in-place ops work
            if (key == "final_cfg5_pag3_mid")
            {
                using var stacked = stack(traj.ToArray(), 0);
                SdFixtures.AssertRelative(f["traj_cfg5_pag3_mid"], stacked, Rel, "trajectory");
            }
            foreach (var x in traj) x.Dispose();
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void FirstStep_BatchedUNetOutput_MatchesDiffusersLayout()
    {
        using var unet = SdFixtures.LoadUnet();
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        try
        {
            using var _ = no_grad();
            var x = f["latents_T"];
            var layers = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers);
            using var t = tensor(801L);
            var outp = unet.Forward(cat(new[] { x, x, x }), t, cat(new[] { f["negative_prompt_embeds"], f["prompt_embeds"], f["prompt_embeds"] }),
                PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance, new long[] { 2 }));
            Close.Assert(f["step0_unet_out_cfg5_pag3_mid"], outp, 1e-4, "step-0 UNet output [uncond, cond, perturbed]");
            Close.AssertDiffer(f["final_cfg5_pag3_mid"], f["final_cfg5_pag3_down_blocks_1"], 1e-2, "the two layer sets");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void LayerSpec_AcceptsDiffusersAndPagSharpForms()
    {
        using var unet = SdFixtures.LoadUnet();
        var l = unet.AttentionLayers;
        const string mid = "mid_block.attentions.0.transformer_blocks.0.attn1";
        Assert.Equal(new[] { mid }, DiffusersLayerSpec.Resolve("mid", l));
        Assert.Equal(new[] { mid }, DiffusersLayerSpec.Resolve("middle", l));
        Assert.Equal(new[] { mid }, DiffusersLayerSpec.Resolve(mid, l));
        Assert.Equal(2, DiffusersLayerSpec.Resolve("down_blocks.1", l).Count);
        Assert.Equal(2, DiffusersLayerSpec.Resolve("input", l).Count);
        Assert.Equal(new[] { "up_blocks.0.attentions.1.transformer_blocks.0.attn1" }, DiffusersLayerSpec.Resolve("up_blocks.0.attentions.1", l));
        Assert.Equal(3, DiffusersLayerSpec.Resolve("up_blocks.*", l).Count);
        Assert.Equal(6, DiffusersLayerSpec.Resolve("down,mid,up", l).Count);
        Assert.Equal(6, DiffusersLayerSpec.Resolve("all", l).Count);
        Assert.Equal(6, DiffusersLayerSpec.Resolve("@16", l).Count);
        Assert.Equal(3, DiffusersLayerSpec.Resolve(@"attentions\.[12]\.transformer", l).Count);
        var e = Assert.Throws<PagSharpException>(() => DiffusersLayerSpec.Resolve("down.block_1", l));
        Assert.Contains("down.block_1", e.Message);
        Assert.Contains(mid, e.Message);
        Assert.Throws<PagSharpException>(() => DiffusersLayerSpec.Resolve("attn2", l));
    }

    [Fact]
    public void PagAdaptiveScale_AndRescale_FollowDiffusers()
    {
        var g = new GuidanceSettings { PagScale = new ScaleSchedule.Adaptive(3, 0.01), PagLayers = new[] { "x" } };
        Assert.Equal(3f - 0.01f * 199f, g.PagScaleAt(801, 1000)); // float32 arithmetic, as diffusers' _get_pag_scale
        Assert.Equal(0, g.PagScaleAt(1, 1000));
        Assert.Equal(3, (g with { PagScale = new ScaleSchedule.Constant(3) }).PagScaleAt(1, 1000));
        using var text = tensor(new float[] { 1, 2, 3, 4, 5, 6, 7, 8 }).reshape(2, 4);
        using var cfg = tensor(new float[] { 2, 4, 6, 8, 1, 1, 1, 2 }).reshape(2, 4);
        using var r = GuidedDenoiser.RescaleNoiseCfg(cfg, text, 0.7);
        // Per row: φ·x·std(c)/std(x) + (1 − φ)·x with unbiased std.
        double Std(double[] v) { double m = v.Average(); return Math.Sqrt(v.Sum(a => (a - m) * (a - m)) / (v.Length - 1)); }
        double f0 = Std(new double[] { 1, 2, 3, 4 }) / Std(new double[] { 2, 4, 6, 8 });
        Assert.Equal(0.7 * 2 * f0 + 0.3 * 2, r[0, 0].item<float>(), 5);
    }
}
