using PagSharp.Models.Adm;

namespace PagSharp.Training;

/// <summary>Settings of a training run. Everything here is stored in each checkpoint.</summary>
public sealed record TrainOptions
{
    public required AdmConfig Model { get; init; }
    public int Steps { get; init; } = 20000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 2e-4;
    public double WeightDecay { get; init; }
    public double EmaRate { get; init; } = 0.999;
    public double GradClip { get; init; } = 1.0;
    /// <summary>Probability of replacing a label by the null class (classifier-free guidance training).</summary>
    public double LabelDropProb { get; init; } = 0.1;
    /// <summary>Weight λ of the VLB term (multiplied by T/1000 as the reference's RESCALED_MSE).</summary>
    public double VlbWeight { get; init; } = 1.0;
    public int CheckpointEvery { get; init; } = 250;
    public int SampleEvery { get; init; } = 1000;
    public long Seed { get; init; } = 0;
    /// <summary>
    /// Type of the forward/backward arithmetic: float32, or bfloat16 (mixed precision: float32 master weights,
    /// optimizer, EMA, loss and checkpoints; a bfloat16 copy of the weights computes the passes).
    /// </summary>
    public string Precision { get; init; } = "float32";
    /// <summary>Steps after which the EMA weights are also kept as <c>snapshots/ema_step_NNNNNNN.safetensors</c>
    /// (weaker versions of the same model, e.g. as the guide of autoguidance).</summary>
    public long[] SnapshotSteps { get; init; } = [];
    /// <summary>Weights the run started from (recorded only; <see cref="Trainer.InitializeFrom"/> loads them).</summary>
    public string? InitFrom { get; init; }

    /// <summary>The scalar type <see cref="Precision"/> names.</summary>
    [System.Text.Json.Serialization.JsonIgnore]
    public TorchSharp.torch.ScalarType ComputeDtype => Precision switch
    {
        "float32" => TorchSharp.torch.ScalarType.Float32,
        "bfloat16" => TorchSharp.torch.ScalarType.BFloat16,
        _ => throw new PagSharpException($"Precision must be float32 or bfloat16 (got '{Precision}')"),
    };

    public void Validate()
    {
        if (Steps < 1) throw new PagSharpException($"steps must be ≥ 1 (got {Steps})");
        if (BatchSize < 1) throw new PagSharpException($"batch size must be ≥ 1 (got {BatchSize})");
        if (!(LearningRate > 0)) throw new PagSharpException($"learning rate must be > 0 (got {LearningRate})");
        if (!(LabelDropProb >= 0 && LabelDropProb <= 1)) throw new PagSharpException($"label drop probability must be in [0,1] (got {LabelDropProb})");
        if (CheckpointEvery < 1) throw new PagSharpException($"checkpoint interval must be ≥ 1 (got {CheckpointEvery})");
        _ = ComputeDtype;
        if (SnapshotSteps.Any(k => k < 1)) throw new PagSharpException($"SnapshotSteps must be ≥ 1 (got {string.Join(",", SnapshotSteps)})");
        if (!(EmaRate >= 0 && EmaRate < 1)) throw new PagSharpException($"EMA rate must be in [0, 1) (got {EmaRate})");
    }
}

/// <summary>Training progress after a step.</summary>
public sealed record TrainProgress(long Step, long TotalSteps, double Loss, double Mse, double Vb, double StepsPerSecond);
