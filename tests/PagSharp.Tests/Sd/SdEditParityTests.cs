using PagSharp.IO;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Parity with diffusers v0.37.1 through the CLI: StableDiffusionPAGImg2ImgPipeline and StableDiffusionPAGInpaintPipeline
/// (9-channel and 4-channel UNets) on tests/fixtures/sd_edit_tiny, and the SDXL pipelines on tests/fixtures/sdxl_tiny
/// (README section 12). Every run uses per-image generators seeded 11 and 12, as the fixtures: --seed 11 --count 2.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class SdEditParityTests : IDisposable
{
    private readonly TempDir _dir = new();
    private static string Sd(string name) => Fixtures.Path("sd_edit_tiny", name);
    private static string SdCases => Sd("cases.safetensors");
    private static string XlCases => Fixtures.Path("sdxl_tiny", "cases.safetensors");

    public void Dispose() => _dir.Dispose();

    private Tensor Run(string command, string folder, string cases, string key, params string[] extra)
    {
        string tensor = _dir.File(key + ".npy");
        var args = new List<string>
        {
            command, "--model", folder, "--prompt-embeds", cases + ":run_in.prompt_embeds", "--steps", "5", "--pag-scale", "3", "--pag-layers", "mid",
            "--seed", "11", "--count", "2", "--save-tensor", tensor, "--output", _dir.File("out_" + key),
        };
        args.AddRange(extra);
        if (!extra.Contains("--output-type") ) args.AddRange(["--output-type", "latent"]);
        var (exit, log) = Pag.Run(args.ToArray());
        Assert.True(exit == 0, log);
        return Npy.Load(tensor);
    }

    private static string[] Cfg(string cases) => ["--guidance-scale", "5", "--negative-prompt-embeds", cases + ":run_in.negative_prompt_embeds"];

    [Theory]
    [InlineData("i2i_lat_s06", "edit_in.image_latents", "0.6", "ddim")]
    [InlineData("i2i_lat_s03", "edit_in.image_latents", "0.3", "ddim")]
    [InlineData("i2i_rgb_s06", "edit_in.image_rgb", "0.6", "ddim")]
    [InlineData("i2i_lat_s06_euler", "edit_in.image_latents", "0.6", "euler")]
    public void SdImg2Img_MatchesDiffusers(string run, string image, string strength, string scheduler)
    {
        using var actual = Run("img2img", Sd("img2img"), SdCases, run, [.. Cfg(SdCases), "--image", SdCases + ":" + image, "--strength", strength, "--scheduler", scheduler]);
        using var expected = SafeTensors.LoadTensor(SdCases, run + ".final");
        SdFixtures.AssertRelative(expected, actual, 1e-4, "pag img2img " + run);
    }

    [Fact]
    public void SdImg2Img_PagWithoutCfg_MatchesDiffusers()
    {
        using var actual = Run("img2img", Sd("img2img"), SdCases, "pag_only", "--guidance-scale", "1", "--image", SdCases + ":edit_in.image_latents", "--strength", "0.6", "--scheduler", "ddim");
        using var expected = SafeTensors.LoadTensor(SdCases, "i2i_lat_s06_pag3_only.final");
        SdFixtures.AssertRelative(expected, actual, 1e-4, "pag img2img, PAG only");
    }

    [Theory]
    [InlineData("inp9_s10", "inpaint9", "1.0")]
    [InlineData("inp9_s07", "inpaint9", "0.7")]
    [InlineData("inp4_s10", "img2img", "1.0")]
    [InlineData("inp4_s07", "img2img", "0.7")]
    public void SdInpaint_NineAndFourChannelUNets_MatchDiffusers(string run, string folder, string strength)
    {
        using var actual = Run("inpaint", Sd(folder), SdCases, run, [.. Cfg(SdCases), "--image", SdCases + ":edit_in.image_rgb",
            "--mask-image", SdCases + ":edit_in.mask", "--strength", strength, "--scheduler", "ddim"]);
        using var expected = SafeTensors.LoadTensor(SdCases, run + ".final");
        SdFixtures.AssertRelative(expected, actual, 1e-4, "pag inpaint " + run);
    }

    [Fact]
    public void SdInpaint_DecodedImages_MatchDiffusers()
    {
        using var actual = Run("inpaint", Sd("inpaint9"), SdCases, "inp9_pt", [.. Cfg(SdCases), "--image", SdCases + ":edit_in.image_rgb",
            "--mask-image", SdCases + ":edit_in.mask", "--strength", "1", "--scheduler", "ddim", "--output-type", "pil"]);
        using var expected = SafeTensors.LoadTensor(SdCases, "inp9_s10_pt.image");
        SdFixtures.AssertRelative(expected, actual, 1e-4, "pag inpaint decoded");
        Assert.True(File.Exists(Path.Combine(_dir.File("out_inp9_pt"), "grid.png")));
    }

    private static string[] XlEmbeds() =>
        [.. Cfg(XlCases), "--pooled-prompt-embeds", XlCases + ":run_in.pooled_prompt_embeds",
         "--negative-pooled-prompt-embeds", XlCases + ":run_in.negative_pooled_prompt_embeds"];

    [Fact]
    public void SdxlTxt2Img_ThroughTheCli_MatchesDiffusers()
    {
        using var actual = Run("txt2img", SdxlParityTests.Dir, XlCases, "xl_t2i", [.. XlEmbeds(), "--init-noise", XlCases + ":run_in.latents", "--width", "64", "--height", "64"]);
        SdFixtures.AssertRelative(SdxlParityTests.Get("t2i_euler_cfg5_pag3_mid.final"), actual, 1e-4, "pag txt2img SDXL");
        string runJson = File.ReadAllText(Path.Combine(_dir.File("out_xl_t2i"), "run.json"));
        Assert.Contains("\"force_zeros_for_empty_prompt\": true", runJson);
    }

    [Fact]
    public void SdxlTxt2Img_DenoisingEnd_ThroughTheCli_MatchesDiffusers()
    {
        using var actual = Run("txt2img", SdxlParityTests.Dir, XlCases, "xl_t2i_end", [.. XlEmbeds(), "--init-noise", XlCases + ":run_in.latents", "--denoising-end", "0.5"]);
        SdFixtures.AssertRelative(SdxlParityTests.Get("t2i_euler_cfg5_pag3_mid_end05.final"), actual, 1e-4, "pag txt2img SDXL --denoising-end");
    }

    [Fact]
    public void SdxlImg2Img_AndInpaint_ThroughTheCli_MatchDiffusers()
    {
        using (var actual = Run("img2img", SdxlParityTests.Dir, XlCases, "xl_i2i", [.. XlEmbeds(), "--image", XlCases + ":edit_in.image_rgb", "--strength", "0.6"]))
            SdFixtures.AssertRelative(SdxlParityTests.Get("i2i_rgb_s06.final"), actual, 1e-4, "pag img2img SDXL");
        using (var actual = Run("inpaint", SdxlParityTests.Dir, XlCases, "xl_inp", [.. XlEmbeds(), "--image", XlCases + ":edit_in.image_rgb",
                   "--mask-image", XlCases + ":edit_in.mask", "--strength", "0.7"]))
            SdFixtures.AssertRelative(SdxlParityTests.Get("inp_s07.final"), actual, 1e-4, "pag inpaint SDXL");
    }

    [Fact]
    public void SdxlDefaults_AreDiffusers()
    {
        // img2img without --strength runs diffusers' SDXL default 0.3: ⌊5·0.3⌋ = 1 step, as the fixture's s03 run.
        using var actual = Run("img2img", SdxlParityTests.Dir, XlCases, "xl_default", [.. XlEmbeds(), "--image", XlCases + ":edit_in.image_latents"]);
        SdFixtures.AssertRelative(SdxlParityTests.Get("i2i_lat_s03.final"), actual, 1e-4, "pag img2img SDXL default strength");
    }

    [Fact]
    public void SdxlForwardAndLayers_ThroughTheCli()
    {
        string output = _dir.File("fwd.npy");
        var (exit, log) = Pag.Run("forward", "--model", SdxlParityTests.Dir, "--input", XlCases + ":unet.x", "--timesteps", "500",
            "--encoder-hidden-states", XlCases + ":run_in.prompt_embeds", "--text-embeds", XlCases + ":run_in.pooled_prompt_embeds",
            "--time-ids", XlCases + ":unet.time_ids", "--perturb", "mid", "--output", output);
        Assert.True(exit == 0, log);
        using (var actual = Npy.Load(output)) SdFixtures.AssertRelative(SdxlParityTests.Get("unet.out_pag_mid_t500"), actual, 1e-5, "pag forward SDXL, PAG at mid");
        (exit, log) = Pag.Run("forward", "--model", SdxlParityTests.Dir, "--input", XlCases + ":unet.x", "--timesteps", "500",
            "--encoder-hidden-states", XlCases + ":run_in.prompt_embeds", "--output", _dir.File("fwd2.npy"));
        Assert.NotEqual(0, exit);
        Assert.Contains("this is an SDXL UNet: give --text-embeds", log);
        (exit, log) = Pag.Run("layers", "--model", SdxlParityTests.Dir);
        Assert.True(exit == 0, log);
        Assert.Contains("mid_block.attentions.0.transformer_blocks.1.attn1", log);
        Assert.Contains("12 self-attention layers", log);
    }
}
