using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// guided-diffusion's <c>clip_denoised</c> for the σ-schedulers that drive a pixel-space ADM model: at each step the
/// ε-prediction is replaced by the one whose x̂₀ is clipped to [−1, 1], ε′ = (x − clip(x − σ·ε))/σ (x in the σ form
/// x₀ + σ·ε), and the wrapped scheduler steps with ε′. DDPM and DDIM clip x̂₀ the same way; without it the first
/// steps of a cosine-schedule model start at σ ≈ 2·10⁴, where any error of ε is multiplied by σ.
/// </summary>
public sealed class ClippedDenoisedScheduler : IScheduler, IDisposable
{
    private readonly ISigmaScheduler _inner;

    public ClippedDenoisedScheduler(ISigmaScheduler inner) => _inner = inner;

    public string Name => _inner.Name;
    public IReadOnlyList<float> Timesteps => _inner.Timesteps;
    public float InitNoiseSigma => _inner.InitNoiseSigma;
    public Tensor ScaleModelInput(Tensor sample, int stepIndex) => _inner.ScaleModelInput(sample, stepIndex);
    public Tensor AddNoise(Tensor original, Tensor noise, int stepIndex) => _inner.AddNoise(original, noise, stepIndex);

    public Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise)
    {
        float sigma = _inner.SigmaGrid[stepIndex];
        if (sigma <= 0) return _inner.Step(output, stepIndex, sample, noise);
        using var scope = NewDisposeScope();
        var x = _inner.VariancePreserving ? sample * MathF.Sqrt(sigma * sigma + 1) : sample;
        var x0 = (x - sigma * output.Output).clamp(-1, 1);
        var eps = (x - x0) / sigma;
        return _inner.Step(output with { Output = eps }, stepIndex, sample, noise).MoveToOuterDisposeScope();
    }

    public void Dispose() => (_inner as IDisposable)?.Dispose();
}
