using PagSharp.Diffusion.Schedulers;
using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Guidance;
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
    /// <param name="model">The network with the samples' conditioning (for the unguided ε).</param>
    /// <param name="guided">The guided denoiser that drives the diffusion update.</param>
    /// <param name="diffusion">The (respaced) process; DPS runs its ancestral DDPM chain.</param>
    /// <param name="op">The measurement operator A.</param>
    /// <param name="y">The measurements.</param>
    /// <param name="xT">Initial noise.</param>
    /// <param name="noise">Per-sample noise for the ancestral steps.</param>
    /// <param name="options">ζ, gradient source, clipping.</param>
    /// <param name="callback">Called after every step.</param>
    /// <param name="cancellation">Checked between steps.</param>
    public static Tensor Sample(IDenoiserModel model, IGuidedDenoiser guided, GaussianDiffusion diffusion,
                                IMeasurementOperator op, Tensor y, Tensor xT, NoiseSource noise, DpsOptions options,
                                Action<LoopStep>? callback = null, CancellationToken cancellation = default)
    {
        if (!(options.StepSize >= 0)) throw new PagSharpException($"DPS step size ζ must be ≥ 0 (got {options.StepSize})");
        var scheduler = new GaussianDiffusionScheduler(diffusion, ddim: false, clipDenoised: options.Clip);
        int n = diffusion.NumSteps;
        var x = xT.alias();
        for (int i = 0; i < n; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            var scope = NewDisposeScope();
            var step = new StepContext(i, n, scheduler.Timesteps[i]);
            using var t = GaussianDiffusion.Steps(n - 1 - i, x.shape[0], x.device);
            ModelOutput? update = null;
            Func<Tensor, Tensor> epsForGradient = options.GradientFrom == DpsGradientSource.Guided
                ? xg => (update = guided.Predict(xg, step)).Output
                : xg => model.Forward(xg, step, [Branch.Conditional], null).Output;
            var (grad, _) = MeasurementGradient(x, t, epsForGradient, diffusion, op, y, options.Clip);
            Tensor next;
            using (no_grad())
            {
                // The guided ε drives the diffusion update (the perturbed branch never needs autograd here).
                var output = update is { } u ? new ModelOutput(u.Output.detach(), u.VarValues?.detach()) : guided.Predict(x.detach(), step);
                next = (scheduler.Step(output, i, x, noise) - options.StepSize * grad).DetachFromDisposeScope();
            }
            scope.Dispose();
            x.Dispose();
            x = next;
            callback?.Invoke(new LoopStep(i, n, step.Timestep, x));
        }
        return x;
    }

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
