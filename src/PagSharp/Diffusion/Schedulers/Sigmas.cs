namespace PagSharp.Diffusion.Schedulers;

/// <summary>The σ grids of diffusers' Euler and DPM-Solver schedulers.</summary>
internal static class Sigmas
{
    /// <summary>σ_t = √((1 − ᾱ_t)/ᾱ_t) per training step, in float32 as diffusers' torch expression.</summary>
    public static float[] Training(float[] alphasCumprod) => alphasCumprod.Select(a => MathF.Sqrt((1f - a) / a)).ToArray();

    /// <summary>numpy's <c>np.interp(x, arange(len(fp)), fp)</c> in float64.</summary>
    public static double Interp(double x, float[] fp)
    {
        if (x <= 0) return fp[0];
        if (x >= fp.Length - 1) return fp[^1];
        int j = (int)Math.Floor(x);
        if (x == j) return fp[j];
        double slope = ((double)fp[j + 1] - fp[j]) / 1.0;
        return slope * (x - j) + fp[j];
    }

    /// <summary>
    /// Float timesteps as diffusers' Euler schedulers make them (float32): linspace(0, T−1, n) reversed; leading:
    /// round(i·⌊T/n⌋) reversed + steps_offset; trailing: round(arange(T, 0, −T/n)) − 1.
    /// </summary>
    public static float[] EulerTimesteps(SchedulerConfig c, int steps, string spacing)
    {
        int T = c.NumTrainTimesteps;
        return spacing switch
        {
            "linspace" => DiffusersSchedule.NpLinspace(0, T - 1, steps).Select(v => (float)v).Reverse().ToArray(),
            "leading" => Enumerable.Range(0, steps).Select(i => DiffusersSchedule.Round(i * (double)(T / steps))).Reverse()
                .Select(v => (float)v + c.StepsOffset).ToArray(),
            "trailing" => DiffusersSchedule.NpArange(T, 0, -(double)T / steps).Select(v => (float)DiffusersSchedule.Round(v) - 1f).ToArray(),
            _ => throw new PagSharpException($"unknown timestep_spacing '{spacing}'"),
        };
    }
}
