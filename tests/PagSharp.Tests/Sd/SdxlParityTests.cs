using System.Text.Json.Nodes;
using PagSharp.Attention;
using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Parity with diffusers v0.37.1 on the tiny SDXL fixture (tests/fixtures/sdxl_tiny, README section 12): the SDXL
/// UNet with added conditioning (with and without PAG, refiner), both text encoders and SDXL's prompt encoding, the
/// StableDiffusionXLPAGPipeline (Euler and DDIM; CFG, PAG, CFG+PAG, adaptive scale, micro-conditioning, guidance
/// rescale, denoising_end, decoded images), img2img (two strengths, RGB input through the VAE, refiner with aesthetic
/// scores and the denoising_start hand-off) and inpainting with a 4-channel UNet.
/// </summary>
public sealed class SdxlParityTests
{
    public static string Dir => Fixtures.Path("sdxl_tiny");
    private static string Cases => Fixtures.Path("sdxl_tiny", "cases.safetensors");
    private static readonly Lazy<Dictionary<string, Tensor>> T = new(() => SafeTensors.Load(Cases));
    private static readonly Lazy<JsonObject> Json = new(() => JsonNode.Parse(File.ReadAllText(Fixtures.Path("sdxl_tiny", "cases.json")))!.AsObject());

    /// <summary>A stored tensor by key or alias.</summary>
    public static Tensor Get(string key)
    {
        var aliases = Json.Value["aliases"]!.AsObject();
        while (!T.Value.ContainsKey(key) && aliases[key] is { } a) key = a.GetValue<string>();
        return T.Value[key];
    }

    private static void Near(Tensor expected, Tensor actual, double rel, string what) => SdFixtures.AssertRelative(expected, actual, rel, what);

    private static SdUNet Unet(string folder = "unet")
    {
        string cfg = Path.Combine(Dir, folder, "config.json");
        return SdLoader.LoadUNet(SdUNetConfig.Load(cfg), SdLoader.FindWeights(Path.Combine(Dir, folder)), cfg);
    }

    [Fact]
    public void UNet_WithAddedConditioning_MatchesDiffusers()
    {
        using var unet = Unet();
        Assert.True(unet.Config.UsesTextTime);
        using var _ = no_grad();
        var x = Get("unet.x");
        var added = new SdAddedConditioning(Get("run_in.pooled_prompt_embeds"), Get("unet.time_ids"));
        using (var o = unet.Forward(x, tensor(500L), Get("run_in.prompt_embeds"), added: added)) Near(Get("unet.out_t500"), o, 1e-5, "t = 500");
        using (var o = unet.Forward(x, tensor(403.5f), Get("run_in.prompt_embeds"), added: added)) Near(Get("unet.out_t403_5"), o, 1e-5, "t = 403.5");
        var neg = new SdAddedConditioning(Get("run_in.negative_pooled_prompt_embeds"), Get("unet.time_ids"));
        using (var o = unet.Forward(x, tensor(500L), Get("run_in.negative_prompt_embeds"), added: neg)) Near(Get("unet.out_uncond_t500"), o, 1e-5, "uncond");
    }

    [Theory]
    [InlineData("mid", "unet.out_pag_mid_t500")]
    [InlineData("down_blocks.1", "unet.out_pag_down_blocks_1_t500")]
    public void UNet_WithPerturbedSelfAttention_MatchesDiffusers(string layers, string key)
    {
        using var unet = Unet();
        using var _ = no_grad();
        var plan = PerturbationPlan.Perturb(DiffusersLayerSpec.Resolve(layers, unet.AttentionLayers), new IdentityPerturbation());
        var added = new SdAddedConditioning(Get("run_in.pooled_prompt_embeds"), Get("unet.time_ids"));
        using var o = unet.Forward(Get("unet.x"), tensor(500L), Get("run_in.prompt_embeds"), plan, added: added);
        Near(Get(key), o, 1e-5, "PAG " + layers);
    }

