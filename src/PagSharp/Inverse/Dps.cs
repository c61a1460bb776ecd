using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Models;
using PagSharp.Sampling;
using static TorchSharp.torch;

namespace PagSharp.Inverse;

/// <summary>Which ε the measurement gradient is taken through.</summary>
public enum DpsGradientSource
{
    /// <summary>The unguided (conditional) ε, as the PSLD+PAG reference code does; the perturbed branch runs without autograd.</summary>
    Unguided,
    /// <summary>The PAG-guided ε (autograd through both branches; about twice the memory).</summary>
    Guided,
}

/// <summary>Settings of Diffusion Posterior Sampling.</summary>
public sealed record DpsOptions
{
    /// <summary>Step size ζ of the measurement correction x ← x − ζ·∇ₓ‖y − A(x̂0)‖.</summary>
    public double StepSize { get; init; } = 1.0;
    public DpsGradientSource GradientFrom { get; init; } = DpsGradientSource.Unguided;
    /// <summary>Clip x̂0 to [−1, 1] (in the update and in the measurement term).</summary>
    public bool Clip { get; init; } = true;
}

/// <summary>
/// Diffusion Posterior Sampling (Chung et al., ICLR 2023, Alg. 1) on the ancestral DDPM chain, with any guidance
/// (PAG) driving the diffusion update: at each step ε̃ from the guided denoiser gives x'_{t−1} ~ p(x_{t−1} | x_t),
/// x̂0 from ε (guided or unguided, <see cref="DpsOptions.GradientFrom"/>), and
/// x_{t−1} = x'_{t−1} − ζ·∇_{x_t} Σ_n ‖y_n − A(x̂0_n)‖. Using the norm (not its square) is DPS's normalisation of the
/// step by the residual norm: ∇‖r‖ = ∇‖r‖² / (2‖r‖). Each sample's own residual drives its own gradient.
/// </summary>
public static class Dps
{
    public static Tensor Sample(IDiffusionModel model, IDenoiser guided, Tensor? labels, GaussianDiffusion diffusion,
                                IMeasurementOperator op, Tensor y, Tensor xT, NoiseSource noise, DpsOptions options,
                                Action<StepInfo>? callback = null, CancellationToken cancellation = default)
    {
        if (!(options.StepSize >= 0)) throw new PagSharpException($"DPS step size ζ must be ≥ 0 (got {options.StepSize})");
        return Samplers.Loop(xT, diffusion, callback, cancellation, (x, t, i) =>
        {
            var tm = diffusion.ModelTimesteps(t);
            EpsOutput? update = null;
            Func<Tensor, Tensor> epsForGradient = options.GradientFrom == DpsGradientSource.Guided
                ? xg => (update = guided.Predict(xg, tm)).Eps
                : xg => model.Forward(xg, tm, labels, null).Eps;
            var (grad, _) = MeasurementGradient(x, t, epsForGradient, diffusion, op, y, options.Clip);
            using var _ = no_grad();
            // The guided ε drives the diffusion update (the perturbed branch never needs autograd here).
            var (eps, varValues) = update is { } u ? (u.Eps.detach(), u.VarValues?.detach()) : Unpack(guided.Predict(x.detach(), tm));
            var (mean, logVar, x0) = diffusion.PMeanVariance(x, t, eps, varValues, options.Clip);
            var next = i > 0 ? mean + (0.5 * logVar).exp() * noise.Randn(x.shape[1..]) : mean;
            return (next - options.StepSize * grad, x0);
        });
    }

    private static (Tensor, Tensor?) Unpack(EpsOutput o) => (o.Eps, o.VarValues);

    /// <summary>
    /// ∇_{x_t} Σ_n ‖y_n − A(x̂0_n(x_t))‖ and the residual norms [N], with x̂0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε(x_t)
    /// (clipped when asked) and ε from <paramref name="eps"/> (autograd through it).
    /// </summary>
    public static (Tensor Gradient, Tensor ResidualNorm) MeasurementGradient(Tensor x, Tensor t, Func<Tensor, Tensor> eps,
        GaussianDiffusion diffusion, IMeasurementOperator op, Tensor y, bool clip)
    {
        using var _ = enable_grad();
        var xg = x.detach().requires_grad_(true);
        var x0 = diffusion.PredictXstartFromEps(xg, t, eps(xg));
        if (clip) x0 = x0.clamp(-1, 1);
        var norms = (y - op.Forward(x0)).flatten(1).square().sum(1).sqrt();
        var grad = autograd.grad(new[] { norms.sum() }, new[] { xg })[0];
        return (grad.detach(), norms.detach());
    }
}
