using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Runtime;

/// <summary>
/// The type a network computes in: float32 (default), bfloat16 (fast on CPUs with AVX512-BF16 or AMX), float16. The
/// denoiser adapters feed such a network its input in that type and hand its output back in float32, so guidance
/// and the scheduler arithmetic stay float32; attention softmax runs in float32 (<c>AttentionMath.Softmax</c>).
/// </summary>
public static class ComputeType
{
    public static readonly string[] Names = { "float32", "bfloat16", "float16" };

    /// <summary><c>float32 | bfloat16 | float16</c> → the scalar type; throws naming the valid values.</summary>
    public static ScalarType Parse(string name) => name switch
    {
        "float32" => ScalarType.Float32,
        "bfloat16" => ScalarType.BFloat16,
        "float16" => ScalarType.Float16,
        _ => throw new PagSharpException($"unknown dtype '{name}'; valid: {string.Join(", ", Names)}"),
    };

    /// <summary>Casts every parameter and buffer of <paramref name="module"/> to <paramref name="type"/> (no-op for float32 modules asked for float32).</summary>
    public static T Apply<T>(T module, ScalarType type) where T : nn.Module
    {
        if (module.parameters().First().dtype != type) module.to(type);
        return module;
    }
}