    [Fact]
    public void RefinerUNet_WithFiveTimeIds_MatchesDiffusers()
    {
        using var unet = Unet("refiner_unet");
        using var _ = no_grad();
        var added = new SdAddedConditioning(Get("run_in.pooled_prompt_embeds"), Get("unet.time_ids_refiner"));
        using var o = unet.Forward(Get("unet.x"), tensor(500L), Get("run_in.prompt_embeds"), added: added);
        Near(Get("unet.refiner_out_t500"), o, 1e-5, "refiner");
        // The base UNet refuses five time ids with a message that says why.
        using var baseUnet = Unet();
        var ex = Assert.Throws<PagSharpException>(() => baseUnet.Forward(Get("unet.x"), tensor(500L), Get("run_in.prompt_embeds"), added: added));
        Assert.Contains("the refiner 5", ex.Message);
    }

    [Fact]
    public void TextEncoders_HiddenStatesAndPooledOutputs_MatchTransformers()
    {
        var folder = DiffusersFolder.Open(Dir);
        Assert.True(folder.IsXl);
        using var te1 = folder.LoadTextEncoder();
        using var te2 = folder.LoadTextEncoder2();
        using var _ = no_grad();
        var ids1 = Get("te.input_ids_1");
        var ids2 = Get("te.input_ids_2");
        var (h1, p1) = te1.EncodeWithPooled(ids1, 1);
        var (h2, p2) = te2.EncodeWithPooled(ids2, 1);
        Near(Get("te1.pooler_output"), p1, 1e-5, "CLIPTextModel pooler_output");
        Near(Get("te2.text_embeds"), p2, 1e-5, "CLIPTextModelWithProjection text_embeds");
        using (var last = te1.Encode(ids1)) Near(Get("te1.last_hidden_state"), last, 1e-5, "te1 last_hidden_state");
        // SDXL's encode_prompt: hidden_states[-2] of both, concatenated; clip_skip 1 → hidden_states[-3].
        using (var cat2 = cat(new[] { h1, h2 }, -1)) Near(Get("encode_prompt.prompt_embeds"), cat2, 1e-5, "encode_prompt prompt_embeds");
        var (s1, _) = te1.EncodeWithPooled(ids1, 2);
        var (s2, _) = te2.EncodeWithPooled(ids2, 2);
        using (var cat3 = cat(new[] { s1, s2 }, -1)) Near(Get("encode_prompt.prompt_embeds_clip_skip1"), cat3, 1e-5, "clip_skip 1");
        var (n1, _) = te1.EncodeWithPooled(Get("te.neg_input_ids_1"), 1);
        var (n2, np) = te2.EncodeWithPooled(Get("te.neg_input_ids_2"), 1);
        using (var neg = cat(new[] { n1, n2 }, -1)) Near(Get("encode_prompt.negative_prompt_embeds"), neg, 1e-5, "negative prompt_embeds");
        Near(Get("encode_prompt.negative_pooled_prompt_embeds"), np, 1e-5, "negative pooled");
    }

    /// <summary>The pipeline of a folder (default sdxl_tiny), without tokenizers, with the run's scheduler name.</summary>
    internal static StableDiffusion Load(string? dir = null) => StableDiffusion.Load(dir ?? Dir, new SdComponents(Vae: true, TextEncoder: false));

    internal static GuidanceSettings Guidance(double cfg, double pag, string layers, IReadOnlyList<AttentionLayerInfo> all, double adaptive = 0, double rescale = 0) => new()
    {
        GuidanceScale = cfg,
        GuidanceRescale = rescale,
        PagScale = pag <= 0 ? null : adaptive > 0 ? new ScaleSchedule.Adaptive(pag, adaptive) : new ScaleSchedule.Constant(pag),
        PagLayers = pag > 0 ? DiffusersLayerSpec.Resolve(layers, all, LayerMatch.Diffusers) : [],
    };

    internal static Tensor Txt2Img(StableDiffusion sd, string scheduler, GuidanceSettings g, SdXlMicroConditioning? micro = null, double? denoisingEnd = null)
    {
        using var source = new NoiseSource([11, 12]);
        var xl = sd.XlConditioning(Get("run_in.pooled_prompt_embeds"), g.UsesCfg ? Get("run_in.negative_pooled_prompt_embeds") : null, 64, 64, micro);
        var s = Schedulers.Create(scheduler, sd.Scheduler, 5);
        var (start, end) = StableDiffusion.EditSteps(s.Timesteps, 1000, 1.0, null, denoisingEnd);
        return sd.Denoise(scheduler, 5, 0, Get("run_in.latents"), source, Get("run_in.prompt_embeds"), g.UsesCfg ? Get("run_in.negative_prompt_embeds") : null,
            g, 0, xl: xl, range: new PagSharp.Sampling.LoopRange(start, end));
    }

