using System.Globalization;

namespace PagSharp.Imaging;

/// <summary>
/// Draws simple line charts (training-loss curves, FID against guidance scale) as PNG files, with axes, numbered
/// ticks, light grid lines, a title, axis labels and a legend, all in the built-in pixel font.
/// </summary>
public static class LinePlot
{
    private static readonly Rgb[] Palette =
    [
        new(0, 90, 200), new(230, 110, 0), new(0, 150, 60), new(200, 30, 40), new(130, 70, 180),
        new(120, 80, 50), new(220, 80, 170), new(90, 90, 90), new(160, 160, 0), new(0, 170, 190),
    ];

    private static readonly Rgb GridColour = new(225, 225, 225);
    private static readonly Rgb AxisColour = new(60, 60, 60);

    /// <summary>
    /// Writes a line chart of <paramref name="series"/> as an RGB PNG of <paramref name="width"/>×<paramref name="height"/> pixels.
    /// </summary>
    /// <param name="path">Output file (written atomically).</param>
    /// <param name="series">
    /// Named series of (x, y) points, each drawn as a polyline in point order with its own colour (ten colours, then
    /// repeating). Points with a non-finite coordinate (or y ≤ 0 when <paramref name="logY"/>) are skipped and break
    /// the line. Series with at most 40 points also get a small square marker at each point.
    /// </param>
    /// <param name="title">Text centred above the plot.</param>
    /// <param name="xLabel">Label under the x axis.</param>
    /// <param name="yLabel">Label beside the y axis, reading upwards.</param>
    /// <param name="logY">Logarithmic y axis (ticks at powers of ten, plus 2× and 5× when the range is small).</param>
    /// <param name="width">Image width in pixels (at least 200).</param>
    /// <param name="height">Image height in pixels (at least 150).</param>
    /// <exception cref="PagSharpException">No plottable point, or the size is too small.</exception>
    public static void Save(string path, IReadOnlyList<(string name, IReadOnlyList<(double x, double y)> points)> series,
        string title, string xLabel, string yLabel, bool logY = false, int width = 800, int height = 500)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(series);
        string ctx = $"Cannot write chart '{path}'";
        if (width < 200 || height < 150 || width > 8000 || height > 8000)
            throw new PagSharpException($"{ctx}: size {width}x{height} is out of range; width must be 200 to 8000 and height 150 to 8000 pixels.");
        title = BitmapFont.Printable(title ?? "");
        xLabel = BitmapFont.Printable(xLabel ?? "");
        yLabel = BitmapFont.Printable(yLabel ?? "");
        series = series.Select(s => (BitmapFont.Printable(s.name ?? ""), s.points)).ToArray();

        bool Usable((double x, double y) p) => double.IsFinite(p.x) && double.IsFinite(p.y) && (!logY || p.y > 0);
        var usable = series.SelectMany(s => s.points ?? []).Where(Usable).ToList();
        if (usable.Count == 0)
            throw new PagSharpException($"{ctx}: no series has a plottable point (finite x and y{(logY ? ", y > 0 for a log axis" : "")}).");

        var xAxis = Axis.Linear(usable.Min(p => p.x), usable.Max(p => p.x));
        var yAxis = logY ? Axis.Log(usable.Min(p => p.y), usable.Max(p => p.y)) : Axis.Linear(usable.Min(p => p.y), usable.Max(p => p.y));

        const int ts = 2; // text scale
        int textH = BitmapFont.MeasureHeight(ts);
        const int pad = 10, tickLen = 5;
        int yTickW = yAxis.Ticks.Max(t => BitmapFont.MeasureWidth(t.label, ts));
        int left = pad + (yLabel.Length > 0 ? textH + pad : 0) + yTickW + tickLen + 4;
        int right = width - 20 - BitmapFont.MeasureWidth(xAxis.Ticks[^1].label, ts) / 2;
        int top = pad + (title.Length > 0 ? textH + pad : 0) + 4;
        int bottom = height - (pad + tickLen + 4 + textH + (xLabel.Length > 0 ? pad + textH : 0) + 4);
        if (right - left < 60 || bottom - top < 40)
            throw new PagSharpException($"{ctx}: size {width}x{height} leaves no room for the plot area; use a larger width/height or shorter tick labels.");

