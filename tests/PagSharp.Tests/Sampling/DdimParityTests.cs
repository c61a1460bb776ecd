using PagSharp.Diffusion.Schedulers;
using PagSharp.Denoisers;
using PagSharp.Pipelines;
using PagSharp.Attention;
using System.Text.Json;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sampling;

/// <summary>Loads model A and the sampling fixture once for the class.</summary>
public sealed class AdmSamplingFixture : IDisposable
{
    public AdmUNet Net { get; } = AdmA.Load();
    public Dictionary<string, Tensor> Tensors { get; } = AdmA.Tensors("sampling.safetensors");
    /// <summary>Model A (unconditional) on the denoiser contract for a batch of <paramref name="b"/> samples.</summary>
    public AdmDenoiser Model(long b = 4) => new(Net, null, b);

    public void Dispose()
    {
        Net.Dispose();
        TensorAssert.DisposeAll(Tensors);
    }
}

/// <summary>DDIM-10 runs of model A against guided-diffusion's <c>ddim_sample_loop</c> (fixtures README §4.2).</summary>
public class DdimParityTests(AdmSamplingFixture fx) : IClassFixture<AdmSamplingFixture>
{
    private const double SampleTol = 1e-3, StepTol = 1e-4;

    private static readonly string[] AllLayers =
        { "input_blocks.3.1", "input_blocks.5.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1", "output_blocks.2.1", "output_blocks.3.1" };

    private static GaussianDiffusion Ddim10() => GaussianDiffusion.Create("linear", 1000, "ddim10", VarianceType.LearnedRange);

    private static JsonElement Schedule(JsonDocument doc) => doc.RootElement.GetProperty("schedule");

    private static JsonDocument SamplingJson() => JsonDocument.Parse(File.ReadAllText(AdmA.File("sampling.json")));

    private static double[] Doubles(JsonElement e) => e.EnumerateArray().Select(v => v.GetDouble()).ToArray();