    [Theory]
    [InlineData("t2i_euler_cfg5", "euler", 5, 0, "mid", 0.0, 0.0)]
    [InlineData("t2i_euler_cfg5_pag3_mid", "euler", 5, 3, "mid", 0.0, 0.0)]
    [InlineData("t2i_euler_pag3_mid", "euler", 1, 3, "mid", 0.0, 0.0)]
    [InlineData("t2i_euler_cfg5_pag3_down1_mid", "euler", 5, 3, "down_blocks.1,mid", 0.0, 0.0)]
    [InlineData("t2i_euler_cfg5_pag3_mid_adaptive0005", "euler", 5, 3, "mid", 0.005, 0.0)]
    [InlineData("t2i_ddim_cfg5_pag3_mid", "ddim", 5, 3, "mid", 0.0, 0.0)]
    [InlineData("t2i_euler_cfg5_pag3_mid_rescale07", "euler", 5, 3, "mid", 0.0, 0.7)]
    public void Txt2Img_MatchesStableDiffusionXLPAGPipeline(string run, string scheduler, double cfg, double pag, string layers, double adaptive, double rescale)
    {
        using var sd = Load();
        var g = Guidance(cfg, pag, layers, sd.Unet.AttentionLayers, adaptive, rescale);
        using var latents = Txt2Img(sd, scheduler, g);
        Near(Get(run + ".final"), latents, 1e-4, run);
    }

    [Fact]
    public void Txt2Img_DenoisingEnd_StopsWhereDiffusersStops()
    {
        using var sd = Load();
        using var latents = Txt2Img(sd, "euler", Guidance(5, 3, "mid", sd.Unet.AttentionLayers), denoisingEnd: 0.5);
        Near(Get("t2i_euler_cfg5_pag3_mid_end05.final"), latents, 1e-4, "denoising_end 0.5");
    }

    [Fact]
    public void Txt2Img_MicroConditioning_MatchesDiffusersForTheFirstSample()
    {
        // diffusers' text-to-image pipeline stacks the time ids as [neg; pos; pos] and repeats that block per image,
        // so with two images and distinct negative ids, image 1's rows are swapped (README section 12). Image 0's
        // rows are the intended ones; PagSharp gives every image its own rows.
        using var sd = Load();
        var micro = new SdXlMicroConditioning
        {
            OriginalSize = (96, 80), CropsCoordsTopLeft = (8, 4), TargetSize = (64, 64),
            NegativeOriginalSize = (32, 32), NegativeCropsCoordsTopLeft = (0, 0), NegativeTargetSize = (64, 64),
        };
        var (ids, negIds) = micro.TimeIds(64, 64, imageToImage: false, aesthetics: false);
        var stored = Get("t2i_euler_cfg5_pag3_mid_microcond.time_ids"); // [6, 6]: the UNet batch's rows
        Assert.True(stored[0].eq(negIds[0]).all().item<bool>(), "negative time ids");
        Assert.True(stored[2].eq(ids[0]).all().item<bool>(), "time ids");
        using var latents = Txt2Img(sd, "euler", Guidance(5, 3, "mid", sd.Unet.AttentionLayers), micro);
        Near(Get("t2i_euler_cfg5_pag3_mid_microcond.final")[0], latents[0], 1e-4, "micro-conditioning, image 0");
    }

    [Fact]
    public void Txt2Img_DecodedImages_MatchDiffusers()
    {
        using var sd = Load();
        using var latents = Txt2Img(sd, "euler", Guidance(5, 3, "mid", sd.Unet.AttentionLayers));
        using var images = sd.Decode(latents);
        Near(Get("t2i_euler_cfg5_pag3_mid_pt.image"), images, 1e-4, "decoded (VAE scaling_factor from the folder)");
    }

    private static Tensor Edit(StableDiffusion sd, SdImageEdit edit, GuidanceSettings g, bool refiner = false)
    {
        using var source = new NoiseSource([11, 12]);
        var xl = sd.XlConditioning(Get("run_in.pooled_prompt_embeds"), Get("run_in.negative_pooled_prompt_embeds"), 64, 64,
            new SdXlMicroConditioning(), imageToImage: true);
        return sd.Edit("euler", 5, 0, edit, source, Get("run_in.prompt_embeds"), Get("run_in.negative_prompt_embeds"), g, 0, xl);
    }