        var canvas = new RgbCanvas(width, height, Rgb.White);
        int PxX(double x) => left + (int)Math.Round(xAxis.Fraction(x) * (right - left));
        int PxY(double y) => bottom - (int)Math.Round(yAxis.Fraction(y) * (bottom - top));

        // Grid lines and ticks.
        foreach (var (value, label) in xAxis.Ticks)
        {
            int x = PxX(value);
            canvas.FillRect(x, top, 1, bottom - top, GridColour);
            canvas.FillRect(x, bottom, 1, tickLen, AxisColour);
            int lw = BitmapFont.MeasureWidth(label, ts);
            canvas.DrawText(x - lw / 2, bottom + tickLen + 4, label, ts, Rgb.Black);
        }
        foreach (var (value, label) in yAxis.Ticks)
        {
            int y = PxY(value);
            canvas.FillRect(left, y, right - left, 1, GridColour);
            canvas.FillRect(left - tickLen, y, tickLen, 1, AxisColour);
            int lw = BitmapFont.MeasureWidth(label, ts);
            canvas.DrawText(left - tickLen - 4 - lw, y - textH / 2, label, ts, Rgb.Black);
        }
        canvas.StrokeRect(left, top, right - left + 1, bottom - top + 1, AxisColour);

        // Title and axis labels.
        if (title.Length > 0)
            canvas.DrawText((width - BitmapFont.MeasureWidth(title, ts)) / 2, pad, title, ts, Rgb.Black);
        if (xLabel.Length > 0)
            canvas.DrawText(left + (right - left - BitmapFont.MeasureWidth(xLabel, ts)) / 2, height - pad - textH, xLabel, ts, Rgb.Black);
        if (yLabel.Length > 0)
            canvas.DrawTextVertical(pad, top + (bottom - top - BitmapFont.MeasureWidth(yLabel, ts)) / 2, yLabel, ts, Rgb.Black);

        // Series, clipped to the plot area.
        canvas.SetClip(left + 1, top + 1, right - left - 1, bottom - top - 1);
        for (int s = 0; s < series.Count; s++)
        {
            Rgb colour = Palette[s % Palette.Length];
            var points = series[s].points ?? [];
            bool markers = points.Count <= 40;
            (int x, int y)? previous = null;
            foreach (var p in points)
            {
                if (!Usable(p)) { previous = null; continue; }
                var cur = (PxX(p.x), PxY(p.y));
                if (previous is { } prev) canvas.DrawLine(prev.x, prev.y, cur.Item1, cur.Item2, colour, 2);
                else canvas.FillRect(cur.Item1, cur.Item2, 2, 2, colour);
                if (markers) canvas.FillRect(cur.Item1 - 2, cur.Item2 - 2, 5, 5, colour);
                previous = cur;
            }
        }
        canvas.ResetClip();

        // Legend in the corner of the plot area that hides the fewest points of the lines (top-right on a tie).
        var named = Enumerable.Range(0, series.Count).Where(i => !string.IsNullOrEmpty(series[i].name)).ToList();
        if (named.Count > 0)
        {
            const int swatch = 24, inner = 6;
            int lineH = BitmapFont.LineHeight * ts + 2;
            int textW = named.Max(i => BitmapFont.MeasureWidth(series[i].name, ts));
            int boxW = inner + swatch + inner + textW + inner, boxH = inner + named.Count * lineH - 2 + inner;
            var corners = new[]
            {
                (x: Math.Max(left + 2, right - 6 - boxW), y: top + 6), (x: left + 6, y: top + 6),
                (x: Math.Max(left + 2, right - 6 - boxW), y: Math.Max(top + 2, bottom - 6 - boxH)), (x: left + 6, y: Math.Max(top + 2, bottom - 6 - boxH)),
            };
            var (bx, by) = corners.MinBy(c => HiddenPoints(c.x, c.y, boxW, boxH));

            canvas.FillRect(bx, by, boxW, boxH, Rgb.White);
            canvas.StrokeRect(bx, by, boxW, boxH, AxisColour);
            for (int k = 0; k < named.Count; k++)
            {
                int i = named[k];
                int ly = by + inner + k * lineH;
                canvas.FillRect(bx + inner, ly + textH / 2 - 1, swatch, 3, Palette[i % Palette.Length]);
                canvas.DrawText(bx + inner + swatch + inner, ly, series[i].name, ts, Rgb.Black);
            }
        }

