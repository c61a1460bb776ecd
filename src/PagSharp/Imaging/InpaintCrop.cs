using static TorchSharp.torch;

namespace PagSharp.Imaging;

/// <summary>
/// diffusers' <c>padding_mask_crop</c> for inpainting (VaeImageProcessor <c>get_crop_region</c>,
/// <c>resize_mode="fill"</c> and <c>apply_overlay</c>) on 8-bit images: inpaint only a crop around the mask, at the
/// generation size, then paste the result back into the full image, keeping the original wherever the mask is black.
/// </summary>
public static class InpaintCrop
{
    /// <summary>PIL's <c>convert("L")</c> of interleaved RGB bytes (ITU-R 601 luma in PIL's fixed point).</summary>
    public static byte[] Luma(byte[] rgb, int w, int h)
    {
        var l = new byte[w * h];
        for (int i = 0; i < l.Length; i++)
            l[i] = (byte)((rgb[3 * i] * 19595 + rgb[3 * i + 1] * 38470 + rgb[3 * i + 2] * 7471 + 0x8000) >> 16);
        return l;
    }

    /// <summary>
    /// The crop (x1, y1, x2, y2) holding every non-zero mask pixel, widened by <paramref name="pad"/> on each side
    /// (within the image) and then grown to the aspect ratio <paramref name="width"/>:<paramref name="height"/> of the
    /// generation size, shifted back inside the image where it would leave it — diffusers' <c>get_crop_region</c>.
    /// </summary>
    public static (int X1, int Y1, int X2, int Y2) Region(byte[] maskL, int w, int h, int width, int height, int pad)
    {
        if (maskL.Length != w * h) throw new PagSharpException($"mask buffer holds {maskL.Length} bytes; expected {w}×{h}");
        if (pad < 0) throw new PagSharpException($"PaddingMaskCrop must be ≥ 0 (got {pad})");
        bool ColEmpty(int x) { for (int y = 0; y < h; y++) if (maskL[y * w + x] != 0) return false; return true; }
        bool RowEmpty(int y) { for (int x = 0; x < w; x++) if (maskL[y * w + x] != 0) return false; return true; }
        int left = 0; while (left < w && ColEmpty(left)) left++;
        if (left == w) throw new PagSharpException("the mask is empty (all black): there is nothing to inpaint and no region to crop");
        int right = 0; while (ColEmpty(w - 1 - right)) right++;
        int top = 0; while (RowEmpty(top)) top++;
        int bottom = 0; while (RowEmpty(h - 1 - bottom)) bottom++;
        int x1 = Math.Max(left - pad, 0), y1 = Math.Max(top - pad, 0), x2 = Math.Min(w - right + pad, w), y2 = Math.Min(h - bottom + pad, h);
        double ratioCrop = (double)(x2 - x1) / (y2 - y1), ratio = (double)width / height;
        if (ratioCrop > ratio)
        {
            int diff = (int)((x2 - x1) / ratio - (y2 - y1));
            y1 -= FloorDiv(diff, 2);
            y2 += diff - FloorDiv(diff, 2);
            if (y2 >= h) { int d = y2 - h; y2 -= d; y1 -= d; }
            if (y1 < 0) { y2 -= y1; y1 = 0; }
            if (y2 >= h) y2 = h;
        }
        else
        {
            int diff = (int)((y2 - y1) * ratio - (x2 - x1));
            x1 -= FloorDiv(diff, 2);
            x2 += diff - FloorDiv(diff, 2);
            if (x2 >= w) { int d = x2 - w; x2 -= d; x1 -= d; }
            if (x1 < 0) { x2 -= x1; x1 = 0; }
            if (x2 >= w) x2 = w;
        }
        return (x1, y1, x2, y2);
    }

    private static int FloorDiv(int a, int b) => (int)Math.Floor((double)a / b);

