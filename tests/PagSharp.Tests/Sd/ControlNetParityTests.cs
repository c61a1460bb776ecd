using PagSharp.Guidance;
using PagSharp.Denoisers;
using PagSharp.Pipelines;
using System.Text.Json;
using PagSharp.Attention;
using PagSharp.Diffusion.Schedulers;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Sampling;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>The tiny ControlNet and StableDiffusionControlNetPAGPipeline against diffusers (fixtures README §9).</summary>
public class ControlNetParityTests
{
    private const double Tol = 1e-4;

    internal static string Fx(string name) => Fixtures.Path("sd_controlnet_tiny", name);

    internal static string ControlNetConfigJson() => SdFixtures.ConfigProperty(Fx("config.json"), "controlnet_config_full");

    internal static SdControlNet LoadControlNet()
    {
        var net = new SdControlNet(ControlNetConfig.FromJson(ControlNetConfigJson(), "sd_controlnet_tiny/config.json"));
        net.eval();
        var w = SafeTensors.Load(Fx("controlnet_weights.safetensors"));
        try { StateDictLoader.LoadStrict(net, w, "controlnet_weights.safetensors"); }
        finally { TensorAssert.DisposeAll(w); }
        return net;
    }

    internal static SdUNet LoadUnet()
    {
        var net = new SdUNet(SdUNetConfig.FromJson(SdFixtures.ConfigProperty(Fx("config.json"), "unet_config_full"), "sd_controlnet_tiny/config.json"));
        net.eval();
        var w = SafeTensors.Load(Fx("unet_weights.safetensors"));
        try { StateDictLoader.LoadStrict(net, w, "unet_weights.safetensors"); }
        finally { TensorAssert.DisposeAll(w); }
        return net;
    }

    internal static SchedulerConfig Scheduler() =>
        SchedulerConfig.FromJson(SdFixtures.ConfigProperty(Fx("sampling.json"), "scheduler_config_effective"), "sampling.json");

    [Fact]
    public void Config_KeysAndParameters_MatchDiffusers()
    {
        using var net = LoadControlNet();
        var keys = JsonSerializer.Deserialize<string[]>(SdFixtures.ConfigProperty(Fx("config.json"), "controlnet_state_dict_keys"))!;
        Assert.Equal(keys.Order(), net.state_dict().Keys.Order());
        Assert.Equal(11838, net.parameters().Sum(p => p.numel()));
        Assert.Equal(2, net.Config.ConditioningFactor);
        Assert.Equal(new[] { 4, 4, 4, 4, 8, 8 }, net.Config.ResidualChannels);
    }

