using static TorchSharp.torch;

namespace PagSharp.Pipelines;

/// <summary>
/// SDXL's micro-conditioning (diffusers' <c>original_size</c>, <c>crops_coords_top_left</c>, <c>target_size</c>, their
/// negative counterparts, and the refiner's aesthetic scores). Sizes are (height, width), crops (top, left), as in
/// diffusers. Null sizes default to the generation size.
/// </summary>
public sealed record SdXlMicroConditioning
{
    public (int Height, int Width)? OriginalSize { get; init; }
    public (int Top, int Left) CropsCoordsTopLeft { get; init; }
    public (int Height, int Width)? TargetSize { get; init; }
    public (int Height, int Width)? NegativeOriginalSize { get; init; }
    public (int Top, int Left) NegativeCropsCoordsTopLeft { get; init; }
    public (int Height, int Width)? NegativeTargetSize { get; init; }
    /// <summary>The refiner's aesthetic score (requires_aesthetics_score), diffusers' default 6.</summary>
    public double AestheticScore { get; init; } = 6.0;
    /// <summary>The refiner's negative aesthetic score, diffusers' default 2.5.</summary>
    public double NegativeAestheticScore { get; init; } = 2.5;

    /// <summary>
    /// The time ids [1, n] of the conditional and the unconditional branch for an image of
    /// <paramref name="height"/> × <paramref name="width"/>, as the pipeline kind builds them:
    /// <list type="bullet">
    /// <item>text-to-image (<c>StableDiffusionXLPipeline._get_add_time_ids</c>): original + crop + target; the negative
    /// ids are the same unless both negative sizes are given (then negative original + negative crop + negative target);</item>
    /// <item>image-to-image and inpainting: negative sizes default to the positive ones, and the negative ids use the
    /// <i>positive</i> crop (diffusers' img2img code does); with <paramref name="aesthetics"/> (the refiner):
    /// original + crop + aesthetic score, negative original + negative crop + negative aesthetic score.</item>
    /// </list>
    /// </summary>
    public (Tensor TimeIds, Tensor NegativeTimeIds) TimeIds(int height, int width, bool imageToImage, bool aesthetics)
    {
        var orig = OriginalSize ?? (height, width);
        var target = TargetSize ?? (height, width);
        double[] pos, neg;
        if (!imageToImage)
        {
            if (aesthetics)
                throw new PagSharpException("requires_aesthetics_score is set (an SDXL refiner): the refiner runs image-to-image; use img2img with its denoising start");
            pos = [orig.Height, orig.Width, CropsCoordsTopLeft.Top, CropsCoordsTopLeft.Left, target.Height, target.Width];
            neg = NegativeOriginalSize is { } no && NegativeTargetSize is { } nt
                ? [no.Height, no.Width, NegativeCropsCoordsTopLeft.Top, NegativeCropsCoordsTopLeft.Left, nt.Height, nt.Width]
                : pos;
        }
        else
        {
            var no = NegativeOriginalSize ?? orig;
            var nt = NegativeTargetSize ?? target;
            if (aesthetics)
            {
                pos = [orig.Height, orig.Width, CropsCoordsTopLeft.Top, CropsCoordsTopLeft.Left, AestheticScore];
                neg = [no.Height, no.Width, NegativeCropsCoordsTopLeft.Top, NegativeCropsCoordsTopLeft.Left, NegativeAestheticScore];
            }
            else
            {
                pos = [orig.Height, orig.Width, CropsCoordsTopLeft.Top, CropsCoordsTopLeft.Left, target.Height, target.Width];
                neg = [no.Height, no.Width, CropsCoordsTopLeft.Top, CropsCoordsTopLeft.Left, nt.Height, nt.Width];
            }
        }
        return (tensor(pos.Select(v => (float)v).ToArray()).unsqueeze(0), tensor(neg.Select(v => (float)v).ToArray()).unsqueeze(0));
    }
}
