using static TorchSharp.torch;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// A sampler for one run, of any model family of a fixed number of steps (instances hold per-run state, such as
/// DPM-Solver's previous outputs): the pipeline scales x_T by <see cref="InitNoiseSigma"/>, and at step i feeds the
/// network <see cref="ScaleModelInput"/> at timestep <see cref="Timesteps"/>[i], then calls <see cref="Step"/>.
/// </summary>
public interface IScheduler
{
    /// <summary>The CLI name (ddpm, ddim, euler, euler-a, dpmpp-2m).</summary>
    string Name { get; }
    /// <summary>Model timesteps, first to last (float32; integers for DDIM and DPM-Solver).</summary>
    IReadOnlyList<float> Timesteps { get; }
    /// <summary>Standard deviation of the initial noise (1 for DDIM and DPM-Solver).</summary>
    float InitNoiseSigma { get; }
    /// <summary>The network input at step <paramref name="stepIndex"/> (identity for DDIM and DPM-Solver).</summary>
    Tensor ScaleModelInput(Tensor sample, int stepIndex);
    /// <summary>
    /// x at the next step from the (guided) model output at step <paramref name="stepIndex"/> (and, for
    /// learned-variance models, its variance values). Stochastic steps draw their noise per sample from
    /// <paramref name="noise"/> (required then).
    /// </summary>
    Tensor Step(ModelOutput output, int stepIndex, Tensor sample, NoiseSource? noise);

    /// <summary>
    /// diffusers' <c>add_noise</c> at step <paramref name="stepIndex"/>: the clean <paramref name="original"/> noised to
    /// that step's level with <paramref name="noise"/> (√ᾱ_t·x0 + √(1−ᾱ_t)·ε for DDPM/DDIM, x0 + σ·ε for Euler,
    /// α_σ·x0 + σ_σ·ε for the multistep solvers) — where image-to-image starts and what inpainting blends with.
    /// </summary>
    Tensor AddNoise(Tensor original, Tensor noise, int stepIndex);
}

/// <summary>Creates schedulers by name.</summary>
public static class Schedulers
{
    /// <summary>Every scheduler name, for any model family.</summary>
    public static readonly string[] Names = { "ddpm", "ddim", "euler", "euler-a", "dpmpp-2m", "unipc" };

    /// <summary>The schedulers ported from diffusers, which take a diffusers scheduler config.</summary>
    public static readonly string[] DiffusersNames = { "ddpm", "ddim", "euler", "euler-a", "dpmpp-2m", "unipc" };

    /// <summary>A diffusers-style scheduler for <paramref name="steps"/> inference steps; <paramref name="eta"/> is DDIM's η.</summary>
    public static IScheduler Create(string name, SchedulerConfig config, int steps, double eta = 0) => name switch
    {
        "ddim" => new DdimScheduler(config, steps, eta),
        "euler" => new EulerScheduler(config, steps, ancestral: false),
        "euler-a" => new EulerScheduler(config, steps, ancestral: true),
        "dpmpp-2m" => new DpmSolverMultistepScheduler(config, steps),
        "unipc" => new UniPcScheduler(config, steps),
        "ddpm" => new DdpmScheduler(config, steps),
        _ => throw new PagSharpException($"unknown scheduler '{name}'; valid: {string.Join(", ", Names)}"),
    };

    /// <summary>
    /// A scheduler for a guided-diffusion model: <c>ddpm</c> and <c>ddim</c> run on the respaced
    /// <paramref name="respaced"/> process with guided-diffusion's arithmetic; the others through the
    /// <see cref="SigmaBridge"/> with <paramref name="steps"/> inference steps, with x̂₀ clipped to [−1, 1] as guided-diffusion
    /// does when <paramref name="clipDenoised"/> (<see cref="ClippedDenoisedScheduler"/>).
    /// </summary>
    public static IScheduler ForGaussianDiffusion(string name, GaussianDiffusion respaced, string noiseSchedule, int steps, double eta, bool clipDenoised,
                                                  bool karrasSigmas = false) => name switch
    {
        "ddpm" => new GaussianDiffusionScheduler(respaced, ddim: false, eta, clipDenoised),
        "ddim" => new GaussianDiffusionScheduler(respaced, ddim: true, eta, clipDenoised),
        _ => Create(Check(name), SigmaBridge.For(noiseSchedule, respaced.OriginalSteps) with { UseKarrasSigmas = karrasSigmas }, steps, eta) is var s
             && clipDenoised && s is ISigmaScheduler sigma ? new ClippedDenoisedScheduler(sigma) : s,
    };

    /// <summary>Throws for an unknown name (before anything is loaded).</summary>
    public static string Check(string name) => Names.Contains(name) ? name
        : throw new PagSharpException($"unknown scheduler '{name}'; valid: {string.Join(", ", Names)}");
}
