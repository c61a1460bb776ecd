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

    public void Validate()
    {
        if (Steps < 1) throw new PagSharpException($"steps must be ≥ 1 (got {Steps})");
        if (BatchSize < 1) throw new PagSharpException($"batch size must be ≥ 1 (got {BatchSize})");
        if (!(LearningRate > 0)) throw new PagSharpException($"learning rate must be > 0 (got {LearningRate})");
        if (!(LabelDropProb >= 0 && LabelDropProb <= 1)) throw new PagSharpException($"label drop probability must be in [0,1] (got {LabelDropProb})");
        if (CheckpointEvery < 1) throw new PagSharpException($"checkpoint interval must be ≥ 1 (got {CheckpointEvery})");
        if (!(EmaRate >= 0 && EmaRate < 1)) throw new PagSharpException($"EMA rate must be in [0, 1) (got {EmaRate})");
    }
}

/// <summary>Training progress after a step.</summary>
public sealed record TrainProgress(long Step, long TotalSteps, double Loss, double Mse, double Vb, double StepsPerSecond);
