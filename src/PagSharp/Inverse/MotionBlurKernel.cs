using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Inverse;

/// <summary>
/// A motion-blur kernel from a seeded random camera trajectory (in the spirit of the kernels DPS evaluates with):
/// a point starts at the centre and takes 4·size small steps whose direction drifts randomly; <c>intensity</c> ∈ [0,1]
/// scales both the drift and the path length. The path is splatted bilinearly into a size×size grid and normalised
/// to sum 1.
/// </summary>
public static class MotionBlurKernel
{
    public static Tensor Create(int size, double intensity, long seed)
    {
        var rng = new Random(unchecked((int)seed ^ 0x3c6ef372));
        var k = new double[size, size];
        int steps = 4 * size;
        double angle = rng.NextDouble() * 2 * Math.PI, x = 0, y = 0;
        double stepLength = (size - 1) / 2.0 * Math.Max(intensity, 0.05) / steps * 2;
        var pts = new List<(double X, double Y)> { (0, 0) };
        for (int i = 0; i < steps; i++)
        {
            angle += (rng.NextDouble() - 0.5) * 2 * Math.PI * 0.25 * intensity;
            x += stepLength * Math.Cos(angle);
            y += stepLength * Math.Sin(angle);
            pts.Add((x, y));
        }
        // Centre the path and keep it inside the grid.
        double mx = pts.Average(p => p.X), my = pts.Average(p => p.Y), half = (size - 1) / 2.0;
        foreach (var (px, py) in pts)
        {
            double cx = Math.Clamp(px - mx + half, 0, size - 1), cy = Math.Clamp(py - my + half, 0, size - 1);
            int x0 = (int)Math.Floor(cx), y0 = (int)Math.Floor(cy);
            double fx = cx - x0, fy = cy - y0;
            void Add(int yy, int xx, double w) { if (yy < size && xx < size) k[yy, xx] += w; }
            Add(y0, x0, (1 - fx) * (1 - fy));
            Add(y0, x0 + 1, fx * (1 - fy));
            Add(y0 + 1, x0, (1 - fx) * fy);
            Add(y0 + 1, x0 + 1, fx * fy);
        }
        double sum = 0;
        foreach (var v in k) sum += v;
        var flat = new float[size * size];
        for (int i = 0; i < size; i++)
            for (int j = 0; j < size; j++) flat[i * size + j] = (float)(k[i, j] / sum);
        return tensor(flat).reshape(size, size);
    }
}
