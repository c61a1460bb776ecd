using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// SDXL ControlNets against diffusers v0.37.1 (tests/fixtures/sdxl_controlnet_tiny, README section 16): the ControlNet's
/// residuals with added conditioning, and StableDiffusionXLControlNetPAGPipeline / …Img2ImgPipeline runs through the CLI.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class SdxlControlNetParityTests : IDisposable
{
    private readonly TempDir _dir = new();
    private static string Cases => Fixtures.Path("sdxl_controlnet_tiny", "cases.safetensors");
    private static string ControlNet => Fixtures.Path("sdxl_controlnet_tiny", "controlnet");
    private static readonly Lazy<Dictionary<string, Tensor>> T = new(() => SafeTensors.Load(Cases));
    public void Dispose() => _dir.Dispose();

    [Fact]
    public void ControlNet_WithAddedConditioning_MatchesDiffusers()
    {
        using var net = SdControlNet.Load(ControlNet);
        Assert.True(net.Config.UsesTextTime);
        var t = T.Value;
        using var _ = no_grad();
        using var r = net.Forward(t["cn_in.x"], t["cn_in.t"], t["run_in.prompt_embeds"], t["cn_in.control_image"], 1.0, false,
            new SdAddedConditioning(t["run_in.pooled_prompt_embeds"], t["cn_in.time_ids"]));
        for (int i = 0; i < r.Down.Count; i++) SdFixtures.AssertRelative(t[$"cn.down_{i}"], r.Down[i], 1e-5, $"down residual {i}");
        SdFixtures.AssertRelative(t["cn.mid"], r.Mid, 1e-5, "mid residual");
    }

    private Tensor Run(string command, string name, params string[] extra)
    {
        string f = _dir.File(name + ".npy");
        var (exit, log) = Pag.Run([.. new[] { command, "--model", SdxlParityTests.Dir, "--controlnet", ControlNet, "--control-image", Cases + ":cn_in.control_image",
            "--prompt-embeds", Cases + ":run_in.prompt_embeds", "--pooled-prompt-embeds", Cases + ":run_in.pooled_prompt_embeds",
            "--negative-prompt-embeds", Cases + ":run_in.negative_prompt_embeds", "--negative-pooled-prompt-embeds", Cases + ":run_in.negative_pooled_prompt_embeds",
            "--steps", "5", "--seed", "11", "--count", "2", "--pag-layers", "mid", "--output-type", "latent", "--save-tensor", f, "--output", _dir.File("o_" + name) }, .. extra]);
        Assert.True(exit == 0, log);
        return Npy.Load(f);
    }

    [Theory]
    [InlineData("t2i_cfg5_pag3_mid_cn1", "5", "3", "1")]
    [InlineData("t2i_cfg5_pag3_mid_cn05", "5", "3", "0.5")]
    [InlineData("t2i_pag3_mid_cn1", "1", "3", "1")]
    [InlineData("t2i_cfg5_cn1", "5", "0", "1")]
    public void Txt2Img_MatchesStableDiffusionXLControlNetPAGPipeline(string run, string cfg, string pag, string scale)
    {
        using var actual = Run("txt2img", run, "--init-noise", Cases + ":run_in.latents", "--guidance-scale", cfg, "--pag-scale", pag, "--controlnet-scale", scale);
        SdFixtures.AssertRelative(T.Value[run + ".final"], actual, 1e-4, "pag txt2img SDXL ControlNet " + run);
    }

    [Fact]
    public void Txt2Img_ControlGuidanceWindow_MatchesDiffusers()
    {
        using var actual = Run("txt2img", "window", "--init-noise", Cases + ":run_in.latents", "--guidance-scale", "5", "--pag-scale", "3",
            "--control-guidance-start", "0.2", "--control-guidance-end", "0.6");
        SdFixtures.AssertRelative(T.Value["t2i_cfg5_pag3_mid_cn1_guide02_06.final"], actual, 1e-4, "control guidance 0.2..0.6");
    }

    [Fact]
    public void Img2Img_MatchesStableDiffusionXLControlNetPAGImg2ImgPipeline()
    {
        using var actual = Run("img2img", "i2i", "--image", Cases + ":edit_in.image_latents", "--strength", "0.6", "--guidance-scale", "5", "--pag-scale", "3",
            "--controlnet-scale", "1");
        SdFixtures.AssertRelative(T.Value["i2i_lat_s06_cfg5_pag3_mid_cn1.final"], actual, 1e-4, "pag img2img SDXL ControlNet");
    }

    [Fact]
    public void Txt2Img_FromTheSeeds_MatchesDiffusersDraws()
    {
        using var actual = Run("txt2img", "gen", "--guidance-scale", "5", "--pag-scale", "3", "--width", "64", "--height", "64");
        SdFixtures.AssertRelative(T.Value["t2i_cfg5_pag3_mid_cn1_gen.final"], actual, 1e-4, "latents drawn from seeds 11, 12");
    }
}
