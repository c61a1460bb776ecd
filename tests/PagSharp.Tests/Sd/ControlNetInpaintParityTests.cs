using PagSharp.IO;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// <c>pag inpaint --controlnet</c> against diffusers v0.37.1's StableDiffusionControlNetPAGInpaintPipeline on
/// tests/fixtures/sd_controlnet_inpaint_tiny (README section 14): the sd_controlnet_tiny ControlNet with the 4-channel
/// sd_unet_tiny UNet and the 9-channel sd_edit_tiny/inpaint9 UNet, the sd_vae_tiny VAE, DDIM with steps_offset 0
/// (this pipeline does not force 1), CFG 5 + PAG 3 at "mid", per-image generators seeded 11 and 12.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class ControlNetInpaintParityTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    private static string Fx(string name) => Fixtures.Path("sd_controlnet_inpaint_tiny", name);
    private static string Cases => Fx("cases.safetensors");

    public void Dispose() => _sd.Dispose();

    /// <summary>The tiny folder (sd_unet_tiny, sd_vae_tiny, DDIM steps_offset 0) with the 9-channel UNet of sd_edit_tiny/inpaint9.</summary>
    private void UseNineChannelUNet()
    {
        string src = Fixtures.Path("sd_edit_tiny", "inpaint9", "unet");
        File.Copy(Path.Combine(src, "config.json"), _sd.Path("unet/config.json"), overwrite: true);
        File.Copy(Path.Combine(src, "diffusion_pytorch_model.safetensors"), _sd.Path("unet/diffusion_pytorch_model.safetensors"), overwrite: true);
    }

    private (Tensor result, string runJson) Run(string key, string strength, string pagScale)
    {
        string outDir = _sd.Dir.File("out_" + key), tensor = _sd.Dir.File(key + ".npy");
        var (exit, log) = Pag.Run("inpaint", "--model", _sd.Root, "--controlnet", Fx("controlnet"),
            "--control-image", Cases + ":cn_in.control_image", "--controlnet-scale", "1",
            "--prompt-embeds", Cases + ":run_in.prompt_embeds", "--negative-prompt-embeds", Cases + ":run_in.negative_prompt_embeds",
            "--guidance-scale", "5", "--pag-scale", pagScale, "--pag-layers", "mid",
            "--image", Cases + ":edit_in.image_rgb", "--mask-image", Cases + ":edit_in.mask", "--strength", strength,
            "--steps", "5", "--scheduler", "ddim", "--seed", "11", "--count", "2",
            "--output-type", "latent", "--save-tensor", tensor, "--output", outDir);
        Assert.True(exit == 0, log);
        return (Npy.Load(tensor), File.ReadAllText(Path.Combine(outDir, "run.json")));
    }

    [Theory]
    [InlineData("cnin4_s10", 4, "1.0", "3")]
    [InlineData("cnin4_s07", 4, "0.7", "3")]
    [InlineData("cnin9_s10", 9, "1.0", "3")]
    [InlineData("cnin9_s07", 9, "0.7", "3")]
    [InlineData("cnin4_s10_cfg5", 4, "1.0", "0")]
    public void Inpaint_ControlNet_MatchesDiffusers(string run, int unetChannels, string strength, string pagScale)
    {
        if (unetChannels == 9) UseNineChannelUNet();
        var (actual, runJson) = Run(run, strength, pagScale);
        using (actual)
        using (var expected = SafeTensors.LoadTensor(Cases, run + ".final"))
            SdFixtures.AssertRelative(expected, actual, 1e-4, "pag inpaint --controlnet " + run);
        Assert.Contains("\"controlnet_conditioning_scale\"", runJson);
        Assert.Matches("\"(steps_offset|StepsOffset)\": 0,", runJson); // the folder's DDIM as is: timesteps 800 … 0
    }

    [Fact]
    public void Inpaint_ControlNet_ChangesTheResult()
    {
        // The same UNet, VAE, inputs and seeds without the ControlNet are the SD inpaint fixture inp4_s10 (README 12.6);
        // only its timesteps differ (StableDiffusionPAGInpaintPipeline forces steps_offset 1), so compare against
        // the ControlNet fixture: with the ControlNet the result moves by far more than the tolerance.
        var (actual, _) = Run("cn4", "1.0", "3");
        using (actual)
        using (var plain = SafeTensors.LoadTensor(Fixtures.Path("sd_edit_tiny", "cases.safetensors"), "inp4_s10.final"))
        using (var expected = SafeTensors.LoadTensor(Cases, "cnin4_s10.final"))
        {
            SdFixtures.AssertRelative(expected, actual, 1e-4, "pag inpaint --controlnet");
            using var d = (actual - plain).abs().max();
            Assert.True(d.item<float>() > 0.1f, $"ControlNet inpaint vs plain inpaint differ by only {d.item<float>()}");
        }
    }
}
