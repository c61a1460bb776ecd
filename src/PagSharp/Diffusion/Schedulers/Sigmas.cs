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
    /// diffusers' <c>_convert_to_karras</c> (Karras et al. 2022, eq. 5): n levels from σ_max down to σ_min,
    /// (σ_max^{1/ρ} + r·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for r = linspace(0, 1, n), ρ = 7, in float64.
    /// </summary>
    public static double[] Karras(double sigmaMin, double sigmaMax, int n, double rho = 7.0)
    {
        double minInv = Math.Pow(sigmaMin, 1 / rho), maxInv = Math.Pow(sigmaMax, 1 / rho);
        return DiffusersSchedule.NpLinspace(0, 1, n).Select(r => Math.Pow(maxInv + r * (minInv - maxInv), rho)).ToArray();
    }

    /// <summary>
    /// diffusers' <c>_sigma_to_t</c>: the fractional training timestep of σ, interpolating linearly in log σ between
    /// the two table entries around it (clamped to the table).
    /// </summary>
    public static double SigmaToT(double sigma, float[] logSigmas)
    {
        double ls = Math.Log(Math.Max(sigma, 1e-10));
        int low = 0;
        for (int i = 0; i < logSigmas.Length; i++) if (ls - logSigmas[i] >= 0) low = i; // the last entry ≤ log σ
        low = Math.Min(low, logSigmas.Length - 2);
        double lo = logSigmas[low], hi = logSigmas[low + 1];
        double w = Math.Clamp((lo - ls) / (lo - hi), 0, 1);
        return (1 - w) * low + w * (low + 1);
    }

    /// <summary>log σ of the training table, float32 as numpy's log of the float32 table.</summary>
    public static float[] LogTable(float[] table) => table.Select(v => MathF.Log(v)).ToArray();

    /// <summary>
    /// Karras levels for <paramref name="steps"/> steps between the table's σ(0) and σ(T−1) (or the config's
    /// overrides), and their timesteps (fractional; <paramref name="round"/> rounds half to even as numpy).
    /// </summary>
    public static (double[] Sigmas, double[] Timesteps) KarrasSchedule(SchedulerConfig c, float[] table, int steps, bool round)
    {
        var karras = Karras(c.SigmaMin ?? table[0], c.SigmaMax ?? table[^1], steps);
        var log = LogTable(table);
        var ts = karras.Select(s => SigmaToT(s, log)).Select(t => round ? DiffusersSchedule.Round(t) : t).ToArray();
        return (karras, ts);
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
