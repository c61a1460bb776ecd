namespace PagSharp.Imaging;

/// <summary>An opaque 24-bit colour.</summary>
internal readonly record struct Rgb(byte R, byte G, byte B)
{
    public static readonly Rgb White = new(255, 255, 255);
    public static readonly Rgb Black = new(0, 0, 0);
}

/// <summary>
/// A plain RGB pixel buffer (row-major, 3 bytes per pixel) with the few drawing operations the grid and chart
/// writers need: rectangles, lines, and text in the built-in <see cref="BitmapFont"/>. Drawing is clipped to the
/// canvas and to an optional clip rectangle.
/// </summary>
internal sealed class RgbCanvas
{
    public int Width { get; }
    public int Height { get; }
    public byte[] Pixels { get; }

    private int _clipX0, _clipY0, _clipX1, _clipY1;

    public RgbCanvas(int width, int height, Rgb background)
    {
        if (width <= 0 || height <= 0) throw new ArgumentOutOfRangeException(nameof(width), $"Canvas size {width}x{height} must be positive.");
        if ((long)width * height > 1L << 28) throw new PagSharpException($"Canvas size {width}x{height} is too large; at most 2^28 pixels are supported.");
        Width = width;
        Height = height;
        Pixels = new byte[width * height * 3];
        ResetClip();
        FillRect(0, 0, width, height, background);
    }

    public void SetClip(int x, int y, int w, int h)
    {
        _clipX0 = Math.Max(0, x);
        _clipY0 = Math.Max(0, y);
        _clipX1 = Math.Min(Width, x + w);
        _clipY1 = Math.Min(Height, y + h);
    }

    public void ResetClip() => SetClip(0, 0, Width, Height);

    public Rgb GetPixel(int x, int y)
    {
        int i = (y * Width + x) * 3;
        return new Rgb(Pixels[i], Pixels[i + 1], Pixels[i + 2]);
    }

    public void SetPixel(int x, int y, Rgb c)
    {
        if (x < _clipX0 || y < _clipY0 || x >= _clipX1 || y >= _clipY1) return;
        int i = (y * Width + x) * 3;
        Pixels[i] = c.R;
        Pixels[i + 1] = c.G;
        Pixels[i + 2] = c.B;
    }

    public void FillRect(int x, int y, int w, int h, Rgb c)
    {
        int x0 = Math.Max(x, _clipX0), y0 = Math.Max(y, _clipY0);
        int x1 = Math.Min(x + w, _clipX1), y1 = Math.Min(y + h, _clipY1);
        for (int yy = y0; yy < y1; yy++)
            for (int xx = x0; xx < x1; xx++)
            {
                int i = (yy * Width + xx) * 3;
                Pixels[i] = c.R;
                Pixels[i + 1] = c.G;
                Pixels[i + 2] = c.B;
            }
    }

    /// <summary>Outline of a rectangle, one pixel wide, inside the given bounds.</summary>
    public void StrokeRect(int x, int y, int w, int h, Rgb c)
    {
        FillRect(x, y, w, 1, c);
        FillRect(x, y + h - 1, w, 1, c);
        FillRect(x, y, 1, h, c);
        FillRect(x + w - 1, y, 1, h, c);
    }

    /// <summary>A line from (x0, y0) to (x1, y1) (Bresenham), stamped with a square pen of side <paramref name="thickness"/>.</summary>
    public void DrawLine(int x0, int y0, int x1, int y1, Rgb c, int thickness = 1)
    {
        int off = (thickness - 1) / 2;
        int dx = Math.Abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
        int dy = -Math.Abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
        int err = dx + dy;
        while (true)
        {
            if (thickness <= 1) SetPixel(x0, y0, c);
            else FillRect(x0 - off, y0 - off, thickness, thickness, c);
            if (x0 == x1 && y0 == y1) break;
            int e2 = 2 * err;
            if (e2 >= dy) { err += dy; x0 += sx; }
            if (e2 <= dx) { err += dx; y0 += sy; }
        }
    }

    /// <summary>One line of text with its top-left corner at (x, y), each font cell drawn as a scale×scale square.</summary>
    public void DrawText(int x, int y, string text, int scale, Rgb c)
    {
        for (int k = 0; k < text.Length; k++)
        {
            int gx = x + k * BitmapFont.Advance * scale;
            for (int cy = 0; cy < BitmapFont.GlyphHeight; cy++)
                for (int cx = 0; cx < BitmapFont.GlyphWidth; cx++)
                    if (BitmapFont.IsInk(text[k], cx, cy))
                        FillRect(gx + cx * scale, y + cy * scale, scale, scale, c);
        }
    }

    /// <summary>
    /// Text rotated 90° counter-clockwise (reading bottom to top), for a vertical axis label. (x, y) is the top-left
    /// corner of its bounding box, which is <see cref="BitmapFont.MeasureHeight"/> wide and
    /// <see cref="BitmapFont.MeasureWidth"/> tall.
    /// </summary>
    public void DrawTextVertical(int x, int y, string text, int scale, Rgb c)
    {
        int length = BitmapFont.MeasureWidth(text, scale);
        for (int k = 0; k < text.Length; k++)
        {
            int along = k * BitmapFont.Advance * scale;
            for (int cy = 0; cy < BitmapFont.GlyphHeight; cy++)
                for (int cx = 0; cx < BitmapFont.GlyphWidth; cx++)
                    if (BitmapFont.IsInk(text[k], cx, cy))
                    {
                        // Horizontal position along the text becomes upward distance; glyph row becomes x.
                        int px = x + cy * scale;
                        int py = y + length - (along + (cx + 1) * scale);
                        FillRect(px, py, scale, scale, c);
                    }
        }
    }

    /// <summary>Copies an image given as bytes (channel-first, 1 or 3 channels) with its top-left at (x, y), enlarged by an integer factor (nearest neighbour).</summary>
    public void BlitChw(byte[] chw, int channels, int h, int w, int x, int y, int scale)
    {
        int plane = h * w;
        for (int sy = 0; sy < h; sy++)
            for (int sx = 0; sx < w; sx++)
            {
                int s = sy * w + sx;
                Rgb c = channels == 1
                    ? new Rgb(chw[s], chw[s], chw[s])
                    : new Rgb(chw[s], chw[plane + s], chw[2 * plane + s]);
                FillRect(x + sx * scale, y + sy * scale, scale, scale, c);
            }
    }

    /// <summary>Writes the canvas as an RGB PNG (atomically).</summary>
    public void SavePng(string path) => Png.WritePixels(path, Pixels, Width, Height, channels: 3);
}
