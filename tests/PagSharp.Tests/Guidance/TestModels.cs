using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Denoisers;
using System.Text.Json;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Tests.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

/// <summary>Models for guidance tests: the ADM-A parity fixture, and tiny random ADM U-Nets.</summary>
internal static class TestModels
{
    /// <summary>The fixture's model A (unconditional, 32×32, learned variance) with its reference weights.</summary>
    public static AdmUNet FixtureA() => PagSharp.Tests.Models.AdmA.Load();

    /// <summary>A 16×16 RGB model, 32/64 channels, attention at 8×8 (4 heads of 16), learned variance.</summary>
    public static AdmConfig TinyConfig(bool classConditional) => new()
    {
        ImageSize = 16, InChannels = 3, NumChannels = 32, NumResBlocks = 1, ChannelMult = "1,2", AttentionResolutions = "8",
        NumHeadChannels = 16, ResblockUpdown = true, LearnSigma = true, NoiseSchedule = "linear",
        NumClasses = classConditional ? 3 : null, NullClass = classConditional ? 2 : null,
    };

    /// <summary>
    /// A tiny model with every parameter drawn from N(0, 0.05²) and GroupNorm weights shifted by +1, as the fixtures
    /// are made (the default init zero-initialises the output convolution, which would make ε ≡ 0).
    /// </summary>
    public static AdmUNet Tiny(bool classConditional, ulong seed = 1)
    {
        var net = new AdmUNet(TinyConfig(classConditional));
        using var g = new Generator(seed);
        using (no_grad())
        {
            foreach (var (_, p) in net.named_parameters())
            {
                using var r = randn(p.shape, generator: g) * 0.05;
                p.copy_(r);
            }
            foreach (var (_, m) in net.named_modules())
                if (m is TorchSharp.Modules.GroupNorm gn) gn.weight!.add_(1.0);
        }
        net.eval();
        return net;
    }

    public static void AssertClose(Tensor expected, Tensor actual, double atol, string what = "")
    {
        Assert.True(expected.shape.SequenceEqual(actual.shape), $"{what}: shape [{string.Join(",", actual.shape)}] != [{string.Join(",", expected.shape)}]");
        double diff = (expected.to_type(ScalarType.Float64) - actual.to_type(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(diff <= atol, $"{what}: max abs diff {diff:G4} > {atol:G4}");
    }

    public static void AssertBitwiseEqual(Tensor expected, Tensor actual, string what = "") => TensorAssert.BitwiseEqual(expected.contiguous(), actual.contiguous(), what);

    public static double MaxAbsDiff(Tensor a, Tensor b) => (a - b).abs().max().item<float>();

    /// <summary>The network on the denoiser contract with labels <paramref name="y"/> (or <paramref name="batch"/> unconditional samples).</summary>
    public static AdmDenoiser Adm(AdmUNet net, Tensor? y, long batch = 2) => new(net, y, y?.shape[0] ?? batch);

    /// <summary>A step at model timestep <paramref name="t"/> (all entries of <paramref name="t"/> equal).</summary>
    public static StepContext At(Tensor t) => new(0, 1, t[0].item<long>());

    /// <summary>One conditional forward of the raw network with labels <paramref name="y"/> (ε and variance values).</summary>
    public static ModelOutput Fwd(AdmUNet net, Tensor x, Tensor t, Tensor? y, PerturbationPlan? plan) =>
        Adm(net, y, x.shape[0]).Forward(x, At(t), [Branch.Conditional], plan);
}
