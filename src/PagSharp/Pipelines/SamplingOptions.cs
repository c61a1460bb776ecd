using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;

namespace PagSharp.Pipelines;

/// <summary>Everything that determines a guided-diffusion sampling run's output (besides the model). One record, one call.</summary>
public sealed record SamplingOptions
{
    /// <summary>
    /// <c>ddpm</c> or <c>ddim</c> (guided-diffusion's samplers on the respaced process), or <c>euler</c>,
    /// <c>euler-a</c>, <c>dpmpp-2m</c>, <c>unipc</c> (diffusers' schedulers through the σ-bridge, <see cref="SigmaBridge"/>).
    /// </summary>
    public string Scheduler { get; init; } = "ddim";
    /// <summary>Number of sampling steps (respaced for ddpm/ddim); for ddpm/ddim ignored when <see cref="TimestepRespacing"/> is set.</summary>
    public int Steps { get; init; } = 50;
    /// <summary>guided-diffusion respacing string (<c>ddim25</c>, <c>250</c>, <c>"10,10,10"</c>), overriding <see cref="Steps"/> (ddpm and ddim only).</summary>
    public string? TimestepRespacing { get; init; }
    /// <summary>Karras noise levels for the σ-schedulers (euler, dpmpp-2m, unipc), as "DPM++ 2M Karras".</summary>
    public bool KarrasSigmas { get; init; }
    /// <summary>DDIM η (0 = deterministic).</summary>
    public double Eta { get; init; }
    /// <summary>Clip x̂0 to [−1, 1] at every step (ddpm and ddim).</summary>
    public bool ClipDenoised { get; init; } = true;
    public GuidanceSettings Guidance { get; init; } = new();
    /// <summary>Class labels, cycled over samples (sample i gets Labels[i mod n]); null = unconditional (the null class on a class-conditional model).</summary>
    public IReadOnlyList<int>? Labels { get; init; }
    /// <summary>Run seed; sample i uses seed <c>Seed + i</c> for its initial noise, sampler noise and stochastic policies.</summary>
    public long Seed { get; init; }
    public int BatchSize { get; init; } = 16;
    /// <summary>
    /// Memory the run's activations may use, in bytes; null = the machine's available memory. When a batch would not
    /// fit, the forward calls run in smaller batches (the samples depend on their seeds only, up to float rounding);
    /// when a single sample would not fit, the run is refused before it starts (<see cref="Sampler.PlanMemory"/>).
    /// </summary>
    public long? MemoryLimitBytes { get; init; }

    /// <summary>Whether the scheduler runs on guided-diffusion's respaced process (ddpm, ddim).</summary>
    public bool UsesRespacing => Scheduler is "ddpm" or "ddim";

    /// <summary>The respacing string actually used (ddpm/ddim; the full process otherwise, which σ-schedulers do not respace).</summary>
    public string ResolvedRespacing(int diffusionSteps)
    {
        if (!UsesRespacing)
        {
            if (Steps < 1) throw new PagSharpException($"Steps must be ≥ 1 (got {Steps})");
            if (Steps > diffusionSteps) throw new PagSharpException($"Steps {Steps} exceeds the model's {diffusionSteps} diffusion steps");
            return "";
        }
        if (!string.IsNullOrWhiteSpace(TimestepRespacing)) return TimestepRespacing!;
        if (Steps < 1) throw new PagSharpException($"Steps must be ≥ 1 (got {Steps})");
        if (Steps > diffusionSteps) throw new PagSharpException($"Steps {Steps} exceeds the model's {diffusionSteps} diffusion steps");
        if (Scheduler == "ddim")
            for (int stride = 1; stride < diffusionSteps; stride++) // the strides space_timesteps tries for ddimN
                if ((diffusionSteps + stride - 1) / stride == Steps) return "ddim" + Steps;
        return Steps.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Per-sample seed.</summary>
    public long SampleSeed(long index) => Seed + index;

    public void Validate()
    {
        Schedulers.Check(Scheduler);
        if (BatchSize < 1) throw new PagSharpException($"BatchSize must be ≥ 1 (got {BatchSize})");
        if (double.IsNaN(Eta) || double.IsInfinity(Eta) || Eta < 0) throw new PagSharpException($"Eta must be a finite number ≥ 0 (got {Eta})");
        if (Labels is { Count: 0 }) throw new PagSharpException("Labels is empty");
        if (KarrasSigmas && Scheduler is not ("euler" or "dpmpp-2m" or "unipc"))
            throw new PagSharpException($"KarrasSigmas applies to the euler, dpmpp-2m and unipc schedulers (Scheduler is {Scheduler})");
        if (TimestepRespacing is not null && !UsesRespacing)
            throw new PagSharpException($"TimestepRespacing applies to the ddpm and ddim schedulers only (Scheduler is {Scheduler}); give Steps");
        Guidance.Validate();
    }
}

/// <summary>Sampling progress: step within the current batch, batch index, and throughput.</summary>
public sealed record SamplingProgress(int Step, int StepsPerBatch, int Batch, int Batches, double StepsPerSecond);
