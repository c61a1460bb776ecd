using System.Globalization;

namespace PagSharp.Diffusion;

/// <summary>guided-diffusion's <c>space_timesteps</c>: which original timesteps a respaced process keeps.</summary>
public static class Respacing
{
    /// <summary>
    /// <paramref name="spec"/>: empty (all steps), <c>ddimN</c> (evenly strided, starting at 0, exactly N steps), a
    /// number <c>N</c>, or comma-separated section counts <c>"10,10,10"</c> (each section of the original range gets
    /// that many evenly spaced steps, rounded half-to-even as Python does).
    /// </summary>
    public static int[] SpaceTimesteps(int numTimesteps, string spec)
    {
        spec = spec.Trim();
        if (spec.Length == 0) return Enumerable.Range(0, numTimesteps).ToArray();
        if (spec.StartsWith("ddim", StringComparison.Ordinal))
        {
            if (!int.TryParse(spec[4..], NumberStyles.None, CultureInfo.InvariantCulture, out int desired) || desired < 1)
                throw new PagSharpException($"timestep respacing '{spec}': expected ddimN with N ≥ 1");
            for (int stride = 1; stride < numTimesteps; stride++)
                if ((numTimesteps + stride - 1) / stride == desired)
                    return Enumerable.Range(0, desired).Select(k => k * stride).ToArray();
            if (desired == numTimesteps) return Enumerable.Range(0, numTimesteps).ToArray();
            throw new PagSharpException($"timestep respacing '{spec}': cannot create exactly {desired} steps with an integer stride from {numTimesteps}; use plain '{desired}' instead");
        }
        var counts = spec.Split(',').Select(s => int.TryParse(s.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out int c) ? c
            : throw new PagSharpException($"timestep respacing '{spec}': '{s}' is not a number; valid forms: ddimN, N, or \"N1,N2,…\"")).ToArray();
        int sizePer = numTimesteps / counts.Length, extra = numTimesteps % counts.Length, start = 0;
        var all = new SortedSet<int>();
        for (int i = 0; i < counts.Length; i++)
        {
            int size = sizePer + (i < extra ? 1 : 0);
            if (counts[i] < 1 || size < counts[i])
                throw new PagSharpException($"timestep respacing '{spec}': cannot divide a section of {size} steps into {counts[i]}");
            double frac = counts[i] <= 1 ? 1 : (size - 1) / (double)(counts[i] - 1), cur = 0;
            for (int k = 0; k < counts[i]; k++)
            {
                all.Add(start + (int)Math.Round(cur, MidpointRounding.ToEven));
                cur += frac;
            }
            start += size;
        }
        return all.ToArray();
    }
}