        canvas.SavePng(path);

        // Points sampled along every drawn segment (20 per segment) that a legend box at (x, y) would cover.
        int HiddenPoints(int x, int y, int w, int h)
        {
            int hidden = 0;
            foreach (var (_, points) in series)
            {
                (double x, double y)? previous = null;
                foreach (var p in points ?? [])
                {
                    if (!Usable(p)) { previous = null; continue; }
                    var a = previous ?? p;
                    for (int k = 0; k <= 20; k++)
                    {
                        int px = PxX(a.x + (p.x - a.x) * k / 20), py = PxY(a.y + (p.y - a.y) * k / 20);
                        if (px >= x && px <= x + w && py >= y && py <= y + h) hidden++;
                    }
                    previous = p;
                }
            }
            return hidden;
        }
    }

    /// <summary>An axis: maps data values to [0, 1] and lists labelled tick values.</summary>
    private sealed class Axis
    {
        public required Func<double, double> Fraction { get; init; }
        public required List<(double value, string label)> Ticks { get; init; }

        public static Axis Linear(double min, double max)
        {
            if (max - min <= Math.Abs(max) * 1e-12 || max - min == 0)
            {
                double d = min == 0 ? 1 : Math.Abs(min) * 0.1;
                min -= d;
                max += d;
            }
            double step = NiceStep((max - min) / 5);
            double lo = Math.Floor(min / step) * step, hi = Math.Ceiling(max / step) * step;
            var ticks = new List<(double, string)>();
            long count = (long)Math.Round((hi - lo) / step);
            for (long k = 0; k <= count; k++)
            {
                double v = lo + k * step;
                if (Math.Abs(v) < step * 1e-9) v = 0;
                ticks.Add((v, Format(v, step)));
            }
            return new Axis { Fraction = v => (v - lo) / (hi - lo), Ticks = ticks };
        }

        public static Axis Log(double min, double max)
        {
            int l0 = (int)Math.Floor(Math.Log10(min)), l1 = (int)Math.Ceiling(Math.Log10(max));
            if (l1 <= l0) l1 = l0 + 1;
            int decades = l1 - l0;
            int stride = Math.Max(1, (int)Math.Ceiling(decades / 8.0));
            var ticks = new List<(double, string)>();
            for (int k = l0; k <= l1; k += stride)
            {
                double v = Math.Pow(10, k);
                ticks.Add((v, Format(v, v)));
                if (decades <= 2 && k < l1)
                    foreach (double m in new[] { 2.0, 5.0 })
                        ticks.Add((m * v, Format(m * v, v)));
            }
            return new Axis { Fraction = v => (Math.Log10(v) - l0) / decades, Ticks = ticks };
        }

        private static double NiceStep(double raw)
        {
            double mag = Math.Pow(10, Math.Floor(Math.Log10(raw)));
            double f = raw / mag;
            double nice = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
            return nice * mag;
        }

        /// <summary>Short tick text: plain decimals with as many places as the tick spacing needs, or 1.5e-5 style for very large/small values.</summary>
        private static string Format(double v, double step)
        {
            if (v == 0) return "0";
            double a = Math.Abs(v);
            if (a >= 1e6 || a < 1e-4) return v.ToString("0.##e0", CultureInfo.InvariantCulture);
            int decimals = Math.Clamp(-(int)Math.Floor(Math.Log10(step) + 1e-9), 0, 6);
            return v.ToString("F" + decimals, CultureInfo.InvariantCulture);
        }
    }
}
