using System.Text.Json.Nodes;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.IO;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Diffusion;

/// <summary>
/// The schedulers against diffusers v0.37.1 trajectories (tests/fixtures/README.md §11): timesteps, σ grid, and every
/// step fed the recorded model output and sample, compared with diffusers' next sample.
/// </summary>
public sealed class SchedulerFixtureTests
{
    private static readonly Lazy<Dictionary<string, Tensor>> Tensors = new(() => SafeTensors.Load(Fixtures.Path("schedulers", "schedulers.safetensors")));
    private static readonly Lazy<JsonNode> Json = new(() => JsonNode.Parse(File.ReadAllText(Fixtures.Path("schedulers", "schedulers.json")))!);

    private static SchedulerConfig ConfigOf(string run)
    {
        var r = Json.Value["runs"]![run]!;
        var cfg = r["config"]!.AsObject().DeepClone().AsObject();
        cfg["_class_name"] = (string)r["class"]!;
        cfg.Remove("lambda_min_clipped"); // "-inf" in the fixture (the default)
        return SchedulerConfig.FromJson(cfg.ToJsonString(), "schedulers.json:" + run);
    }

    [Theory]
    [InlineData("unipc", "unipc")]
    [InlineData("unipc_karras", "unipc")]
    [InlineData("unipc_vpred", "unipc")]
    [InlineData("euler_karras", "euler")]
    [InlineData("dpmpp_2m_karras", "dpmpp-2m")]
    [InlineData("ddpm", "ddpm")]
    public void TrajectoryMatchesDiffusers(string run, string name)
    {
        var t = Tensors.Value;
        var scheduler = Schedulers.Create(name, ConfigOf(run), 8);
        try
        {
            var expectedT = t[run + ".timesteps"].data<float>().ToArray();
            Assert.Equal(expectedT.Length, scheduler.Timesteps.Count);
            for (int i = 0; i < expectedT.Length; i++)
                Assert.True(Math.Abs(expectedT[i] - scheduler.Timesteps[i]) <= 1e-3 * Math.Max(1, Math.Abs(expectedT[i])),
                    $"{run} timestep {i}: {scheduler.Timesteps[i]} vs diffusers {expectedT[i]}");
            var grid = scheduler switch { UniPcScheduler u => u.SigmaGrid, EulerScheduler e => e.SigmaGrid, DpmSolverMultistepScheduler d => d.SigmaGrid, _ => null };
            if (grid is not null && t.TryGetValue(run + ".sigmas", out var sig))
            {
                var es = sig.data<float>().ToArray();
                for (int i = 0; i < es.Length; i++)
                    Tolerance.Close(es[i], grid[i], rel: 1e-5, abs: 1e-7, what: $"{run} σ[{i}]");
            }
            Tolerance.Close(t[run + ".init_noise_sigma"].data<float>()[0], scheduler.InitNoiseSigma, rel: 1e-6, what: $"{run} init_noise_sigma");

            using var _ = no_grad();
            // Stochastic steps draw per sample from generators seeded 100 and 101, after x_T (as a pipeline does).
            using var noise = new NoiseSource([100L, 101L]);
            TensorAssert.BitwiseEqual(t[run + ".x_T"], noise.Randn(4, 8, 8), $"{run} x_T from the per-sample generators");
            var x = t[run + ".x_T"] * scheduler.InitNoiseSigma;
            for (int k = 0; k < 8; k++)
            {
                using var scope = NewDisposeScope();
                var input = scheduler.ScaleModelInput(x, k);
                Close(t[$"{run}.input_{k}"], input, $"{run} model input {k}");
                var next = scheduler.Step(new ModelOutput(t[$"{run}.output_{k}"], null), k, x, noise);
                var expected = t[$"{run}.x_{k + 1}"];
                Close(expected, next, $"{run} x_{k + 1}");
                x = expected.clone().DetachFromDisposeScope(); // the next step starts from diffusers' sample
            }
        }
        finally { (scheduler as IDisposable)?.Dispose(); }
    }

    private static void Close(Tensor expected, Tensor actual, string what)
    {
        double scale = expected.abs().max().item<float>();
        double diff = (expected - actual).abs().max().item<float>();
        Assert.True(diff <= 2e-5 * Math.Max(1, scale), $"{what}: max |diff| {diff:G3} (max |x| {scale:G3})");
    }

    [Fact]
    public void EulerAncestralRefusesKarrasSigmas_AsDiffusersHasNone()
    {
        var cfg = ConfigOf("euler_karras");
        Assert.Contains("Karras sigmas are not available for Euler ancestral", Assert.Throws<PagSharpException>(() => Schedulers.Create("euler-a", cfg, 8)).Message);
    }
}
