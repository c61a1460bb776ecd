using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Models;

/// <summary>
/// Channels-last (NHWC) memory layout for 4-D tensors. TorchSharp 0.107 has no memory-format argument, but libtorch
/// picks its channels-last kernels from the strides alone, so a permute → contiguous → permute-back copy is enough.
/// Measured by <c>pag bench</c> (methods ending in <c>+channels-last</c>); see docs/performance.md.
/// </summary>
public static class MemoryLayout
{
    /// <summary>A copy of a 4-D tensor with NCHW shape and NHWC strides; other tensors are returned unchanged.</summary>
    public static Tensor ChannelsLast(Tensor x) => x.dim() != 4 ? x : x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2);

    /// <summary>True when a 4-D tensor is laid out channels-last (the channel stride is 1).</summary>
    public static bool IsChannelsLast(Tensor x) => x.dim() == 4 && x.stride(1) == 1 && x.shape[1] > 1;

    /// <summary>Re-lays every 4-D parameter of <paramref name="module"/> (the conv weights) out channels-last, in place.</summary>
    public static void ToChannelsLast(nn.Module module)
    {
        using var _ = no_grad();
        foreach (var p in module.parameters())
            if (p.dim() == 4)
            {
                using var cl = ChannelsLast(p);
                p.set_(cl);
            }
    }
}
