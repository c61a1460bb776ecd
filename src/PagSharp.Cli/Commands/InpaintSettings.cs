using System.ComponentModel;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary>Options of <c>pag inpaint</c> (diffusers' StableDiffusion(XL)PAGInpaintPipeline arguments in kebab-case).</summary>
public sealed class InpaintSettings : Img2ImgSettings
{
    [CommandOption("--mask-image <MASK>")][Description("The mask: PNG/JPEG (converted to grey, resized to the image size) or a tensor [[1 or N,1,H,W]] in [[0, 1]] at the image size; white (>= 0.5) is repainted, black kept (binarised, as diffusers).")]
    public string? MaskImage { get; init; }
    [CommandOption("--masked-image-latents <TENSOR>")][Description("Latents of the masked image [[N,C,h,w]] for 9-channel inpainting UNets, instead of encoding image·(mask < 0.5) (needed when --image holds latents).")]
    public string? MaskedImageLatents { get; init; }
    [CommandOption("--padding-mask-crop <N>")][Description("Inpaint only a crop around the mask, widened by N pixels and grown to the generation's aspect ratio, at the generation size; the result is pasted back into the full image, the original kept where the mask is black (diffusers' padding_mask_crop; PNG/JPEG image and mask, image output).")]
    public int? PaddingMaskCrop { get; init; }
    [CommandOption("--mask-blur <SIGMA>")][Description("Blur the mask with a Gaussian of this sigma (pixels) before it is binarised, which rounds its outline (diffusers: mask_processor.blur). Default 0 = none.")]
    public double MaskBlur { get; init; }
}
