using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Tiled VAE (diffusers' enable_tiling) on the tiny fixture VAE (sample_size 32: 32-pixel tiles, 16-latent tiles):
/// inputs within one tile are untouched; larger ones match diffusers' tiled decode and encode.
/// </summary>
public sealed class VaeTilingTests
{
    private static AutoencoderKL Vae() => SdVaeParityTests.LoadVae();

    [Fact]
    public void WithinOneTile_TilingChangesNothing()
    {
        using var vae = Vae();
        using var _ = no_grad();
        using var g = new TorchSharp.torch.Generator(1);
        using var z = randn(new long[] { 1, 4, vae.TileLatentSize, vae.TileLatentSize }, generator: g);
        using var plain = vae.Decode(z);
        vae.Tiling = true;
        using var tiled = vae.Decode(z);
        Assert.True(plain.eq(tiled).all().item<bool>());
    }

    [Fact]
    public void LargerInputs_MatchDiffusersTiledDecodeAndEncode()
    {
        // diffusers' own tiled results on the same weights (tests/fixtures/sd_vae_tiny/tiling.safetensors, README §8.1);
        // on this tiny random VAE, tiling changes the output by up to 5.6 (its mid-block attention and group norms
        // see one tile instead of the image), so only parity is a meaningful check.
        using var vae = Vae();
        vae.Tiling = true;
        using var _ = no_grad();
        var t = SafeTensors.Load(Fixtures.Path("sd_vae_tiny", "tiling.safetensors"));
        using var decoded = vae.Decode(t["z"]);
        SdFixtures.AssertRelative(t["decoded_tiled"], decoded, 1e-5, "tiled decode");
        using var moments = vae.Moments(t["x"]);
        SdFixtures.AssertRelative(t["moments_tiled"], moments, 1e-5, "tiled encode");
        vae.Tiling = false;
        using var plain = vae.Decode(t["z"]);
        Assert.False(plain.allclose(decoded), "tiling should change this output");
    }
}