    [Fact]
    public void Forward_ReproducesControlNetAndUNetCases()
    {
        using var cn = LoadControlNet();
        using var unet = LoadUnet();
        var c = SdFixtures.Tensors(Fx("cases.safetensors"));
        try
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var x = c["x"];
            var ehs = c["encoder_hidden_states"];
            var cond = c["controlnet_cond"];
            var t = c["t"].reshape(Array.Empty<long>());
            foreach (var scale in new[] { "1.0", "0.5" })
            {
                using var r = cn.Forward(x, t, ehs, cond, double.Parse(scale, System.Globalization.CultureInfo.InvariantCulture));
                Assert.Equal(6, r.Down.Count);
                for (int i = 0; i < 6; i++) Close.Assert(c[$"cn_scale{scale}_down_{i}"], r.Down[i], Tol, $"scale {scale} down {i}");
                Close.Assert(c[$"cn_scale{scale}_mid"], r.Mid, Tol, $"scale {scale} mid");
            }
            using var res = new ControlNetResiduals(Enumerable.Range(0, 6).Select(i => c[$"cn_scale1.0_down_{i}"].clone()).ToList(), c["cn_scale1.0_mid"].clone());
            Close.Assert(c["unet_out_none"], unet.Forward(x, t, ehs), Tol, "unet_out_none");
            Close.Assert(c["unet_out_with_cn_scale1.0"], unet.Forward(x, t, ehs, null, res), Tol, "unet with residuals");
            var mid = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers);
            // diffusers' [org; ptb] batch with the residuals repeated.
            using var res2 = new ControlNetResiduals(res.Down.Select(d => cat(new[] { d, d }, 0)).ToList(), cat(new[] { res.Mid, res.Mid }, 0));
            var both = unet.Forward(cat(new[] { x, x }), t, cat(new[] { ehs, ehs }), PerturbationPlan.Perturb(mid, IdentityPerturbation.Instance, new long[] { 2, 3 }), res2);
            Close.Assert(c["unet_out_with_cn_scale1.0"], both.narrow(0, 0, 2), Tol, "unperturbed half");
            Close.Assert(c["unet_out_pag_mid_with_cn_scale1.0"], both.narrow(0, 2, 2), Tol, "perturbed half");
            // Shared prefix: residuals of the fed batch only, widened at the fork.
            var forked = unet.Forward(x, t, ehs, PerturbationPlan.Perturb(mid, IdentityPerturbation.Instance, new long[] { 2, 3 }, forkSource: new long[] { 0, 1 }), res);
            Close.Assert(c["unet_out_pag_mid_with_cn_scale1.0"], forked.narrow(0, 2, 2), Tol, "forked perturbed half");
            Close.AssertDiffer(c["unet_out_none"], c["unet_out_with_cn_scale1.0"], 100 * Tol, "with vs without ControlNet");
        }
        finally { TensorAssert.DisposeAll(c); }
    }

    public static TheoryData<string, double, double, string, double, bool, bool> Runs => new()
    {
        { "final_cfg6", 6, 0, "mid", 1.0, false, true },
        { "final_cfg6_pag3_mid", 6, 3, "mid", 1.0, false, true },
        { "final_cfg6_pag3_mid", 6, 3, "mid", 1.0, false, false },
        { "final_cfg6_pag3_all", 6, 3, "mid,up,down", 1.0, false, true },
        { "final_cfg6_pag3_all", 6, 3, "mid,up,down", 1.0, false, false },
        { "final_cfg6_pag3_mid_cn0.5", 6, 3, "mid", 0.5, false, true },
        { "final_uncond_none", 0, 0, "mid", 1.0, true, true },
        { "final_uncond_pag3_mid", 0, 3, "mid", 1.0, true, true },
        { "final_uncond_pag3_mid", 0, 3, "mid", 1.0, true, false },
    };

    [Theory]
    [MemberData(nameof(Runs))]
    public void Pipeline_ReproducesDiffusersFinals(string key, double g, double s, string layers, double cs, bool uncond, bool sharedPrefix)
    {
        using var unet = LoadUnet();
        using var cn = LoadControlNet();
        var f = SdFixtures.Tensors(Fx("sampling.safetensors"));
        try
        {
            var sched = new DdimScheduler(Scheduler(), 5);
            Assert.Equal(new[] { 800, 600, 400, 200, 0 }, sched.IntTimesteps);
            var guidance = new GuidanceSettings
            {
                GuidanceScale = g, PagScale = SdFixtures.Pag(s), SharedPrefix = sharedPrefix,
                PagLayers = s > 0 ? DiffusersLayerSpec.Resolve(layers, unet.AttentionLayers) : Array.Empty<string>(),
            };
            var control = new SdControl(cn, f["control_image"]) { ConditioningScale = cs };
            var traj = new List<Tensor>();
            using var final = StableDiffusionPipeline.Denoise(unet, sched, f["latents_T"],
                uncond ? f["negative_prompt_embeds"] : f["prompt_embeds"], uncond ? null : f["negative_prompt_embeds"], guidance,
                onStep: st => traj.Add(st.Sample.clone()), control: control);
            SdFixtures.AssertRelative(f[key], final, Tol, key);
            if (key == "final_cfg6_pag3_mid")
            {
                using var stacked = stack(traj.ToArray(), 0);
                SdFixtures.AssertRelative(f["traj_cfg6_pag3_mid"], stacked, Tol, "trajectory");
            }
            foreach (var x in traj) x.Dispose();
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void FirstStep_ControlNetRunsOnTheWholeBatch_PagPerturbsOnlyTheUNet()
    {
        using var unet = LoadUnet();
        using var cn = LoadControlNet();
        var f = SdFixtures.Tensors(Fx("sampling.safetensors"));
        try
        {
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var x = f["latents_T"];
            var img = f["control_image"];
            var t = tensor(800L);
            var mid = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers);
            var x3 = cat(new[] { x, x, x });
            var e3 = cat(new[] { f["negative_prompt_embeds"], f["prompt_embeds"], f["prompt_embeds"] });
            using var r = cn.Forward(x3, t, e3, cat(new[] { img, img, img }));
            Close.Assert(f["step0_cn_mid_cfg6_pag3_mid"], r.Mid, Tol, "step-0 ControlNet mid [uncond, cond, perturbed]");
            var outp = unet.Forward(x3, t, e3, PerturbationPlan.Perturb(mid, IdentityPerturbation.Instance, new long[] { 2 }), r);
            Close.Assert(f["step0_unet_out_cfg6_pag3_mid"], outp, Tol, "step-0 UNet output [uncond, cond, perturbed]");

            var x2 = cat(new[] { x, x });
            var e2 = cat(new[] { f["negative_prompt_embeds"], f["negative_prompt_embeds"] });
            using var r2 = cn.Forward(x2, t, e2, cat(new[] { img, img }));
            Close.Assert(f["step0_cn_mid_uncond_pag3_mid"], r2.Mid, Tol, "step-0 ControlNet mid, unconditional PAG");
            var out2 = unet.Forward(x2, t, e2, PerturbationPlan.Perturb(mid, IdentityPerturbation.Instance, new long[] { 1 }), r2);
            Close.Assert(f["step0_unet_out_uncond_pag3_mid"], out2, Tol, "step-0 UNet output, unconditional PAG");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void ControlGuidanceWindow_AndScaleZero_FollowDiffusers()
    {
        using var cn = LoadControlNet();
        var all = new SdControl(cn, zeros(1, 3, 8, 8));
        Assert.All(Enumerable.Range(0, 5), i => Assert.Equal(1f, all.Keep(i, 5)));
        var window = all with { GuidanceStart = 0.2, GuidanceEnd = 0.6 };
        Assert.Equal(new[] { 0f, 1f, 1f, 0f, 0f }, Enumerable.Range(0, 5).Select(i => window.Keep(i, 5)));
        Assert.Throws<PagSharpException>(() => (all with { GuidanceStart = 0.7, GuidanceEnd = 0.3 }).Validate());
        Assert.Throws<PagSharpException>(() => (all with { ConditioningScale = double.NaN }).Validate());

        // A window that excludes every step, or scale 0, equals the run without a ControlNet.
        using var unet = LoadUnet();
        var f = SdFixtures.Tensors(Fx("sampling.safetensors"));
        try
        {
            var g = new GuidanceSettings { GuidanceScale = 6, PagScale = SdFixtures.Pag(0) };
            Tensor Run(SdControl? c) => StableDiffusionPipeline.Denoise(unet, new DdimScheduler(Scheduler(), 3), f["latents_T"],
                f["prompt_embeds"], f["negative_prompt_embeds"], g, control: c);
            using var none = Run(null);
            using var zero = Run(new SdControl(cn, f["control_image"]) { ConditioningScale = 0 });
            using var off = Run(new SdControl(cn, f["control_image"]) { GuidanceStart = 0.99, GuidanceEnd = 1 });
            using var on = Run(new SdControl(cn, f["control_image"]));
            Close.Assert(none, zero, 1e-6, "scale 0");
            Close.Assert(none, off, 1e-6, "no step in the window");
            Close.AssertDiffer(none, on, 1e-3, "with the ControlNet");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void Load_FolderFileAndFp16_AreStrictAndEquivalent()
    {
        using var dir = new TempDir();
        string full = Path.Combine(dir.Path, "full"), half = Path.Combine(dir.Path, "half");
        ControlNetCliTests.WriteControlNet(full, ControlNetConfigJson(), Fx("controlnet_weights.safetensors"));
        ControlNetCliTests.WriteControlNet(half, ControlNetConfigJson(), null);
        var w = SafeTensors.Load(Fx("controlnet_weights.safetensors"));
        try { SafeTensors.Save(Path.Combine(half, "diffusion_pytorch_model.fp16.safetensors"), w.ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.Float16))); }
        finally { TensorAssert.DisposeAll(w); }
        using var reference = LoadControlNet();
        using var fromFolder = SdControlNet.Load(full);
        using var fromFile = SdControlNet.Load(Path.Combine(full, "diffusion_pytorch_model.safetensors"));
        using var fromHalf = SdControlNet.Load(half);
        var c = SdFixtures.Tensors(Fx("cases.safetensors"));
        try
        {
            using var _ = no_grad();
            var t = c["t"].reshape(Array.Empty<long>());
            using var a = fromFolder.Forward(c["x"], t, c["encoder_hidden_states"], c["controlnet_cond"]);
            using var b = fromFile.Forward(c["x"], t, c["encoder_hidden_states"], c["controlnet_cond"]);
            using var h = fromHalf.Forward(c["x"], t, c["encoder_hidden_states"], c["controlnet_cond"]);
            Close.Assert(c["cn_scale1.0_mid"], a.Mid, Tol, "folder");
            Close.Assert(c["cn_scale1.0_mid"], b.Mid, Tol, "file");
            Assert.Equal(ScalarType.Float32, h.Mid.dtype);
            Close.Assert(c["cn_scale1.0_mid"], h.Mid, 2e-2, "fp16 weights, up-cast");
        }
        finally { TensorAssert.DisposeAll(c); }
    }

    [Fact]
    public void TensorSpec_ReadsASafetensorsFileWhoseHeaderLengthStartsWith0x80()
    {
        // sampling.safetensors has a 0x0580-byte header, so its first bytes (80 05) look like a pickle's PROTO 5.
        using var t = TensorSpec.Load(Fx("sampling.safetensors") + ":control_image");
        Assert.Equal(new long[] { 1, 3, 64, 64 }, t.shape);
    }

    [Fact]
    public void GuessMode_WithCfgAndPag_SharedPrefixEqualsFullBatch_AndDiffersFromNormalMode()
    {
        using var unet = LoadUnet();
        using var cn = LoadControlNet();
        var f = SdFixtures.Tensors(Fx("sampling.safetensors"));
        try
        {
            var layers = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers);
            Tensor Run(bool guess, bool shared) => StableDiffusionPipeline.Denoise(unet, new DdimScheduler(Scheduler(), 3), f["latents_T"],
                f["prompt_embeds"], f["negative_prompt_embeds"], new GuidanceSettings { GuidanceScale = 6, PagScale = SdFixtures.Pag(3), PagLayers = layers, SharedPrefix = shared },
                control: new SdControl(cn, f["control_image"]) { GuessMode = guess });
            using var a = Run(true, true);
            using var b = Run(true, false);
            using var normal = Run(false, true);
            SdFixtures.AssertRelative(a, b, 1e-5, "guess mode, shared prefix vs full batch");
            Close.AssertDiffer(a, normal, 1e-3, "guess mode vs normal");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void GuessMode_ScalesResidualsLogarithmically()
    {
        using var cn = LoadControlNet();
        var c = SdFixtures.Tensors(Fx("cases.safetensors"));
        try
        {
            using var _ = no_grad();
            var t = c["t"].reshape(Array.Empty<long>());
            using var r = cn.Forward(c["x"], t, c["encoder_hidden_states"], c["controlnet_cond"], 0.5, guessMode: true);
            // scales = 10^linspace(-1, 0, 7) · 0.5; down i gets scales[i], mid the last.
            for (int i = 0; i < 6; i++)
                Close.Assert(c[$"cn_scale1.0_down_{i}"] * (float)(Math.Pow(10, -1 + i / 6.0) * 0.5), r.Down[i], 1e-5, $"guess down {i}");
            Close.Assert(c["cn_scale0.5_mid"], r.Mid, 1e-5, "guess mid");
        }
        finally { TensorAssert.DisposeAll(c); }
    }
}
