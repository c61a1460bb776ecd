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
        => Run(scheduler, denoiser, xT, noise, new LoopRange(), onStep, cancellation);

    /// <summary>
    /// The loop over the steps <paramref name="range"/> selects: from <see cref="LoopRange.Start"/> (image-to-image: x
    /// is then the already noised start latent, not scaled by init_noise_sigma) to <see cref="LoopRange.End"/>
    /// (SDXL's denoising_end), with <see cref="LoopRange.AfterStep"/> applied to each new sample (inpainting's blend
    /// with the re-noised original).
    /// </summary>
    public static Tensor Run(IScheduler scheduler, IGuidedDenoiser denoiser, Tensor x0, NoiseSource? noise, LoopRange range,
                             Action<LoopStep>? onStep = null, CancellationToken cancellation = default)
    {
        var timesteps = scheduler.Timesteps;
        int count = timesteps.Count, start = range.Start, end = range.End ?? count;
        if (start < 0 || end > count || start >= end)
            throw new PagSharpException($"the steps {start}..{end - 1} are not a non-empty part of the scheduler's {count} steps");
        var x = start > 0 || !range.ScaleInitialNoise || scheduler.InitNoiseSigma == 1f ? x0.alias() : (x0 * scheduler.InitNoiseSigma).DetachFromDisposeScope();
        for (int i = start; i < end; i++)
        {
            cancellation.ThrowIfCancellationRequested();
            var scope = NewDisposeScope();
            var input = scheduler.ScaleModelInput(x, i);
            var output = denoiser.Predict(input, new StepContext(i, count, timesteps[i]));
            var next = scheduler.Step(output, i, x, noise);
            if (range.AfterStep is not null) next = range.AfterStep(i, next);
            next = next.DetachFromDisposeScope();
            scope.Dispose();
            x.Dispose();
            x = next;
            onStep?.Invoke(new LoopStep(i, count, timesteps[i], x));
        }
        return x;
    }
}

/// <summary>
/// Which steps of a scheduler a loop runs and what happens after each: <see cref="Start"/> (image-to-image's first
/// step, where the noised image latents enter), <see cref="End"/> (exclusive; null = all), whether x at step 0 is
/// multiplied by init_noise_sigma (<see cref="ScaleInitialNoise"/>; a loop that starts later never scales), and
/// <see cref="AfterStep"/>(i, x_next) → x_next, run inside the step's dispose scope.
/// </summary>
public sealed record LoopRange(int Start = 0, int? End = null, bool ScaleInitialNoise = true, Func<int, Tensor, Tensor>? AfterStep = null);
