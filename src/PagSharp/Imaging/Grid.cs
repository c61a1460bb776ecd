using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Imaging;

/// <summary>Arranges batches of images into one picture: a plain tiled grid, or a labelled grid written as PNG.</summary>
public static class Grid
{
    /// <summary>
    /// Tiles <paramref name="images"/> [N,C,H,W] (values in [-1, 1]) into one image [C, H', W'], left to right and
    /// top to bottom, <paramref name="nrow"/> images per row (the last row may be incomplete). Every tile is
    /// surrounded by <paramref name="padding"/> pixels of <paramref name="padValue"/>, on the outer border too, so
    /// H' = rows·(H + padding) + padding and W' = min(N, nrow)·(W + padding) + padding. The default pad value 1 is
    /// white, which separates the dark backgrounds of digit samples clearly. Empty cells of the last row are filled
    /// with <paramref name="padValue"/>. Image i lies at row i / nrow, column i % nrow, with its top-left pixel at
    /// (padding + row·(H + padding), padding + column·(W + padding)).
    /// </summary>
    /// <exception cref="PagSharpException">The tensor is not [N,C,H,W] with N ≥ 1, or nrow/padding are out of range.</exception>
    public static Tensor Make(Tensor images, int nrow, int padding = 2, float padValue = 1f)
    {
        ArgumentNullException.ThrowIfNull(images);
        if (images.dim() != 4 || images.shape[0] < 1)
            throw new PagSharpException($"Grid.Make: the images tensor has shape [{string.Join(",", images.shape)}]; expected [N,C,H,W] with N >= 1.");
        if (nrow < 1) throw new PagSharpException($"Grid.Make: nrow = {nrow}; it must be at least 1 (images per row).");
        if (padding < 0) throw new PagSharpException($"Grid.Make: padding = {padding}; it must be 0 or more pixels.");

        long n = images.shape[0], c = images.shape[1], h = images.shape[2], w = images.shape[3];
        long cols = Math.Min(n, nrow), rows = (n + cols - 1) / cols;
        long gh = rows * (h + padding) + padding, gw = cols * (w + padding) + padding;
        using var source = images.detach();
        var grid = torch.full([c, gh, gw], padValue, dtype: images.dtype, device: images.device);
        for (long i = 0; i < n; i++)
        {
            long r = i / cols, col = i % cols;
            using var tile = grid.narrow(1, padding + r * (h + padding), h).narrow(2, padding + col * (w + padding), w);
            using var img = source[i];
            tile.copy_(img);
        }
        return grid;
    }

    /// <summary>Writes <see cref="Make"/>'s grid of <paramref name="images"/> as a PNG (see <see cref="Png.Save"/> for the byte mapping).</summary>
    public static void Save(string path, Tensor images, int nrow, int padding = 2, float padValue = 1f)
    {
        using var grid = Make(images, nrow, padding, padValue);
        Png.Save(path, grid);
    }

    /// <summary>
    /// Writes an RGB PNG showing <paramref name="images"/> [rows·cols, C, H, W] (C = 1 or 3, values in [-1, 1]) as a
    /// table: image r·cols + c goes to row r, column c. Each tile is enlarged <paramref name="scale"/> times
    /// (nearest neighbour) so small images such as 32×32 digits stay readable. A header row above the tiles shows
    /// <paramref name="columnLabels"/> (a column widens, up to twice the tile width, to fit its label; longer labels wrap onto
    /// several lines), and when
    /// <paramref name="rowLabels"/> is given a column on the left shows one label per row. Text is black on white,
    /// drawn with a built-in 5×7 pixel font (printable ASCII; common typographic characters are spelled in ASCII, others show as '?'), so no system fonts are
    /// needed. The file is written atomically.
    /// </summary>
    /// <exception cref="PagSharpException">The shape or label counts do not match, or an argument is out of range.</exception>
    public static void SaveLabelled(string path, Tensor images, int rows, int cols, IReadOnlyList<string> columnLabels,
        IReadOnlyList<string>? rowLabels = null, int scale = 2)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(columnLabels);
        string ctx = $"Cannot write labelled grid '{path}'";
        if (rows < 1 || cols < 1) throw new PagSharpException($"{ctx}: rows = {rows} and cols = {cols}; both must be at least 1.");
        if (scale < 1 || scale > 64) throw new PagSharpException($"{ctx}: scale = {scale}; it must be an integer from 1 to 64.");
        if (images.dim() != 4 || images.shape[0] != (long)rows * cols || (images.shape[1] != 1 && images.shape[1] != 3))
            throw new PagSharpException(
                $"{ctx}: the images tensor has shape [{string.Join(",", images.shape)}]; expected [{rows * cols},C,H,W] (rows·cols images) with C = 1 or 3.");
        if (columnLabels.Count != cols) throw new PagSharpException($"{ctx}: {columnLabels.Count} column labels for {cols} columns; give exactly one per column.");
        if (rowLabels is not null && rowLabels.Count != rows) throw new PagSharpException($"{ctx}: {rowLabels.Count} row labels for {rows} rows; give exactly one per row, or none.");

