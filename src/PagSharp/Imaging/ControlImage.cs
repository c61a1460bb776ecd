using static TorchSharp.torch;

namespace PagSharp.Imaging;

/// <summary>How a control image file is turned into the ControlNet's input.</summary>
public enum ControlPreprocessor
{
    /// <summary>The image as it is (an edge, pose, depth … map made elsewhere).</summary>
    None,
    /// <summary>Canny edges of the image (white edges on black, in all three channels).</summary>
    Canny,
}

/// <summary>
/// Control images for Stable Diffusion ControlNets, prepared as diffusers' ControlNet pipelines do
/// (<c>VaeImageProcessor(do_convert_rgb=True, do_normalize=False)</c>): RGB, resized with PIL's Lanczos filter to the
/// generation size, then bytes / 255 (no normalisation to [-1, 1]), channel order RGB, as [1, 3, H, W] float32.
/// </summary>
public static class ControlImage
{
    /// <summary>
    /// Loads <paramref name="path"/> (PNG or JPEG), applies <paramref name="preprocessor"/> at the file's size, and
    /// resizes it to <paramref name="width"/>×<paramref name="height"/>. A missing width or height is the image's;
    /// both are then rounded down to a multiple of <paramref name="multiple"/> (the VAE scale factor), as diffusers'
    /// <c>get_default_height_width</c>. Returns [1, 3, H, W] in [0, 1].
    /// </summary>
    public static Tensor Load(string path, int? width, int? height, int multiple, ControlPreprocessor preprocessor = ControlPreprocessor.None,
                              double cannyLow = 100, double cannyHigh = 200)
    {
        if (multiple < 1) throw new PagSharpException($"the size multiple must be ≥ 1 (got {multiple})");
        byte[] rgb = Png.LoadRgb8(path, out int w, out int h);
        if (preprocessor == ControlPreprocessor.Canny) rgb = Canny(rgb, w, h, cannyLow, cannyHigh);
        int outW = width ?? w, outH = height ?? h;
        outW -= outW % multiple;
        outH -= outH % multiple;
        if (outW < 1 || outH < 1)
            throw new PagSharpException($"control image '{path}' is {w}×{h}; rounded down to a multiple of {multiple} it has no pixels left (give a larger image or a larger generation size)");
        if (outW != w || outH != h) rgb = ResizeLanczos(rgb, w, h, 3, outW, outH);
        var chw = new float[3 * outW * outH];
        int n = outW * outH;
        for (int i = 0; i < n; i++)
            for (int c = 0; c < 3; c++)
                chw[c * n + i] = rgb[3 * i + c] / 255f;
        return tensor(chw, new long[] { 1, 3, outH, outW });
    }

    // ---- PIL's Lanczos resampling (Resample.c, 8 bits per channel, fixed-point coefficients) ----

    private const int PrecisionBits = 32 - 8 - 2;

    private static double Sinc(double x)
    {
        if (x == 0.0) return 1.0;
        x *= Math.PI;
        return Math.Sin(x) / x;
    }

    private static double Lanczos(double x) => x >= -3.0 && x < 3.0 ? Sinc(x) * Sinc(x / 3) : 0.0;

    /// <summary>Per output position: the first input index, the count, and fixed-point weights (ksize per row).</summary>
    private static (int[] Bounds, int[] Weights, int KSize) Coefficients(int inSize, int outSize)
    {
        double scale = (double)inSize / outSize, filterScale = Math.Max(scale, 1.0);
        double support = 3.0 * filterScale;
        int ksize = (int)Math.Ceiling(support) * 2 + 1;
        var bounds = new int[outSize * 2];
        var weights = new int[outSize * ksize];
        var k = new double[ksize];
        for (int xx = 0; xx < outSize; xx++)
        {
            double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterScale;
            int xmin = (int)(center - support + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support + 0.5);
            if (xmax > inSize) xmax = inSize;
            xmax -= xmin;
            Array.Clear(k);
            for (int x = 0; x < xmax; x++)
            {
                double wgt = Lanczos((x + xmin - center + 0.5) * ss);
                k[x] = wgt;
                ww += wgt;
            }
            for (int x = 0; x < xmax; x++)
                if (ww != 0.0) k[x] /= ww;
            for (int x = 0; x < ksize; x++)
                weights[xx * ksize + x] = k[x] < 0 ? (int)(-0.5 + k[x] * (1 << PrecisionBits)) : (int)(0.5 + k[x] * (1 << PrecisionBits));
            bounds[xx * 2] = xmin;
            bounds[xx * 2 + 1] = xmax;
        }
        return (bounds, weights, ksize);
    }

    private static byte Clip8(int v) => v >= (1 << PrecisionBits << 8) ? (byte)255 : v <= 0 ? (byte)0 : (byte)(v >> PrecisionBits);

