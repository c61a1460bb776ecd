namespace PagSharp.Diffusion;

/// <summary>Named β schedules of guided-diffusion (<c>get_named_beta_schedule</c>), in float64.</summary>
public static class BetaSchedules
{
    public static double[] Get(string name, int steps) => name switch
    {
        "linear" => Linear(steps),
        "cosine" => Cosine(steps),
        _ => throw new PagSharpException($"unknown noise schedule '{name}'; valid: linear, cosine"),
    };

    /// <summary>Ho et al. 2020: β from 1e-4 to 0.02, scaled by 1000/steps; numpy.linspace arithmetic.</summary>
    public static double[] Linear(int steps)
    {
        double scale = 1000.0 / steps, start = scale * 0.0001, end = scale * 0.02;
        var b = new double[steps];
        if (steps == 1) { b[0] = start; return b; }
        double step = (end - start) / (steps - 1);
        for (int i = 0; i < steps; i++) b[i] = i * step + start;
        b[steps - 1] = end;
        return b;
    }

    /// <summary>Nichol &amp; Dhariwal 2021, eq. 17: ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2), β clipped at 0.999.</summary>
    public static double[] Cosine(int steps)
    {
        static double AlphaBar(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);
        var b = new double[steps];
        for (int i = 0; i < steps; i++)
            b[i] = Math.Min(1 - AlphaBar((i + 1.0) / steps) / AlphaBar((double)i / steps), 0.999);
        return b;
    }
}
