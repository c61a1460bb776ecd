using PagSharp.Runtime;
using PagSharp.Models.Adm;
using System.ComponentModel;
using PagSharp.Models;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary>Model selection shared by the commands: built-in model, or a preset / config plus a checkpoint.</summary>
public class ModelSettings : CommandSettings
{
    [CommandOption("--preset <NAME>")]
    [Description("Released OpenAI checkpoint configuration: adm-64-cond, adm-128-cond, adm-256-cond, adm-256-uncond, adm-512-cond, lsun-bedroom, lsun-cat, lsun-horse.")]
    public string? Preset { get; init; }

    [CommandOption("--config <FILE>")]
    [Description("JSON object with guided-diffusion argument names (plus in_channels, num_classes, null_class).")]
    public string? Config { get; init; }

    [CommandOption("--checkpoint <FILE>")]
    [Description("Weights: .safetensors, or a PyTorch zip .pt/.pth/.bin state dict (read without executing code).")]
    public string? Checkpoint { get; init; }

    [CommandOption("--random-weights")]
    [Description("Use randomly initialised weights (no checkpoint), e.g. for benchmarks.")]
    public bool RandomWeights { get; init; }

    [CommandOption("--dtype <TYPE>")]
    [Description("Type the network computes in: float32 (default), bfloat16 (weights and activations in bfloat16; guidance and the sampler stay float32), float16.")]
    public string Dtype { get; init; } = "float32";

    public LoadedAdm LoadModel()
    {
        var type = ComputeType.Parse(Dtype);
        var loaded = ModelStore.Load(Preset, Config, Checkpoint, RandomWeights);
        ComputeType.Apply(loaded.Net, type);
        return loaded;
    }
}
