using PagSharp.Pipelines;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// A U-Net asked for in half precision is built and filled in that type (no float32 copy): every parameter is
/// float16 / bfloat16, the global default dtype is restored, and its output follows the float32 model's. Runs alone:
/// building changes torch's process-wide default dtype for its duration.
/// </summary>
[Collection(MetaDeviceCollection.Name)]
public sealed class HalfWeightsTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    public void Dispose() => _sd.Dispose();

    [Theory]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.BFloat16)]
    public void UnetLoadedInHalfPrecision_HoldsHalfWeights_AndTracksFloat32(ScalarType type)
    {
        using var full = StableDiffusion.Load(_sd.Root, new SdComponents(Vae: false, TextEncoder: false));
        using var half = StableDiffusion.Load(_sd.Root, new SdComponents(Vae: false, TextEncoder: false, UnetType: type));
        Assert.Equal(ScalarType.Float32, get_default_dtype());
        Assert.All(half.Unet.parameters(), p => Assert.Equal(type, p.dtype));
        Assert.All(full.Unet.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        // The half weights are the float32 ones rounded once.
        foreach (var (k, w) in full.Unet.state_dict())
            Assert.True(w.to_type(type).eq(half.Unet.state_dict()[k]).all().item<bool>(), k);
        using var _ = no_grad();
        var cases = SdFixtures.Tensors(SdFixtures.Unet("cases.safetensors"));
        using var a = full.Unet.Forward(cases["x"], tensor(500L), cases["encoder_hidden_states"]);
        using var b = half.Unet.Forward(cases["x"].to_type(type), tensor(500L), cases["encoder_hidden_states"].to_type(type)).to_type(ScalarType.Float32);
        SdFixtures.AssertRelative(a, b, type == ScalarType.Float16 ? 1e-2 : 5e-2, "half-precision UNet");
    }
}
