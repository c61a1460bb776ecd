using System.ComponentModel;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary>Options of <c>pag img2img</c> (diffusers' StableDiffusion(XL)PAGImg2ImgPipeline arguments in kebab-case).</summary>
public class Img2ImgSettings : Txt2ImgSettings
{
    [CommandOption("--image <IMAGE>")][Description("The input image: PNG/JPEG (RGB, resized with Lanczos to --width/--height when given, else its size rounded down to the VAE scale factor) or a tensor FILE.npy / FILE.safetensors:KEY: [[1 or N,3,H,W]] in [[0, 1]], or image latents [[1 or N,C,h,w]] (C = the VAE's latent channels), used as they are.")]
    public string? Image { get; init; }
    [CommandOption("--strength <F>")][Description("How much of the schedule runs, in (0, 1]]: the first steps·(1 - F) steps are skipped and the image is noised to that level. Defaults as diffusers: img2img 0.8 (SDXL 0.3), inpaint 1 (SDXL 0.9999).")]
    public double? Strength { get; init; }
    [CommandOption("--denoising-start <F>")][Description("SDXL refiner hand-off: start where the timesteps fall below (1 - F)·T, adding no noise (--image holds the base's latents). Overrides --strength.")]
    public double? DenoisingStart { get; init; }
}