    [Theory]
    [InlineData("i2i_lat_s06", "edit_in.image_latents", 0.6)]
    [InlineData("i2i_lat_s03", "edit_in.image_latents", 0.3)]
    [InlineData("i2i_rgb_s06", "edit_in.image_rgb", 0.6)]
    public void Img2Img_MatchesStableDiffusionXLPAGImg2ImgPipeline(string run, string image, double strength)
    {
        using var sd = Load();
        using var latents = Edit(sd, new SdImageEdit { Image = Get(image), Strength = strength }, Guidance(5, 3, "mid", sd.Unet.AttentionLayers));
        Near(Get(run + ".final"), latents, 1e-4, run);
    }

    [Fact]
    public void Img2Img_ImageLatentsThroughTheVae_MatchDiffusers()
    {
        using var sd = Load();
        using var source = new NoiseSource([11, 12]);
        using var lat = sd.EncodeImages(Get("edit_in.image_rgb"), source);
        Near(Get("i2i_rgb_s06.image_latents"), lat, 1e-5, "VAE posterior sample × scaling_factor");
    }

    /// <summary>A copy of the fixture folder whose UNet is the refiner's and whose pipeline requires aesthetic scores.</summary>
    private sealed class RefinerFolder : IDisposable
    {
        public TempDir Dir { get; } = new();
        public RefinerFolder()
        {
            foreach (var sub in new[] { "vae", "text_encoder_2", "scheduler" }) CopyDir(Path.Combine(SdxlParityTests.Dir, sub), Path.Combine(Dir.Path, sub));
            CopyDir(Path.Combine(SdxlParityTests.Dir, "refiner_unet"), Path.Combine(Dir.Path, "unet"));
            var index = JsonNode.Parse(File.ReadAllText(Path.Combine(SdxlParityTests.Dir, "model_index.json")))!.AsObject();
            index["requires_aesthetics_score"] = true;
            index["text_encoder"] = new JsonArray(null, null);
            index["_class_name"] = "StableDiffusionXLImg2ImgPipeline";
            File.WriteAllText(Path.Combine(Dir.Path, "model_index.json"), index.ToJsonString());
        }
        private static void CopyDir(string from, string to)
        {
            Directory.CreateDirectory(to);
            foreach (var f in Directory.GetFiles(from)) File.Copy(f, Path.Combine(to, Path.GetFileName(f)));
        }
        public void Dispose() => Dir.Dispose();
    }

    [Fact]
    public void Refiner_WithAestheticScores_AndTheDenoisingStartHandOff_MatchDiffusers()
    {
        using var folder = new RefinerFolder();
        using var sd = Load(folder.Dir.Path);
        Assert.True(sd.Folder.RequiresAestheticsScore);
        var g = Guidance(5, 3, "mid", sd.Unet.AttentionLayers);
        using (var latents = Edit(sd, new SdImageEdit { Image = Get("edit_in.image_latents"), Strength = 0.6 }, g))
            Near(Get("i2i_refiner_lat_s06.final"), latents, 1e-4, "refiner img2img");
        using (var latents = Edit(sd, new SdImageEdit { Image = Get("t2i_euler_cfg5_pag3_mid_end05.final"), Strength = 0.3, DenoisingStart = 0.5 }, g))
            Near(Get("i2i_refiner_handoff_start05.final"), latents, 1e-4, "denoising_start hand-off");
    }

    [Theory]
    [InlineData("inp_s10", 1.0)]
    [InlineData("inp_s07", 0.7)]
    public void Inpaint_WithAFourChannelUNet_MatchesStableDiffusionXLPAGInpaintPipeline(string run, double strength)
    {
        using var sd = Load();
        using var latents = Edit(sd, new SdImageEdit { Image = Get("edit_in.image_rgb"), Mask = Get("edit_in.mask"), Strength = strength },
            Guidance(5, 3, "mid", sd.Unet.AttentionLayers));
        Near(Get(run + ".final"), latents, 1e-4, run);
    }
}
