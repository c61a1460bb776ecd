using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// Training noise schedule and inference timesteps exactly as diffusers computes them: betas and ᾱ in float32 with
/// torch ops; timestep grids as numpy (float64 arithmetic, round half to even).
/// </summary>
public static class DiffusersSchedule
{
    /// <summary>
    /// betas [T] float32: <c>linear</c> = linspace(β₀, β₁, T); <c>scaled_linear</c> = linspace(√β₀, √β₁, T)²;
    /// <c>squaredcos_cap_v2</c> = the cosine ᾱ schedule (Nichol &amp; Dhariwal) with β ≤ 0.999, computed in float64 then cast.
    /// </summary>
    public static Tensor Betas(SchedulerConfig c)
    {
        int n = c.NumTrainTimesteps;
        if (c.TrainedBetas is { } tb) return tensor(tb);
        return c.BetaSchedule switch
        {
            "linear" => linspace(c.BetaStart, c.BetaEnd, n, dtype: ScalarType.Float32),
            "scaled_linear" => linspace(Math.Sqrt(c.BetaStart), Math.Sqrt(c.BetaEnd), n, dtype: ScalarType.Float32).pow(2),
            "squaredcos_cap_v2" => tensor(Enumerable.Range(0, n).Select(i =>
                (float)Math.Min(1 - AlphaBarCosine((i + 1) / (double)n) / AlphaBarCosine(i / (double)n), 0.999)).ToArray()),
            _ => throw new PagSharpException($"unknown beta_schedule '{c.BetaSchedule}'"),
        };
    }

    private static double AlphaBarCosine(double t) => Math.Pow(Math.Cos((t + 0.008) / 1.008 * Math.PI / 2), 2);

    /// <summary>ᾱ = cumprod(1 − β) in float32, as a float array.</summary>
    public static float[] AlphasCumprod(SchedulerConfig c)
    {
        using var betas = Betas(c);
        using var ac = (1 - betas).cumprod(0);
        return ac.data<float>().ToArray();
    }

    /// <summary>numpy's <c>np.linspace(start, stop, num)</c> (endpoint included) in float64.</summary>
    public static double[] NpLinspace(double start, double stop, int num)
    {
        if (num == 1) return new[] { start };
        double step = (stop - start) / (num - 1);
        var y = new double[num];
        for (int i = 0; i < num; i++) y[i] = i * step + start;
        y[num - 1] = stop;
        return y;
    }

    /// <summary>numpy's <c>np.arange(start, stop, step)</c> in float64.</summary>
    public static double[] NpArange(double start, double stop, double step)
    {
        int len = (int)Math.Ceiling((stop - start) / step);
        double delta = start + step - start; // numpy fills start + i·(second − first)
        return Enumerable.Range(0, Math.Max(0, len)).Select(i => start + i * delta).ToArray();
    }

    /// <summary>Rounds half to even, like numpy's <c>round</c>.</summary>
    public static double Round(double v) => Math.Round(v, MidpointRounding.ToEven);

    /// <summary>
    /// The integer timesteps of diffusers' multistep solvers (DPM-Solver, UniPC) for <paramref name="steps"/> steps:
    /// <c>linspace</c> (default) round(linspace(0, T−1, n+1)) reversed without the last; <c>leading</c>
    /// round(i·⌊T/(n+1)⌋) reversed without the last, + steps_offset; <c>trailing</c> round(arange(T, 0, −T/n)) − 1.
    /// </summary>
    public static int[] MultistepTimesteps(SchedulerConfig config, int steps, string scheduler)
    {
        int T = config.NumTrainTimesteps;
        string spacing = config.TimestepSpacing ?? "linspace";
        return spacing switch
        {
            "linspace" => NpLinspace(0, T - 1, steps + 1).Select(v => (int)Round(v)).Reverse().Take(steps).ToArray(),
            "leading" => Enumerable.Range(0, steps + 1).Select(i => (int)Round(i * (double)(T / (steps + 1)))).Reverse().Take(steps)
                .Select(t => t + config.StepsOffset).ToArray(),
            "trailing" => NpArange(T, 0, -(double)T / steps).Select(v => (int)Round(v) - 1).ToArray(),
            _ => throw new PagSharpException($"{scheduler}: unknown timestep_spacing '{spacing}'"),
        };
    }

    public static void CheckSteps(int steps, SchedulerConfig c, string scheduler)
    {
        if (steps < 1) throw new PagSharpException($"{scheduler}: the number of inference steps must be ≥ 1 (got {steps})");
        if (steps > c.NumTrainTimesteps)
            throw new PagSharpException($"{scheduler}: {steps} inference steps exceed num_train_timesteps {c.NumTrainTimesteps}");
    }
}
