using static TorchSharp.torch;

namespace PagSharp.Inverse;

/// <summary>
/// A degradation y = A(x) + σ_y·n. <see cref="Forward"/> is A, built from differentiable tensor ops so that
/// ∇ₓ‖y − A(x)‖ can be taken by autograd (DPS).
/// </summary>
public interface IMeasurementOperator
{
    /// <summary>The spec string this operator was parsed from (e.g. <c>box:16</c>, <c>sr:4</c>).</summary>
    string Spec { get; }
    /// <summary>Measurement noise standard deviation σ_y (in the [−1, 1] image scale).</summary>
    double NoiseSigma { get; }
    /// <summary>A(x) for x [N,C,H,W].</summary>
    Tensor Forward(Tensor x);
    /// <summary>The measurement shown to a person, at image size (e.g. masked pixels grey, low resolution upsampled).</summary>
    Tensor Visualize(Tensor y, long height, long width);
}

/// <summary>Helpers shared by the operators.</summary>
public static class Measurement
{
    /// <summary>y = A(x) + σ_y·n with n drawn from <paramref name="generator"/>.</summary>
    public static Tensor Degrade(IMeasurementOperator op, Tensor x, Generator? generator = null)
    {
        var y = op.Forward(x);
        return op.NoiseSigma > 0 ? y + op.NoiseSigma * randn(y.shape, generator: generator) : y;
    }
}