    /// <summary>The pixels of <paramref name="region"/> of an interleaved image.</summary>
    public static byte[] Crop(byte[] src, int w, int channels, (int X1, int Y1, int X2, int Y2) region)
    {
        int cw = region.X2 - region.X1, ch = region.Y2 - region.Y1;
        var dst = new byte[cw * ch * channels];
        for (int y = 0; y < ch; y++)
            Array.Copy(src, ((region.Y1 + y) * w + region.X1) * channels, dst, y * cw * channels, cw * channels);
        return dst;
    }

    /// <summary>
    /// diffusers' <c>resize_mode="fill"</c>: Lanczos-resize to fit inside <paramref name="width"/>×<paramref name="height"/>
    /// keeping the aspect ratio, centre it, and fill the bands left over by stretching the edge rows (or columns).
    /// </summary>
    public static byte[] ResizeAndFill(byte[] src, int w, int h, int channels, int width, int height)
    {
        double ratio = (double)width / height, srcRatio = (double)w / h;
        int sw = ratio < srcRatio ? width : w * height / h;
        int sh = ratio >= srcRatio ? height : h * width / w;
        var resized = ControlImage.ResizeLanczos(src, w, h, channels, sw, sh);
        var dst = new byte[width * height * channels];
        int ox = width / 2 - sw / 2, oy = height / 2 - sh / 2;
        for (int y = 0; y < height; y++)
            for (int x = 0; x < width; x++)
            {
                // Inside: the resized image; the bands repeat its nearest edge row or column.
                int sy = Math.Clamp(y - oy, 0, sh - 1), sx = Math.Clamp(x - ox, 0, sw - 1);
                Array.Copy(resized, (sy * sw + sx) * channels, dst, (y * width + x) * channels, channels);
            }
        return dst;
    }

    /// <summary>
    /// diffusers' <c>apply_overlay</c>: the generated image (RGB bytes at the generation size) resized to the crop
    /// (cover and centre-crop) and pasted at it, then the original composited over it with alpha 255 − mask, so the
    /// original comes back wherever the (unbinarised) mask is black.
    /// </summary>
    public static byte[] Overlay(byte[] original, byte[] maskL, int w, int h, byte[] generated, int gw, int gh, (int X1, int Y1, int X2, int Y2) region)
    {
        int cw = region.X2 - region.X1, ch = region.Y2 - region.Y1;
        double ratio = (double)cw / ch, srcRatio = (double)gw / gh;
        int sw = ratio > srcRatio ? cw : gw * ch / gh;
        int sh = ratio <= srcRatio ? ch : gh * cw / gw;
        var cover = ControlImage.ResizeLanczos(generated, gw, gh, 3, sw, sh);
        int ox = sw / 2 - cw / 2, oy = sh / 2 - ch / 2;
        var result = new byte[w * h * 3];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = y * w + x;
                bool inside = x >= region.X1 && x < region.X2 && y >= region.Y1 && y < region.Y2;
                int a = 255 - maskL[i]; // alpha of the original
                for (int c = 0; c < 3; c++)
                {
                    int gen = inside ? cover[((y - region.Y1 + oy) * sw + (x - region.X1 + ox)) * 3 + c] : 0;
                    result[3 * i + c] = (byte)((original[3 * i + c] * a + gen * (255 - a) + 127) / 255);
                }
            }
        return result;
    }

    /// <summary>Interleaved bytes [H, W, C] → float tensor [1, C, H, W] in [0, 1].</summary>
    public static Tensor ToTensor(byte[] hwc, int w, int h, int channels)
    {
        var chw = new float[hwc.Length];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                for (int c = 0; c < channels; c++)
                    chw[(c * h + y) * w + x] = hwc[(y * w + x) * channels + c] / 255f;
        return tensor(chw, new long[] { 1, channels, h, w });
    }

    /// <summary>A [3, H, W] tensor in [0, 1] → interleaved RGB bytes (rounded, as PIL's conversion of the pipeline's output).</summary>
    public static byte[] ToBytes(Tensor image)
    {
        using var scope = NewDisposeScope();
        var hwc = (image.clamp(0, 1) * 255).round().to_type(ScalarType.Byte).permute(1, 2, 0).contiguous();
        return hwc.data<byte>().ToArray();
    }
}
