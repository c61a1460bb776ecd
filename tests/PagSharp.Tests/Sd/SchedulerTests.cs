using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Sampling;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>Euler, Euler ancestral and DPM-Solver++(2M) against facts of their diffusers counterparts.</summary>
public class SchedulerTests
{
    /// <summary>Stable Diffusion's scheduler settings (scaled_linear 0.00085 → 0.012, 1000 steps).</summary>
    private static SchedulerConfig Sd(string? spacing = null, string prediction = "epsilon") => SchedulerConfig.FromJson(
        "{\"beta_start\": 0.00085, \"beta_end\": 0.012, \"beta_schedule\": \"scaled_linear\", \"num_train_timesteps\": 1000, " +
        "\"set_alpha_to_one\": false, \"clip_sample\": false, \"steps_offset\": 1, \"lambda_min_clipped\": -Infinity" +
        (spacing is null ? "" : $", \"timestep_spacing\": \"{spacing}\"") + $", \"prediction_type\": \"{prediction}\"}}", "test");

    [Fact]
    public void TimestepGrids_MatchDiffusers()
    {
        Assert.Equal(new[] { 999, 949, 899, 849, 799, 749, 699, 649, 599, 549, 500, 450, 400, 350, 300, 250, 200, 150, 100, 50 },
            new DpmSolverMultistepScheduler(Sd(), 20).Timesteps.Select(t => (int)t));
        var euler = new EulerScheduler(Sd(), 30, ancestral: false);
        Assert.Equal(999f, euler.Timesteps[0]);
        Assert.Equal(0f, euler.Timesteps[^1]);
        Assert.Equal(999.0 - 999.0 / 29, euler.Timesteps[1], 3);
        // SD's σ_max ≈ 14.6146; linspace spacing scales x_T by σ_max itself, leading by √(σ_max² + 1).
        Assert.Equal(14.6146, euler.InitNoiseSigma, 3);
        Assert.Equal(0f, euler.SigmaGrid[^1]);
        var leading = new EulerScheduler(Sd("leading"), 50, ancestral: false);
        Assert.Equal(981f, leading.Timesteps[0]);
        Assert.Equal(Math.Sqrt(Math.Pow(leading.SigmaGrid[0], 2) + 1), leading.InitNoiseSigma, 4);
        Assert.Equal(new[] { 999, 799, 599, 399, 199 }, new DpmSolverMultistepScheduler(Sd("trailing"), 5).Timesteps.Select(t => (int)t));
        Assert.Throws<PagSharpException>(() => SchedulerConfig.FromJson("{\"timestep_spacing\": \"karras\"}", "s"));
    }

    public static TheoryData<string, string> All => new()
    {
        { "ddim", "epsilon" }, { "euler", "epsilon" }, { "euler-a", "epsilon" }, { "dpmpp-2m", "epsilon" },
        { "ddim", "v_prediction" }, { "euler", "v_prediction" }, { "euler-a", "v_prediction" }, { "dpmpp-2m", "v_prediction" },
    };

    /// <summary>
    /// With a perfect denoiser (the model output is the ε or v that corresponds to a fixed x̂₀ at the current noise
    /// level), every sampler ends at x̂₀ (DDIM with ᾱ = 1 after the last step).
    /// </summary>
    [Theory]
    [MemberData(nameof(All))]
    public void PerfectDenoiser_EndsAtItsPrediction(string name, string prediction)
    {
        var cfg = Sd(prediction: prediction) with { SetAlphaToOne = true };
        var s = Schedulers.Create(name, cfg, 12);
        var ac = DiffusersSchedule.AlphasCumprod(cfg);
        manual_seed(1);
        var x0 = rand(2, 4, 8, 8) * 2 - 1;
        using var noise = new NoiseSource(new long[] { 5, 6 });
        var x = noise.Randn(4, 8, 8) * s.InitNoiseSigma;
        for (int i = 0; i < s.Timesteps.Count; i++)
        {
            // The noise level of x at this step, as the scheduler sees it.
            double sigma = s is EulerScheduler e ? e.SigmaGrid[i] : Math.Sqrt((1 - Ac(ac, s.Timesteps[i])) / Ac(ac, s.Timesteps[i]));
            double a = 1 / Math.Sqrt(sigma * sigma + 1), sg = sigma * a; // x = (x0 + σ ε)·α in the α-scaled (VP) view
            var xVp = s is EulerScheduler ? x * a : x;
            var eps = (xVp / a - x0) / sigma;
            var output = prediction == "epsilon" ? eps : a * eps - sg * x0;
            x = s.Step(new ModelOutput(output.to_type(ScalarType.Float32), null), i, x, noise);
        }
        Models.Close.Assert(x0, x, 2e-4, $"{name} {prediction}: final sample vs x̂₀");
    }

    private static double Ac(float[] ac, float t) => ac[(int)t];
}