    [Fact]
    public void Schedule_MatchesReference()
    {
        using var doc = SamplingJson();
        var s = Schedule(doc);
        var d = Ddim10();
        Assert.Equal(s.GetProperty("timestep_map").EnumerateArray().Select(v => v.GetInt32()), d.TimestepMap);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => 100 * i), d.TimestepMap);
        Assert.Equal(fx.Tensors["timestep_map"].data<long>().Select(v => (int)v), d.TimestepMap);
        Assert.Equal(1000, d.OriginalSteps);
        Assert.Equal(10, d.NumSteps);
        void Same(string key, double[] actual)
        {
            var expected = Doubles(s.GetProperty(key));
            Assert.Equal(expected.Length, actual.Length);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(Math.Abs(expected[i] - actual[i]) <= 1e-12, $"{key}[{i}]: {actual[i]:R} vs {expected[i]:R}");
        }
        Same("respaced_alphas_cumprod_float64", d.AlphasCumprod);
        Same("respaced_alphas_cumprod_prev_float64", d.AlphasCumprodPrev);
        Same("respaced_betas_float64", d.Betas);
    }

    /// <summary>
    /// Every fixture run once; batched and split-batch branches both covered for each formula and layer set
    /// (<see cref="SplitAndBatched_GiveTheSameGuidedEps"/> checks the remaining combinations step-wise).
    /// </summary>
    public static TheoryData<string, bool> Runs() => new()
    {
        { "sample_none", false },
        { "sample_pag_mid_s2", false },
        { "sample_pag_all_s2", true },
        { "sample_pag_mid_s2_officialformula", true },
        { "sample_pag_all_s2_officialformula", false },
    };

    /// <summary>The guidance a fixture run key stands for, cross-checked with sampling.json.</summary>
    private static GuidanceSettings GuidanceFor(string run, bool split)
    {
        using var doc = SamplingJson();
        var spec = doc.RootElement.GetProperty("runs").GetProperty(run);
        if (spec.GetProperty("guidance").GetString() == "none") return new GuidanceSettings { SplitBatch = split };
        var layers = spec.GetProperty("perturbed_layers").EnumerateArray().Select(e => e.GetString()!).ToArray();
        Assert.Equal(run.Contains("_all_") ? AllLayers : new[] { "middle_block.1" }, layers);
        Assert.Equal(2.0, spec.GetProperty("scale").GetDouble());
        return new GuidanceSettings
        {
            PagScale = new ScaleSchedule.Constant(2),
            PagLayers = layers,
            Formula = spec.GetProperty("formula").GetString() switch
            {
                "paper" => PagFormula.Paper,
                "official" => PagFormula.Official,
                var f => throw new InvalidOperationException(f),
            },
            SplitBatch = split,
        };
    }

    [Theory]
    [MemberData(nameof(Runs))]
    public void Ddim_ReproducesFixtureRun(string run, bool split)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var d = Ddim10();
        using var denoiser = new GuidedDenoiser(fx.Model(), GuidanceFor(run, split), 1000);
        var scheduler = new GaussianDiffusionScheduler(d, ddim: true) { KeepPredXstart = true };
        string key = run.Replace("sample_", "");
        var checks = new List<(string Name, Tensor Expected, bool IsX)>();
        if (fx.Tensors.TryGetValue("step0_x_next_" + key, out var xNext)) checks.Add(("step0_x_next_" + key, xNext, true));
        if (fx.Tensors.TryGetValue("step0_pred_xstart_" + key, out var x0)) checks.Add(("step0_pred_xstart_" + key, x0, false));
        Assert.Equal(run.Contains("official") ? 0 : run == "sample_none" ? 1 : 2, checks.Count);
        var seen = new List<(int Step, int Total, double Timestep)>();
        var xT = fx.Tensors["x_T"];
        using var xTBefore = xT.clone();
        var x = SamplingLoop.Run(scheduler, denoiser, xT, null, s =>
        {
            seen.Add((s.Index + 1, s.Count, s.Timestep));
            if (s.Index != 0) return;
            // First step, t = 900 → 800 (compared here: the step's tensors live only during the callback).
            foreach (var (name, expected, isX) in checks)
            {
                if (isX) Close.Assert(expected, s.Sample, StepTol, name);
                // x̂0 = √(1/ᾱ)·x − √(1/ᾱ−1)·ε̃ multiplies ε's float32 rounding by ≈ 61 at t = 900 (README §7), and the
                // guided ε̃ = 3ε − 2ε̂ by up to 5 more; the model outputs themselves agree to ~1e-5.
                else Close.AssertMostly(expected, scheduler.LastPredXstart!, 61 * 5 * 1e-5, StepTol, 0.01, name);
            }
        });
        Close.Assert(fx.Tensors[run], x, SampleTol, $"{run} (split={split})");
        TensorAssert.BitwiseEqual(xTBefore, xT, "x_T after sampling");
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (i, 10, (double)(1000 - 100 * i))), seen);
    }

    /// <summary>
    /// The (layers, formula, batching) combinations the fixture runs above leave out, one denoiser call at t = 900
    /// against the README §4.2 formulas applied to separate plain and perturbed forward passes.
    /// </summary>
    [Theory]
    [InlineData("mid", "paper", true)]
    [InlineData("all", "paper", false)]
    [InlineData("mid", "official", false)]
    [InlineData("all", "official", true)]
    public void SplitAndBatched_GiveTheSameGuidedEps(string layerSet, string formula, bool split)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var layers = layerSet == "all" ? AllLayers : new[] { "middle_block.1" };
        var settings = new GuidanceSettings
        {
            PagScale = new ScaleSchedule.Constant(2), PagLayers = layers, SplitBatch = split,
            Formula = formula == "paper" ? PagFormula.Paper : PagFormula.Official,
        };
        var x = fx.Tensors["x_T"];
        var t = full(4, 900L, dtype: ScalarType.Int64);
        using var denoiser = new GuidedDenoiser(fx.Model(), settings, 1000);
        var o = denoiser.Predict(x, new StepContext(0, 10, 900));

        var plain = fx.Net.Forward(x, t);
        var pert = fx.Net.Forward(x, t, null, PagSharp.Attention.PerturbationPlan.Perturb(layers, PagSharp.Attention.IdentityPerturbation.Instance));
        Tensor eps = plain[.., ..3], epsP = pert[.., ..3];
        var expected = formula == "paper" ? eps + 2 * (eps - epsP) : epsP + 2 * (eps - epsP);
        Close.Assert(expected, o.Output, 5e-5, "guided ε");
        Assert.NotNull(o.VarValues);
        Close.Assert(plain[.., 3..], o.VarValues!, 1e-5, "variance values come from the unperturbed branch");
        Close.AssertDiffer(eps, o.Output, 1e-2, "guided vs plain ε");
    }

    [Fact]
    public void FixtureRuns_DifferFromEachOther()
    {
        // Guidance must change the samples by far more than the tolerance, or matching them would prove nothing.
        var t = fx.Tensors;
        Close.AssertDiffer(t["sample_none"], t["sample_pag_mid_s2"], 10 * SampleTol, "none vs pag_mid");
        Close.AssertDiffer(t["sample_pag_mid_s2"], t["sample_pag_all_s2"], 10 * SampleTol, "pag_mid vs pag_all");
        Close.AssertDiffer(t["sample_pag_mid_s2"], t["sample_pag_mid_s2_officialformula"], 10 * SampleTol, "paper vs official");
        Close.AssertDiffer(t["step0_x_next_none"], t["step0_x_next_pag_mid_s2"], 10 * StepTol, "step0 none vs pag_mid");
    }

    [Fact]
    public void FirstStep_ModelOutputAndUnguidedStep()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var xT = fx.Tensors["x_T"];
        var t = full(4, 900L, dtype: ScalarType.Int64);
        Close.Assert(fx.Tensors["step0_model_out"], fx.Net.Forward(xT, t), StepTol, "step0_model_out");

        // One DDIM step written from the README formulas, fed with the reference model output.
        var d = Ddim10();
        var eps = fx.Tensors["step0_model_out"][.., ..3];
        float a = (float)Math.Sqrt(1 / d.AlphasCumprod[9]), bc = (float)Math.Sqrt(1 / d.AlphasCumprod[9] - 1), ap = (float)d.AlphasCumprodPrev[9];
        var x0 = (a * xT - bc * eps).clamp(-1, 1);
        var e2 = (a * xT - x0) / bc;
        var expected = x0 * MathF.Sqrt(ap) + MathF.Sqrt(1 - ap) * e2;
        Close.Assert(fx.Tensors["step0_x_next_none"], expected, StepTol, "hand-written step vs fixture");

        // The library's first step from the same ε (stopped after one step).
        var fixedEps = new FixedDenoiser(fx.Tensors["step0_model_out"]);
        double? diff = null;
        using var cts = new CancellationTokenSource();
        Assert.Throws<OperationCanceledException>(() => SamplingLoop.Run(new GaussianDiffusionScheduler(d, ddim: true), fixedEps, xT, null, s =>
        {
            diff = Close.MaxAbs(fx.Tensors["step0_x_next_none"], s.Sample);
            cts.Cancel();
        }, cts.Token));
        Assert.True(diff <= StepTol, $"library step from the reference ε: max abs diff {diff}");
    }

    private sealed class FixedDenoiser(Tensor output) : IGuidedDenoiser
    {
        public ModelOutput Predict(Tensor x, StepContext step) => new(output[.., ..3], output[.., 3..]);
    }

    [Fact]
    public void Sample_SameSeedAndSettings_IsBitIdentical_AndNoiseIsPerSample()
    {
        var options = new SamplingOptions
        {
            Steps = 2, Seed = 1234, BatchSize = 4,
            Guidance = new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = new[] { "middle_block.1" } },
        };
        long[] shape = { 3, 32, 32 };
        long[] indices = { 0, 1, 2, 3 };
        using var scope = NewDisposeScope();

        var a = Sampler.Sample(fx.Net, options, indices);
        var b = Sampler.Sample(fx.Net, options, indices);
        TensorAssert.BitwiseEqual(a, b, "same seed, same settings");
        Assert.Equal(new long[] { 4, 3, 32, 32 }, a.shape);

        // x_T is drawn per sample from seed + index: handing exactly that noise in reproduces the run bit for bit.
        using var source = new NoiseSource(indices.Select(options.SampleSeed));
        var xTAll = source.Randn(shape);
        TensorAssert.BitwiseEqual(a, Sampler.Sample(fx.Net, options, indices, xTAll), "run with its own x_T given");
        Assert.InRange(xTAll.std().item<float>(), 0.9f, 1.1f);

        // Other batch shapes may round differently in the network (amplified by ≈ 61 at the first step): the sample tolerance.
        Close.Assert(a, Sampler.Sample(fx.Net, options with { BatchSize = 3 }, indices), SampleTol, "samples with batch size 3 vs 4");
        Close.Assert(a[2..3], Sampler.Sample(fx.Net, options with { BatchSize = 1 }, new long[] { 2 }), SampleTol, "sample 2 alone vs in a batch");

        // Another seed gives other noise; seed s+1 sample i is seed s sample i+1 (per-sample seeds).
        var shifted = Sampler.Sample(fx.Net, options with { Seed = 1235 }, new long[] { 0, 1, 2 });
        Close.Assert(a[1..], shifted, SampleTol, "sample(seed + 1, i) vs sample(seed, i + 1)");
        Close.AssertDiffer(a[..3], shifted, 0.5, "samples of another seed");
        a.mul_(1); // sampling runs in inference mode, the result is an ordinary tensor: in-place ops work
    }
}
