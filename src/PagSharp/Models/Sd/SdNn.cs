using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>
/// Layer constructors for the diffusers ports. TorchSharp 0.107 leaves the affine parameters of GroupNorm (and may
/// leave those of LayerNorm) uninitialised, so they are set to PyTorch's defaults (weight 1, bias 0) here; a model
/// with random weights (tests, benchmarks) is then well defined before a checkpoint is loaded.
/// </summary>
internal static class SdNn
{
    public static GroupNorm GroupNorm(long groups, long channels, double eps)
    {
        if (groups < 1 || channels % groups != 0)
            throw new PagSharpException($"GroupNorm: {channels} channels cannot be split into {groups} groups (norm_num_groups)");
        var norm = nn.GroupNorm(groups, channels, eps: eps);
        InitAffine(norm.weight, norm.bias);
        return norm;
    }

    public static LayerNorm LayerNorm(long dim, double eps)
    {
        var norm = nn.LayerNorm(dim, eps: eps);
        InitAffine(norm.weight, norm.bias);
        return norm;
    }

    private static void InitAffine(Parameter? weight, Parameter? bias)
    {
        using var _ = no_grad();
        weight?.fill_(1);
        bias?.zero_();
    }

    /// <summary>A k×k convolution with "same" padding ((k − 1) / 2), as diffusers' conv_in/conv_out and resnet convs.</summary>
    public static Conv2d Conv(long inCh, long outCh, long kernel = 3, long stride = 1, long? padding = null) =>
        Conv2d(inCh, outCh, kernel, stride: stride, padding: padding ?? (kernel - 1) / 2);

    /// <summary>diffusers' <c>get_activation</c>: silu/swish, gelu, mish, relu.</summary>
    public static Tensor Activation(string name, Tensor x) => name switch
    {
        "silu" or "swish" => functional.silu(x),
        "gelu" => functional.gelu(x),
        "mish" => functional.mish(x),
        "relu" => functional.relu(x),
        _ => throw new PagSharpException($"unsupported activation '{name}'; valid: silu, swish, gelu, mish, relu"),
    };
}

/// <summary><c>ModuleList</c> children named 0, 1, … so state-dict keys read <c>resnets.0.conv1.weight</c>.</summary>
internal static class SdModuleList
{
    public static ModuleList<T> Of<T>(IEnumerable<T> items) where T : Module => new(items.ToArray());
}
