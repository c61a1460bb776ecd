using PagSharp.Denoisers;
using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Inverse;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Sampling;
using PagSharp.Tests.Guidance;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Inverse;

public class DpsTests
{
    [Fact]
    public void MeasurementGradientMatchesFiniteDifferences()
    {
        using var net = TestModels.Tiny(classConditional: false);
        net.to(ScalarType.Float64);
        var model = new AdmDenoiser(net, null, 2);
        var d = GaussianDiffusion.Create("linear", 1000, "10", VarianceType.LearnedRange);
        using var g = new Generator(7);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g, dtype: ScalarType.Float64);
        var truth = randn(new long[] { 2, 3, 16, 16 }, generator: g, dtype: ScalarType.Float64).clamp(-1, 1);
        var op = OperatorSpec.Parse("sr:2", 16, 0, 0);
        var y = op.Forward(truth);
        var t = GaussianDiffusion.Steps(6, 2);
        var step = new StepContext(3, 10, d.TimestepMap[6]);
        Func<Tensor, Tensor> eps = xi => model.Forward(xi, step, [Branch.Conditional], null).Output;
        var (grad, _) = Dps.MeasurementGradient(x, t, eps, d, op, y, clip: false);

        double F(Tensor xi)
        {
            using var _ = no_grad();
            var x0 = d.PredictXstartFromEps(xi, t, eps(xi));
            return (y - op.Forward(x0)).flatten(1).square().sum(1).sqrt().sum().item<double>();
        }
        const double h = 1e-5;
        foreach (var (n, c, i, j) in new[] { (0, 0, 3, 4), (1, 2, 10, 1), (0, 1, 15, 15), (1, 0, 7, 8) })
        {
            var plus = x.clone(); plus[n, c, i, j] += h;
            var minus = x.clone(); minus[n, c, i, j] -= h;
            double fd = (F(plus) - F(minus)) / (2 * h), ad = grad[n, c, i, j].item<double>();
            Assert.True(Math.Abs(fd - ad) <= 1e-6 + 1e-4 * Math.Abs(fd), $"∂/∂x[{n},{c},{i},{j}]: autograd {ad}, finite differences {fd}");
        }
    }

    /// <summary>The exact ε-model of data that is one of two images: E[x0 | x_t] is a softmax-weighted mix.</summary>
    private sealed class TwoImageModel(Tensor images, double[] alphasCumprod) : IDenoiserModel
    {
        public IReadOnlyList<AttentionLayerInfo> AttentionLayers => Array.Empty<AttentionLayerInfo>();
        public long BatchSize => 4;
        public string? WhyNoUnconditional => "it is unconditional";

        public ModelOutput Forward(Tensor x, StepContext step, IReadOnlyList<Branch> blocks, PerturbationPlan? plan)
        {
            using var t = full(x.shape[0], (long)step.Timestep, dtype: ScalarType.Int64);
            var ab = GaussianDiffusion.Extract(alphasCumprod, t, 4);
            var diff = x.unsqueeze(1) - ab.sqrt().unsqueeze(1) * images.unsqueeze(0); // [N,2,C,H,W]
            var logits = -diff.flatten(2).square().sum(2) / (2 * (1 - ab.flatten()).unsqueeze(1));
            var w = logits.softmax(1).reshape(x.shape[0], 2, 1, 1, 1);
            var mean = (w * images.unsqueeze(0)).sum(1);
            return new ModelOutput((x - ab.sqrt() * mean) / (1 - ab).sqrt(), null);
        }
    }

    [Fact]
    public void RestorationRaisesPsnrAboveTheDegradedInput()
    {
        // Two 8×8 images that differ everywhere; the bottom half of A is hidden and must be recovered from the top half.
        var a = full(1, 1, 8, 8, 0.8f);
        a[.., .., 4.., ..] = -0.8f;
        var b = -a;
        var images = cat(new[] { a, b }, 0);
        var original = GaussianDiffusion.Create("linear", 1000, "", VarianceType.FixedSmall);
        var model = new TwoImageModel(images, original.AlphasCumprod);
        var d = GaussianDiffusion.Create("linear", 1000, "50", VarianceType.FixedSmall);
        var op2 = (InpaintOperator)OperatorSpec.Parse("box:4@4,0", 8, 0.01, 0);
        var truth = a.repeat(4, 1, 1, 1);
        using var g = new Generator(1);
        var y = Measurement.Degrade(op2, truth, g);
        using var noise = new NoiseSource(new long[] { 0, 1, 2, 3 });
        var xT = noise.Randn(1, 8, 8);
        using var denoiser = new GuidedDenoiser(model, new GuidanceSettings(), 1000);
        var restored = Dps.Sample(model, denoiser, d, op2, y, xT, noise, new DpsOptions { StepSize = 1.0 });
        double psnrRestored = ImageQuality.Psnr(restored, truth).min().item<float>();
        double psnrDegraded = ImageQuality.Psnr(op2.Visualize(y, 8, 8), truth).max().item<float>();
        Assert.True(psnrRestored > psnrDegraded + 10, $"restored {psnrRestored:F1} dB vs degraded {psnrDegraded:F1} dB");
    }

    [Fact]
    public void DpsWithPagRunsOnAnAdmModelAndDiffersFromPlainDps()
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false);
        var model = new AdmDenoiser(net, null, 1);
        var d = GaussianDiffusion.Create("linear", 1000, "3", VarianceType.LearnedRange);
        var op = OperatorSpec.Parse("random:0.5", 16, 0.05, 1);
        using var g = new Generator(3);
        var truth = rand(new long[] { 1, 3, 16, 16 }, generator: g) * 2 - 1;
        var y = Measurement.Degrade(op, truth, g);
        Tensor Run(GuidanceSettings s, DpsGradientSource source)
        {
            using var noise = new NoiseSource(new long[] { 5 });
            var xT = noise.Randn(3, 16, 16);
            using var guided = new GuidedDenoiser(model, s, 1000);
            return Dps.Sample(model, guided, d, op, y, xT, noise, new DpsOptions { GradientFrom = source });
        }
        var plain = Run(new GuidanceSettings(), DpsGradientSource.Unguided);
        var pag = new GuidanceSettings { PagScale = new ScaleSchedule.Constant(2), PagLayers = net.AttentionLayers.Select(l => l.Name).ToArray() };
        var withPag = Run(pag, DpsGradientSource.Unguided);
        var guidedGrad = Run(pag, DpsGradientSource.Guided);
        Assert.True(plain.isfinite().all().item<bool>() && withPag.isfinite().all().item<bool>() && guidedGrad.isfinite().all().item<bool>());
        Assert.True((plain - withPag).abs().max().item<float>() > 1e-4, "PAG changes the restoration");
        Assert.True((withPag - guidedGrad).abs().max().item<float>() > 1e-6, "the gradient source matters");
    }
}
