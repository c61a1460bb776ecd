namespace PagSharp.Imaging;

/// <summary>
/// Separable image resizing with an antialiased bilinear (triangle) filter: when shrinking, the filter is widened by
/// the scale factor so every source pixel contributes, which avoids the aliasing of plain bilinear sampling.
/// </summary>
internal static class Resampler
{
    /// <summary>Resizes <paramref name="channels"/> planes of <paramref name="h"/>×<paramref name="w"/> floats to <paramref name="outH"/>×<paramref name="outW"/>.</summary>
    public static float[] Resize(float[] planes, int channels, int h, int w, int outH, int outW)
    {
        var (xStart, xWeights, xTaps) = Weights(w, outW);
        var (yStart, yWeights, yTaps) = Weights(h, outH);

        // Horizontal pass: [C, h, outW].
        var tmp = new float[channels * h * outW];
        for (int c = 0; c < channels; c++)
            for (int y = 0; y < h; y++)
            {
                int srcRow = (c * h + y) * w, dstRow = (c * h + y) * outW;
                for (int x = 0; x < outW; x++)
                {
                    double acc = 0;
                    int s0 = xStart[x];
                    for (int k = 0; k < xTaps; k++)
                    {
                        double wt = xWeights[x * xTaps + k];
                        if (wt != 0) acc += wt * planes[srcRow + s0 + k];
                    }
                    tmp[dstRow + x] = (float)acc;
                }
            }

        // Vertical pass: [C, outH, outW].
        var result = new float[channels * outH * outW];
        for (int c = 0; c < channels; c++)
            for (int y = 0; y < outH; y++)
            {
                int s0 = yStart[y], dstRow = (c * outH + y) * outW;
                for (int x = 0; x < outW; x++)
                {
                    double acc = 0;
                    for (int k = 0; k < yTaps; k++)
                    {
                        double wt = yWeights[y * yTaps + k];
                        if (wt != 0) acc += wt * tmp[(c * h + s0 + k) * outW + x];
                    }
                    result[dstRow + x] = (float)acc;
                }
            }
        return result;
    }

    /// <summary>
    /// For each output index: the first source index it reads and normalised weights for a fixed number of taps
    /// (taps past the source edge get weight 0).
    /// </summary>
    private static (int[] start, double[] weights, int taps) Weights(int inSize, int outSize)
    {
        double scale = (double)inSize / outSize;
        double widen = Math.Max(scale, 1.0);
        double support = widen; // triangle filter has radius 1, widened when shrinking
        int taps = (int)Math.Ceiling(support) * 2 + 1;
        var start = new int[outSize];
        var weights = new double[outSize * taps];
        for (int i = 0; i < outSize; i++)
        {
            double center = (i + 0.5) * scale; // in source pixel coordinates, where pixel j spans [j, j+1)
            int lo = Math.Max(0, (int)Math.Floor(center - support));
            int hi = Math.Min(inSize, (int)Math.Ceiling(center + support));
            if (hi - lo > taps) hi = lo + taps;
            start[i] = lo;
            double sum = 0;
            for (int j = lo; j < hi; j++)
            {
                double wt = Math.Max(0, 1 - Math.Abs((j + 0.5 - center) / widen));
                weights[i * taps + (j - lo)] = wt;
                sum += wt;
            }
            if (sum <= 0)
            {
                // Cannot happen for sizes >= 1, but keep the nearest pixel rather than producing black.
                int nearest = Math.Clamp((int)center, 0, inSize - 1);
                start[i] = nearest;
                Array.Clear(weights, i * taps, taps);
                weights[i * taps] = 1;
                continue;
            }
            for (int k = 0; k < taps; k++) weights[i * taps + k] /= sum;
        }
        return (start, weights, taps);
    }
}
