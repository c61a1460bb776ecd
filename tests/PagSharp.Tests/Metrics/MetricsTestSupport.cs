using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

internal static class MetricsTestSupport
{
    /// <summary>Same dtype, shape and values (TorchSharp's <c>Tensor.equal</c> is element-wise).</summary>
    public static bool Same(Tensor a, Tensor b) =>
        a.dtype == b.dtype && a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();
}
