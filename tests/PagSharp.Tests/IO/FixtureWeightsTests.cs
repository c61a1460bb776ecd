using System.Text.Json;
using PagSharp.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.IO;

public class FixtureWeightsTests
{
    [Fact]
    public void AdmWeights_SafetensorsAndPt_HaveSameKeysOrderAndBits()
    {
        var st = SafeTensors.Load(Fixtures.Path("adm_a_uncond", "weights.safetensors"));
        var pt = TorchZip.Load(Fixtures.Path("adm_a_uncond", "weights.pt"));
        try
        {
            Assert.Equal(216, st.Count);
            Assert.Equal(st.Keys, pt.Keys);
            foreach (var (k, t) in st)
            {
                Assert.Equal(ScalarType.Float32, t.dtype);
                TensorAssert.BitwiseEqual(t, pt[k], k);
            }
            Assert.Equal(1_422_278L, st.Values.Sum(t => t.numel()));

            using var config = JsonDocument.Parse(File.ReadAllText(Fixtures.Path("adm_a_uncond", "config.json")));
            var expectedKeys = config.RootElement.GetProperty("state_dict_keys").EnumerateArray().Select(e => e.GetString()).ToList();
            Assert.Equal(expectedKeys, st.Keys);
            Assert.Equal(expectedKeys, StateDicts.Load(Fixtures.Path("adm_a_uncond", "weights.pt")).Keys);
        }
        finally
        {
            TensorAssert.DisposeAll(st);
            TensorAssert.DisposeAll(pt);
        }
    }

    [Fact]
    public void AdmWeights_Metadata()
    {
        var meta = SafeTensors.ReadMetadata(Fixtures.Path("adm_a_uncond", "weights.safetensors"));
        Assert.Equal("pt", meta["format"]);
    }

    [Theory]
    [InlineData("sd_unet_tiny", "weights.safetensors", 304)]
    [InlineData("sd_vae_tiny", "weights.safetensors", -1)]
    [InlineData("sd_controlnet_tiny", "controlnet_weights.safetensors", 170)]
    [InlineData("adm_a_uncond", "cases.safetensors", -1)]
    [InlineData("adm_a_uncond", "sampling.safetensors", -1)]
    public void OtherFixtures_Load(string folder, string file, int expectedCount)
    {
        var d = SafeTensors.Load(Fixtures.Path(folder, file));
        if (expectedCount >= 0) Assert.Equal(expectedCount, d.Count);
        Assert.NotEmpty(d);
        Assert.All(d.Values, t => Assert.Contains(t.dtype, new[] { ScalarType.Float32, ScalarType.Int64 }));
        TensorAssert.DisposeAll(d);
    }
}