    /// <summary>
    /// PIL's <c>Image.resize((outW, outH), Image.LANCZOS)</c> on interleaved 8-bit pixels: a horizontal pass over the
    /// rows the vertical pass needs, then a vertical pass, each rounding to bytes.
    /// </summary>
    public static byte[] ResizeLanczos(byte[] src, int w, int h, int channels, int outW, int outH)
    {
        if (src.Length != w * h * channels) throw new PagSharpException($"image buffer holds {src.Length} bytes; expected {w}×{h}×{channels}");
        if (outW < 1 || outH < 1) throw new PagSharpException($"cannot resize to {outW}×{outH}");
        if (outW == w && outH == h) return (byte[])src.Clone();
        var (bh, kh, ksh) = Coefficients(w, outW);
        var (bv, kv, ksv) = Coefficients(h, outH);
        bool needH = outW != w, needV = outH != h;
        byte[] cur = src;
        int curW = w;
        if (needH)
        {
            int yFirst = bv[0], yLast = bv[outH * 2 - 2] + bv[outH * 2 - 1];
            for (int i = 0; i < outH; i++) bv[i * 2] -= yFirst;
            int rows = yLast - yFirst;
            var tmp = new byte[outW * rows * channels];
            for (int y = 0; y < rows; y++)
                for (int xx = 0; xx < outW; xx++)
                {
                    int xmin = bh[xx * 2], xmax = bh[xx * 2 + 1], ko = xx * ksh;
                    for (int c = 0; c < channels; c++)
                    {
                        int ss = 1 << (PrecisionBits - 1);
                        for (int x = 0; x < xmax; x++) ss += src[((y + yFirst) * w + x + xmin) * channels + c] * kh[ko + x];
                        tmp[(y * outW + xx) * channels + c] = Clip8(ss);
                    }
                }
            cur = tmp;
            curW = outW;
        }
        if (!needV) return cur;
        var dst = new byte[outW * outH * channels];
        for (int yy = 0; yy < outH; yy++)
        {
            int ymin = bv[yy * 2], ymax = bv[yy * 2 + 1], ko = yy * ksv;
            for (int xx = 0; xx < outW; xx++)
                for (int c = 0; c < channels; c++)
                {
                    int ss = 1 << (PrecisionBits - 1);
                    for (int y = 0; y < ymax; y++) ss += cur[((y + ymin) * curW + xx) * channels + c] * kv[ko + y];
                    dst[(yy * outW + xx) * channels + c] = Clip8(ss);
                }
        }
        return dst;
    }

    // ---- Canny edges (OpenCV's algorithm: 3×3 Sobel per channel, the channel of largest L1 magnitude,
    //      non-maximum suppression in four directions, hysteresis with 8-connectivity) ----

    /// <summary>
    /// Canny edges of interleaved RGB bytes, as <c>cv2.Canny(image, low, high)</c> (L1 gradient magnitude; Sobel with
    /// replicated borders); returns RGB bytes, 255 on edges and 0 elsewhere, in all three channels.
    /// </summary>
    public static byte[] Canny(byte[] rgb, int w, int h, double low, double high)
    {
        if (!(low >= 0 && high >= low)) throw new PagSharpException($"Canny thresholds must satisfy 0 ≤ low ≤ high (got {low}, {high})");
        if (rgb.Length != w * h * 3) throw new PagSharpException($"image buffer holds {rgb.Length} bytes; expected {w}×{h}×3");
        int At(int x, int y, int c) => rgb[(Math.Clamp(y, 0, h - 1) * w + Math.Clamp(x, 0, w - 1)) * 3 + c];
        var dx = new int[w * h];
        var dy = new int[w * h];
        var mag = new int[w * h];
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int best = -1, bx = 0, by = 0;
                for (int c = 0; c < 3; c++)
                {
                    int gx = At(x + 1, y - 1, c) + 2 * At(x + 1, y, c) + At(x + 1, y + 1, c) - At(x - 1, y - 1, c) - 2 * At(x - 1, y, c) - At(x - 1, y + 1, c);
                    int gy = At(x - 1, y + 1, c) + 2 * At(x, y + 1, c) + At(x + 1, y + 1, c) - At(x - 1, y - 1, c) - 2 * At(x, y - 1, c) - At(x + 1, y - 1, c);
                    int m = Math.Abs(gx) + Math.Abs(gy);
                    if (m > best) { best = m; bx = gx; by = gy; }
                }
                int i = y * w + x;
                dx[i] = bx; dy[i] = by; mag[i] = best;
            }
        int Mag(int x, int y) => x < 0 || y < 0 || x >= w || y >= h ? 0 : mag[y * w + x];
        // 0 = not an edge, 1 = weak candidate, 2 = strong edge.
        var state = new byte[w * h];
        const long Tg22 = 13573; // tan(22.5°) · 2^15
        var stack = new Stack<int>();
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                int i = y * w + x, m = mag[i];
                if (m <= low) continue;
                long ax = Math.Abs(dx[i]), ay = (long)Math.Abs(dy[i]) << 15;
                long tg22x = ax * Tg22;
                bool max;
                if (ay < tg22x) max = m > Mag(x - 1, y) && m >= Mag(x + 1, y);
                else if (ay > tg22x + (ax << 16)) max = m > Mag(x, y - 1) && m >= Mag(x, y + 1);
                else
                {
                    int s = (dx[i] ^ dy[i]) < 0 ? -1 : 1;
                    max = m > Mag(x - s, y - 1) && m > Mag(x + s, y + 1);
                }
                if (!max) continue;
                if (m > high) { state[i] = 2; stack.Push(i); }
                else state[i] = 1;
            }
        while (stack.Count > 0)
        {
            int i = stack.Pop(), x = i % w, y = i / w;
            for (int oy = -1; oy <= 1; oy++)
                for (int ox = -1; ox <= 1; ox++)
                {
                    int nx = x + ox, ny = y + oy;
                    if (nx < 0 || ny < 0 || nx >= w || ny >= h) continue;
                    int j = ny * w + nx;
                    if (state[j] == 1) { state[j] = 2; stack.Push(j); }
                }
        }
        var outp = new byte[w * h * 3];
        for (int i = 0; i < w * h; i++)
            if (state[i] == 2) outp[3 * i] = outp[3 * i + 1] = outp[3 * i + 2] = 255;
        return outp;
    }
}
