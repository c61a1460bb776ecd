using PagSharp.Diffusion;
using PagSharp.Guidance;
using static TorchSharp.torch;

namespace PagSharp.Sampling;

/// <summary>Progress of one sampler step: step k of n (1-based), its model timestep, the new x and x̂0.</summary>
public sealed record StepInfo(int Step, int Total, int Timestep, Tensor X, Tensor PredXstart);

/// <summary>
/// Ancestral DDPM and DDIM samplers as short functions of (denoiser, x_T, process, options, noise, callback,
/// cancellation), following guided-diffusion's <c>p_sample_loop</c> / <c>ddim_sample_loop</c>. They know nothing about
/// guidance: the denoiser decides what ε is.
/// </summary>
public static class Samplers
{
    /// <summary>
    /// DDPM ancestral sampling (Ho et al. 2020, Alg. 2, with improved-DDPM variances):
    /// x_{t−1} = μ_θ(x_t, x̂0) + 1[t&gt;0]·exp(½·log σ²_t)·z.
    /// </summary>
    public static Tensor Ddpm(IDenoiser model, Tensor xT, GaussianDiffusion diffusion, bool clip, NoiseSource noise,
                              Action<StepInfo>? callback = null, CancellationToken cancellation = default) =>
        Loop(xT, diffusion, callback, cancellation, (x, t, i) =>
        {
            var o = model.Predict(x, diffusion.ModelTimesteps(t));
            var (mean, logVar, x0) = diffusion.PMeanVariance(x, t, o.Eps, o.VarValues, clip);
            var next = i > 0 ? mean + (0.5 * logVar).exp() * noise.Randn(x.shape[1..]) : mean;
            return (next, x0);
        });

    /// <summary>
    /// DDIM (Song et al. 2021, eq. 12): x̂0 from ε (clipped when asked), ε re-derived from the clipped x̂0 as
    /// guided-diffusion does, then x_{t−1} = x̂0·√ᾱ_{t−1} + √(1 − ᾱ_{t−1} − σ²)·ε + σ·z with
    /// σ = η·√((1 − ᾱ_{t−1})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t−1}).
    /// </summary>
    public static Tensor Ddim(IDenoiser model, Tensor xT, GaussianDiffusion diffusion, double eta, bool clip, NoiseSource? noise,
                              Action<StepInfo>? callback = null, CancellationToken cancellation = default)
    {
        if (eta > 0 && noise is null) throw new ArgumentException("DDIM with eta > 0 needs a noise source", nameof(noise));
        return Loop(xT, diffusion, callback, cancellation, (x, t, i) =>
        {
            var o = model.Predict(x, diffusion.ModelTimesteps(t));
            var x0 = diffusion.PredictXstartFromEps(x, t, o.Eps);
            if (clip) x0 = x0.clamp(-1, 1);
            var eps = diffusion.PredictEpsFromXstart(x, t, x0);
            var ab = GaussianDiffusion.Extract(diffusion.AlphasCumprod, t, (int)x.dim());
            var abPrev = GaussianDiffusion.Extract(diffusion.AlphasCumprodPrev, t, (int)x.dim());
            var sigma = eta * ((1 - abPrev) / (1 - ab)).sqrt() * (1 - ab / abPrev).sqrt();
            var next = x0 * abPrev.sqrt() + (1 - abPrev - sigma.square()).sqrt() * eps;
            if (eta > 0 && i > 0) next = next + sigma * noise!.Randn(x.shape[1..]);
            return (next, x0);
        });
    }

    /// <summary>
    /// The chain i = N−1 … 0 shared by the samplers: one dispose scope per step (only the new x survives it),
    /// cancellation between steps, progress after each step.
    /// </summary>
    internal static Tensor Loop(Tensor xT, GaussianDiffusion diffusion, Action<StepInfo>? callback, CancellationToken cancellation,
                               Func<Tensor, Tensor, int, (Tensor Next, Tensor PredXstart)> step)
    {
        var x = xT.alias();
        for (int i = diffusion.NumSteps - 1; i >= 0; i--)
        {
            cancellation.ThrowIfCancellationRequested();
            using var scope = NewDisposeScope();
            var t = GaussianDiffusion.Steps(i, x.shape[0], x.device);
            var (next, x0) = step(x, t, i);
            callback?.Invoke(new StepInfo(diffusion.NumSteps - i, diffusion.NumSteps, diffusion.TimestepMap[i], next, x0));
            x.Dispose();
            x = next.MoveToOuterDisposeScope();
        }
        return x;
    }
}
