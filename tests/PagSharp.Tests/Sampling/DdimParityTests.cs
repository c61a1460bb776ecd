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
    public IDiffusionModel Model => new AdmDiffusionModel(Net);

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
        var denoiser = new GuidedDenoiser(fx.Model, GuidanceFor(run, split), null, 1000);
        string key = run.Replace("sample_", "");
        var checks = new List<(string Name, Tensor Expected, bool IsX)>();
        if (fx.Tensors.TryGetValue("step0_x_next_" + key, out var xNext)) checks.Add(("step0_x_next_" + key, xNext, true));
        if (fx.Tensors.TryGetValue("step0_pred_xstart_" + key, out var x0)) checks.Add(("step0_pred_xstart_" + key, x0, false));
        Assert.Equal(run.Contains("official") ? 0 : run == "sample_none" ? 1 : 2, checks.Count);
        var seen = new List<(int Step, int Total, int Timestep)>();
        var xT = fx.Tensors["x_T"];
        using var xTBefore = xT.clone();
        var x = Samplers.Ddim(denoiser, xT, d, eta: 0, clip: true, noise: null, s =>
        {
            seen.Add((s.Step, s.Total, s.Timestep));
            if (s.Step != 1) return;
            // First step, t = 900 → 800 (compared here: the step's tensors live only during the callback).
            foreach (var (name, expected, isX) in checks)
            {
                if (isX) Close.Assert(expected, s.X, StepTol, name);
                // x̂0 = √(1/ᾱ)·x − √(1/ᾱ−1)·ε̃ multiplies ε's float32 rounding by ≈ 61 at t = 900 (README §7), and the
                // guided ε̃ = 3ε − 2ε̂ by up to 5 more; the model outputs themselves agree to ~1e-5.
                else Close.AssertMostly(expected, s.PredXstart, 61 * 5 * 1e-5, StepTol, 0.01, name);
            }
        });
        Close.Assert(fx.Tensors[run], x, SampleTol, $"{run} (split={split})");
        TensorAssert.BitwiseEqual(xTBefore, xT, "x_T after sampling");
        Assert.Equal(Enumerable.Range(1, 10).Select(i => (i, 10, 1000 - 100 * i)), seen);
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
        var o = new GuidedDenoiser(fx.Model, settings, null, 1000).Predict(x, t);

        var plain = fx.Net.Forward(x, t);
        var pert = fx.Net.Forward(x, t, null, PagSharp.Attention.PerturbationPlan.Perturb(layers, PagSharp.Attention.IdentityPerturbation.Instance));
        Tensor eps = plain[.., ..3], epsP = pert[.., ..3];
        var expected = formula == "paper" ? eps + 2 * (eps - epsP) : epsP + 2 * (eps - epsP);
        Close.Assert(expected, o.Eps, 5e-5, "guided ε");
        Assert.NotNull(o.VarValues);
        Close.Assert(plain[.., 3..], o.VarValues!, 1e-5, "variance values come from the unperturbed branch");
        Close.AssertDiffer(eps, o.Eps, 1e-2, "guided vs plain ε");
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
        Assert.Throws<OperationCanceledException>(() => Samplers.Ddim(fixedEps, xT, d, 0, true, null, s =>
        {
            diff = Close.MaxAbs(fx.Tensors["step0_x_next_none"], s.X);
            cts.Cancel();
        }, cts.Token));
        Assert.True(diff <= StepTol, $"library step from the reference ε: max abs diff {diff}");
    }

    private sealed class FixedDenoiser(Tensor output) : IDenoiser
    {
        public EpsOutput Predict(Tensor x, Tensor t) => new(output[.., ..3], output[.., 3..]);
    }

    [Fact]
    public void Sample_SameSeedAndSettings_IsBitIdentical_AndNoiseIsPerSample()
    {
        using var recorder = new FirstInputRecorder(fx.Model);
        var spec = new DiffusionSpec("linear", 1000, VarianceType.LearnedRange);
        var options = new SamplingOptions
        {
            Steps = 2, Seed = 1234, BatchSize = 4,
            Guidance = new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = new[] { "middle_block.1" } },
        };
        long[] shape = { 3, 32, 32 };
        long[] indices = { 0, 1, 2, 3 };
        using var scope = NewDisposeScope();

        var a = Sampler.Sample(recorder, spec, options, shape, indices);
        var xTAll = Assert.Single(recorder.Take());
        var b = Sampler.Sample(recorder, spec, options, shape, indices);
        TensorAssert.BitwiseEqual(a, b, "same seed, same settings");
        TensorAssert.BitwiseEqual(xTAll, Assert.Single(recorder.Take()), "x_T of the rerun");
        Assert.Equal(new long[] { 4, 3, 32, 32 }, a.shape);

        // Other batch sizes: every sample starts from the same x_T (drawn from its own seed) and ends the same.
        var c = Sampler.Sample(recorder, spec, options with { BatchSize = 3 }, shape, indices);
        var batches = recorder.Take();
        Assert.Equal(2, batches.Count);
        TensorAssert.BitwiseEqual(xTAll, cat(batches.ToArray(), 0), "x_T with batch size 3 vs 4");
        // Other batch shapes may round differently in the network (amplified by ≈ 61 at the first step): the sample tolerance.
        Close.Assert(a, c, SampleTol, "samples with batch size 3 vs 4");
        var e = Sampler.Sample(recorder, spec, options with { BatchSize = 1 }, shape, new long[] { 2 });
        TensorAssert.BitwiseEqual(xTAll[2..3], Assert.Single(recorder.Take()), "x_T of sample 2 run alone");
        Close.Assert(a[2..3], e, SampleTol, "sample 2 alone vs in a batch");

        // Another seed gives other noise; seed s+1 sample i starts like seed s sample i+1 (per-sample seeds).
        Sampler.Sample(recorder, spec, options with { Seed = 1235 }, shape, indices);
        var shifted = Assert.Single(recorder.Take());
        Close.AssertDiffer(xTAll, shifted, 0.5, "x_T for another seed");
        TensorAssert.BitwiseEqual(xTAll[1..], shifted[..3], "x_T(seed + 1, i) vs x_T(seed, i + 1)");
        Assert.InRange(xTAll.std().item<float>(), 0.9f, 1.1f);
        a.mul_(1); // sampling runs in inference mode, the result is an ordinary tensor: in-place ops work
    }

    /// <summary>Records x at the first model call of each batch (the t = T−1 step), the unguided branch only.</summary>
    private sealed class FirstInputRecorder(IDiffusionModel inner) : IDiffusionModel, IDisposable
    {
        private readonly List<Tensor> _all = new();
        public List<Tensor> FirstInputs { get; } = new();
        public void Dispose() => _all.ForEach(t => t.Dispose());
        private long _lastT = -1;
        public bool IsClassConditional => inner.IsClassConditional;
        public int? NumClasses => inner.NumClasses;
        public int? NullClass => inner.NullClass;
        public IReadOnlyList<AttentionLayerInfo> AttentionLayers => inner.AttentionLayers;

        /// <summary>The inputs recorded so far (owned by the recorder); starts a new recording.</summary>
        public List<Tensor> Take()
        {
            var r = FirstInputs.ToList();
            FirstInputs.Clear();
            _lastT = -1;
            return r;
        }

        public EpsOutput Forward(Tensor x, Tensor t, Tensor? y, PagSharp.Attention.PerturbationPlan? plan)
        {
            long tv = t[0].item<long>();
            if (_lastT < 0 || tv > _lastT)
            {
                // A new batch starts at the largest timestep. Batched PAG calls without a shared-prefix fork hold
                // [x; x]: keep the first half. With a fork the network is fed x alone.
                var first = plan is null || plan.ForkSource is not null ? x : x[..(int)(x.shape[0] / 2)];
                var copy = first.detach().clone().DetachFromDisposeScope();
                FirstInputs.Add(copy);
                _all.Add(copy);
            }
            _lastT = tv;
            return inner.Forward(x, t, y, plan);
        }
    }
}
