using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using static TorchSharp.torch;

namespace PagSharp.Sampling;

/// <summary>One finished step of a sampling loop: its index, the number of steps, the model timestep, the new sample.</summary>
public sealed record LoopStep(int Index, int Count, double Timestep, Tensor Sample);

/// <summary>
/// The one sampling loop every model family and guidance method runs: x ← x_T·init_noise_sigma, then per step i the
/// scheduler scales the input, the guided denoiser predicts at (i, t_i), and the scheduler steps. One dispose scope per
/// step (only the new sample survives it); cancellation between steps. Inference mode is the caller's choice (DPS
/// needs autograd).
/// </summary>
public static class SamplingLoop
{
    public static Tensor Run(IScheduler scheduler, IGuidedDenoiser denoiser, Tensor xT, NoiseSource? noise,
                             Action<LoopStep>? onStep = null, CancellationToken cancellation = default)
    {
        var timesteps = scheduler.Timesteps;
        int n = timesteps.Count;
        var x = scheduler.InitNoiseSigma == 1f ? xT.alias() : (xT * scheduler.InitNoiseSigma).DetachFromDisposeScope();
        for (int i = 0; i < n; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            var scope = NewDisposeScope();
            var input = scheduler.ScaleModelInput(x, i);
            var output = denoiser.Predict(input, new StepContext(i, n, timesteps[i]));
            var next = scheduler.Step(output, i, x, noise).DetachFromDisposeScope();
            scope.Dispose();
            x.Dispose();
            x = next;
            onStep?.Invoke(new LoopStep(i, n, timesteps[i], x));
        }
        return x;
    }
}