        columnLabels = columnLabels.Select(l => BitmapFont.Printable(l ?? "")).ToArray();
        rowLabels = rowLabels?.Select(l => BitmapFont.Printable(l ?? "")).ToArray();
        int c = (int)images.shape[1], h = (int)images.shape[2], w = (int)images.shape[3];
        int tileW = w * scale, tileH = h * scale;
        const int gap = 2, margin = 4;

        // Text at scale 2 when tiles are enlarged, else 1. A column is as wide as its tile, widened (up to twice the
        // tile width) so the longest label fits with room to spare; longer labels wrap onto several lines.
        int textScale = scale >= 2 ? 2 : 1;
        const int labelRoom = 12; // keeps neighbouring column labels visibly apart
        int longest = columnLabels.Max(l => (l ?? "").Length);
        int colW = Math.Clamp(BitmapFont.MeasureWidth(new string('x', longest), textScale) + labelRoom, tileW, 2 * tileW);
        int maxChars = Math.Max(1, (colW - labelRoom + textScale) / (BitmapFont.Advance * textScale));
        List<string>[] headerLines = columnLabels.Select(l => Wrap(l ?? "", maxChars)).ToArray();
        int lineH = BitmapFont.LineHeight * textScale;
        int headerLineCount = Math.Max(1, headerLines.Max(l => l.Count));
        int headerH = margin + headerLineCount * lineH + margin;

        int rowLabelW = 0;
        if (rowLabels is not null)
            rowLabelW = margin + rowLabels.Max(l => BitmapFont.MeasureWidth(l ?? "", textScale)) + margin;

        int gridX = rowLabelW + gap, gridY = headerH;
        int width = gridX + cols * (colW + gap);
        int height = gridY + rows * (tileH + gap);
        var canvas = new RgbCanvas(width, height, Rgb.White);

        for (int col = 0; col < cols; col++)
        {
            int x0 = gridX + col * (colW + gap);
            List<string> lines = headerLines[col];
            int y = margin + (headerLineCount - lines.Count) * lineH; // bottom-align labels above their tiles
            foreach (string line in lines)
            {
                int tx = x0 + (colW - BitmapFont.MeasureWidth(line, textScale)) / 2;
                canvas.DrawText(Math.Max(x0, tx), y, line, textScale, Rgb.Black);
                y += lineH;
            }
        }
        if (rowLabels is not null)
            for (int r = 0; r < rows; r++)
            {
                int ty = gridY + r * (tileH + gap) + (tileH - BitmapFont.MeasureHeight(textScale)) / 2;
                canvas.DrawText(margin, ty, rowLabels[r] ?? "", textScale, Rgb.Black);
            }

        byte[] all = Png.ToBytes(images, ctx);
        int per = c * h * w;
        var tileBytes = new byte[per];
        for (int i = 0; i < rows * cols; i++)
        {
            Array.Copy(all, (long)i * per, tileBytes, 0, per);
            int r = i / cols, col = i % cols;
            canvas.BlitChw(tileBytes, c, h, w, gridX + col * (colW + gap) + (colW - tileW) / 2, gridY + r * (tileH + gap), scale);
        }
        canvas.SavePng(path);
    }

    /// <summary>Greedy word wrap to at most <paramref name="maxChars"/> characters a line; over-long words are split.</summary>
    internal static List<string> Wrap(string text, int maxChars)
    {
        var lines = new List<string>();
        string current = "";
        foreach (string word in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            string rest = word;
            if (current.Length > 0 && current.Length + 1 + rest.Length <= maxChars)
            {
                current += " " + rest;
                continue;
            }
            if (current.Length > 0) { lines.Add(current); current = ""; }
            while (rest.Length > maxChars)
            {
                lines.Add(rest[..maxChars]);
                rest = rest[maxChars..];
            }
            current = rest;
        }
        if (current.Length > 0 || lines.Count == 0) lines.Add(current);
        return lines;
    }
}
