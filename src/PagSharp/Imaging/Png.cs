using System.Runtime.InteropServices;
using PagSharp.IO;
using SkiaSharp;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Imaging;

/// <summary>
/// Reads and writes images as float tensors in the model range [-1, 1], channel-first ([C,H,W]).
/// </summary>
/// <remarks>
/// <para>Writing maps each value x to the byte <c>clamp(round((x + 1) * 127.5), 0, 255)</c> (rounding half to even,
/// as <c>torch.round</c> does), so -1 is black and 1 is white. Reading maps a byte b to <c>b / 127.5 - 1</c>, so a
/// save followed by a load returns every value to within 1/127.5.</para>
/// <para>Decoding and encoding use SkiaSharp; nothing depends on system fonts or libraries beyond its native asset.</para>
/// </remarks>
public static class Png
{
    /// <summary>Largest image, in pixels, that <see cref="Load"/> will decode.</summary>
    public const long MaxPixels = 1L << 28;

    /// <summary>
    /// Writes <paramref name="image"/>, a float tensor [C,H,W] with C = 1 (grayscale) or 3 (RGB) and values in
    /// [-1, 1], as an 8-bit PNG at <paramref name="path"/>. Values map to bytes as
    /// <c>clamp(round((x + 1) * 127.5), 0, 255)</c>; values outside [-1, 1] are clipped. The file is written to a
    /// temporary name and renamed into place, so readers never see a partial file.
    /// </summary>
    /// <exception cref="PagSharpException">The tensor has the wrong shape or type, or holds NaN.</exception>
    public static void Save(string path, Tensor image)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(image);
        if (image.dim() != 3 || (image.shape[0] != 1 && image.shape[0] != 3) || image.shape[1] < 1 || image.shape[2] < 1)
            throw new PagSharpException(
                $"Cannot save '{path}': the image tensor has shape [{string.Join(",", image.shape)}]; expected [C,H,W] with C = 1 (grayscale) or 3 (RGB) and H, W >= 1.");
        int c = (int)image.shape[0], h = (int)image.shape[1], w = (int)image.shape[2];
        byte[] chw = ToBytes(image, $"Cannot save '{path}'");
        WritePixels(path, ChwToInterleaved(chw, c, h, w), w, h, c);
    }

    /// <summary>
    /// Reads a PNG or JPEG file as a float tensor [C,H,W] in [-1, 1] (b / 127.5 - 1 for each byte b).
    /// </summary>
    /// <param name="path">The image file.</param>
    /// <param name="size">
    /// When given, the image is resized so its shorter side is <paramref name="size"/> pixels (antialiased bilinear
    /// filtering: a triangle filter widened by the scale factor when shrinking), then the centre
    /// <paramref name="size"/>×<paramref name="size"/> square is cropped out. When null, the image keeps its size.
    /// </param>
    /// <param name="channels">
    /// 3 for RGB (a grayscale file is repeated into all three channels) or 1 for grayscale (colour is converted by
    /// luminance, 0.299 R + 0.587 G + 0.114 B). An alpha channel is dropped, not composited.
    /// </param>
    /// <exception cref="PagSharpException">The file is missing, unreadable, not a decodable image, or too large; or the arguments are invalid.</exception>
    public static Tensor Load(string path, int? size = null, int channels = 3)
    {
        float[] chw = LoadPixels(path, size, channels, out int h, out int w);
        return torch.tensor(chw, [channels, h, w]);
    }

    /// <summary>
    /// Decodes a PNG or JPEG into interleaved 8-bit RGB bytes (row-major, [H, W, 3]): an alpha channel is dropped, not
    /// composited, and grayscale is repeated into the three channels, as PIL's <c>convert("RGB")</c>.
    /// </summary>
    /// <exception cref="PagSharpException">The file is missing, unreadable, not a decodable image, or too large.</exception>
    public static byte[] LoadRgb8(string path, out int width, out int height)
    {
        ArgumentNullException.ThrowIfNull(path);
        byte[] rgba = DecodeRgba(path, out width, out height);
        var rgb = new byte[width * height * 3];
        for (int i = 0, n = width * height; i < n; i++)
        {
            rgb[3 * i] = rgba[4 * i];
            rgb[3 * i + 1] = rgba[4 * i + 1];
            rgb[3 * i + 2] = rgba[4 * i + 2];
        }
        return rgb;
    }

    /// <summary>Decodes, resizes/crops and converts one image to channel-first floats in [-1, 1].</summary>
    internal static float[] LoadPixels(string path, int? size, int channels, out int height, out int width)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (channels != 1 && channels != 3)
            throw new PagSharpException($"Cannot load '{path}' with channels = {channels}; valid values are 1 (grayscale) and 3 (RGB).");
        if (size is <= 0)
            throw new PagSharpException($"Cannot load '{path}' with size = {size}; the size must be a positive number of pixels.");

        byte[] rgba = DecodeRgba(path, out int w, out int h);

        // Planes in byte units (0..255) as floats.
        int n = w * h;
        float[] planes = new float[channels * n];
        for (int i = 0; i < n; i++)
        {
            byte r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
            if (channels == 3)
            {
                planes[i] = r;
                planes[n + i] = g;
                planes[2 * n + i] = b;
            }
            else
            {
                planes[i] = r == g && g == b ? r : (float)(0.299 * r + 0.587 * g + 0.114 * b);
            }
        }

        if (size is int s && (w != s || h != s))
        {
            // Shorter side to s, longer side scaled in proportion (at least s), then a centred s×s crop.
            int rw, rh;
            if (w <= h) { rw = s; rh = Math.Max(s, (int)Math.Round((double)h * s / w)); }
            else { rh = s; rw = Math.Max(s, (int)Math.Round((double)w * s / h)); }
            float[] resized = Resampler.Resize(planes, channels, h, w, rh, rw);
            int top = (rh - s) / 2, left = (rw - s) / 2;
            planes = new float[channels * s * s];
            for (int ch = 0; ch < channels; ch++)
                for (int y = 0; y < s; y++)
                    Array.Copy(resized, (ch * rh + top + y) * rw + left, planes, (ch * s + y) * s, s);
            w = h = s;
        }

        for (int i = 0; i < planes.Length; i++) planes[i] = planes[i] / 127.5f - 1f;
        height = h;
        width = w;
        return planes;
    }

    /// <summary>Decodes a file into unpremultiplied RGBA bytes, applying the EXIF orientation if there is one.</summary>
    private static byte[] DecodeRgba(string path, out int width, out int height)
    {
        if (!File.Exists(path))
            throw new PagSharpException($"Cannot load image '{path}': the file does not exist.");
        byte[] encoded;
        try { encoded = File.ReadAllBytes(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PagSharpException($"Cannot load image '{path}': the file cannot be read ({e.Message}).", e);
        }

        using var data = SKData.CreateCopy(encoded);
        using var codec = SKCodec.Create(data);
        if (codec is null)
            throw new PagSharpException($"Cannot load image '{path}': it is not a readable image. Valid inputs are PNG and JPEG files.");
        int w = codec.Info.Width, h = codec.Info.Height;
        if (w <= 0 || h <= 0 || (long)w * h > MaxPixels)
            throw new PagSharpException($"Cannot load image '{path}': its size {w}x{h} is outside the supported range (1 to {MaxPixels} pixels).");

        var info = new SKImageInfo(w, h, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        SKCodecResult result = codec.GetPixels(info, out byte[] pixels);
        if (result != SKCodecResult.Success)
            throw new PagSharpException($"Cannot load image '{path}': decoding failed ({result}); the file is truncated or corrupt. Valid inputs are complete PNG and JPEG files.");

        return Orient(pixels, w, h, codec.EncodedOrigin, out width, out height);
    }

    /// <summary>Rotates/mirrors decoded RGBA pixels so the image appears upright, as the EXIF orientation asks.</summary>
    private static byte[] Orient(byte[] src, int w, int h, SKEncodedOrigin origin, out int outW, out int outH)
    {
        if (origin == SKEncodedOrigin.TopLeft || origin == 0)
        {
            outW = w;
            outH = h;
            return src;
        }
        bool swap = origin is SKEncodedOrigin.LeftTop or SKEncodedOrigin.RightTop or SKEncodedOrigin.RightBottom or SKEncodedOrigin.LeftBottom;
        outW = swap ? h : w;
        outH = swap ? w : h;
        var dst = new byte[src.Length];
        for (int y = 0; y < outH; y++)
            for (int x = 0; x < outW; x++)
            {
                (int sx, int sy) = origin switch
                {
                    SKEncodedOrigin.TopRight => (w - 1 - x, y),
                    SKEncodedOrigin.BottomRight => (w - 1 - x, h - 1 - y),
                    SKEncodedOrigin.BottomLeft => (x, h - 1 - y),
                    SKEncodedOrigin.LeftTop => (y, x),
                    SKEncodedOrigin.RightTop => (y, h - 1 - x),
                    SKEncodedOrigin.RightBottom => (w - 1 - y, h - 1 - x),
                    SKEncodedOrigin.LeftBottom => (w - 1 - y, x),
                    _ => (x, y),
                };
                Buffer.BlockCopy(src, (sy * w + sx) * 4, dst, (y * outW + x) * 4, 4);
            }
        return dst;
    }

    /// <summary>
    /// Converts a float tensor in [-1, 1] to bytes with clamp(round((x + 1) * 127.5), 0, 255), in the tensor's
    /// (contiguous, row-major) element order.
    /// </summary>
    internal static byte[] ToBytes(Tensor t, string context)
    {
        if (!torch.is_floating_point(t))
            throw new PagSharpException($"{context}: the image tensor has type {t.dtype}; expected a floating-point tensor with values in [-1, 1].");
        float[] values;
        using (var f = t.detach().to(ScalarType.Float32, torch.CPU).contiguous())
            values = f.data<float>().ToArray();
        var bytes = new byte[values.Length];
        for (int i = 0; i < values.Length; i++)
        {
            float x = values[i];
            if (float.IsNaN(x))
                throw new PagSharpException($"{context}: the image tensor contains NaN at element {i}; expected finite values in [-1, 1].");
            float v = MathF.Round((x + 1f) * 127.5f, MidpointRounding.ToEven);
            bytes[i] = (byte)Math.Clamp(v, 0f, 255f);
        }
        return bytes;
    }

    /// <summary>Channel-first bytes to interleaved (pixel-major) bytes.</summary>
    internal static byte[] ChwToInterleaved(byte[] chw, int c, int h, int w)
    {
        if (c == 1) return chw;
        int n = h * w;
        var hwc = new byte[chw.Length];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < c; k++)
                hwc[i * c + k] = chw[k * n + i];
        return hwc;
    }

    /// <summary>Encodes interleaved 8-bit pixels (1 = gray, 3 = RGB) as PNG and writes them atomically.</summary>
    internal static void WritePixels(string path, byte[] interleaved, int width, int height, int channels)
    {
        byte[] png = Encode(interleaved, width, height, channels);
        AtomicFile.WriteAllBytes(path, png);
    }

    internal static byte[] Encode(byte[] interleaved, int width, int height, int channels)
    {
        if (channels != 1 && channels != 3) throw new ArgumentOutOfRangeException(nameof(channels));
        if (interleaved.Length != width * height * channels) throw new ArgumentException("Pixel buffer size does not match the image size.", nameof(interleaved));
        var info = channels == 1
            ? new SKImageInfo(width, height, SKColorType.Gray8, SKAlphaType.Opaque)
            : new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Opaque);
        using var bitmap = new SKBitmap(info);
        IntPtr dst = bitmap.GetPixels();
        int rowBytes = bitmap.RowBytes;
        if (channels == 1)
        {
            for (int y = 0; y < height; y++)
                Marshal.Copy(interleaved, y * width, dst + y * rowBytes, width);
        }
        else
        {
            var row = new byte[width * 4];
            for (int y = 0; y < height; y++)
            {
                for (int x = 0; x < width; x++)
                {
                    int s = (y * width + x) * 3;
                    row[4 * x] = interleaved[s];
                    row[4 * x + 1] = interleaved[s + 1];
                    row[4 * x + 2] = interleaved[s + 2];
                    row[4 * x + 3] = 255;
                }
                Marshal.Copy(row, 0, dst + y * rowBytes, row.Length);
            }
        }
        using SKData? data = bitmap.Encode(SKEncodedImageFormat.Png, 100);
        if (data is null) throw new PagSharpException($"Encoding a {width}x{height} {(channels == 1 ? "grayscale" : "RGB")} image as PNG failed.");
        return data.ToArray();
    }
}
