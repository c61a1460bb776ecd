using PagSharp.Guidance;

namespace PagSharp.Sampling;

public enum SamplerKind { Ddim, Ddpm }

/// <summary>Everything that determines a sampling run's output (besides the model). One record, one call.</summary>
public sealed record SamplingOptions
{
    public SamplerKind Sampler { get; init; } = SamplerKind.Ddim;
    /// <summary>Number of sampling steps (respaced); ignored when <see cref="TimestepRespacing"/> is set.</summary>
    public int Steps { get; init; } = 50;
    /// <summary>guided-diffusion respacing string (<c>ddim25</c>, <c>250</c>, <c>"10,10,10"</c>), overriding <see cref="Steps"/>.</summary>
    public string? TimestepRespacing { get; init; }
    /// <summary>DDIM η (0 = deterministic).</summary>
    public double Eta { get; init; }
    /// <summary>Clip x̂0 to [−1, 1] at every step.</summary>
    public bool ClipDenoised { get; init; } = true;
    public GuidanceSettings Guidance { get; init; } = new();
    /// <summary>Class labels, cycled over samples (sample i gets Labels[i mod n]); null = unconditional (the null class on a class-conditional model).</summary>
    public IReadOnlyList<int>? Labels { get; init; }
    /// <summary>Run seed; sample i uses seed <c>Seed + i</c> for its initial noise, sampler noise and stochastic policies.</summary>
    public long Seed { get; init; }
    public int BatchSize { get; init; } = 16;

    /// <summary>The respacing string actually used.</summary>
    public string ResolvedRespacing(int diffusionSteps)
    {
        if (!string.IsNullOrWhiteSpace(TimestepRespacing)) return TimestepRespacing!;
        if (Steps < 1) throw new PagSharpException($"steps must be ≥ 1 (got {Steps})");
        if (Steps > diffusionSteps) throw new PagSharpException($"steps {Steps} exceeds the model's {diffusionSteps} diffusion steps");
        if (Sampler == SamplerKind.Ddim)
            for (int stride = 1; stride < diffusionSteps; stride++) // the strides space_timesteps tries for ddimN
                if ((diffusionSteps + stride - 1) / stride == Steps) return "ddim" + Steps;
        return Steps.ToString(System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Per-sample seed.</summary>
    public long SampleSeed(long index) => Seed + index;

    public void Validate()
    {
        if (BatchSize < 1) throw new PagSharpException($"batch size must be ≥ 1 (got {BatchSize})");
        if (double.IsNaN(Eta) || Eta < 0) throw new PagSharpException($"eta must be ≥ 0 (got {Eta})");
        if (Labels is { Count: 0 }) throw new PagSharpException("labels list is empty");
        Guidance.Validate();
    }
}

/// <summary>Sampling progress: step within the current batch, batch index, and throughput.</summary>
public sealed record SamplingProgress(int Step, int StepsPerBatch, int Batch, int Batches, double StepsPerSecond);
