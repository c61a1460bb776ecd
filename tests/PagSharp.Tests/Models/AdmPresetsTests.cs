using PagSharp.Attention;
using PagSharp.Models.Adm;

namespace PagSharp.Tests.Models;

/// <summary>The released ADM presets carry the official PAG code's recommended guidance where it has one.</summary>
public sealed class AdmPresetsTests
{
    [Fact]
    public void TheImageNet256PresetsRecommendTheOfficialLayersAndScale()
    {
        using var net = new AdmUNet(AdmPresets.Get("adm-256-uncond"));
        foreach (var name in new[] { "adm-256-uncond", "adm-256-cond" })
        {
            var d = AdmPresets.Get(name).GuidanceDefaults!;
            Assert.Equal(3, d.PagScale); // the official scripts' --guide_scale 4.0 = s + 1
            var layers = LayerSpec.Resolve(d.PagLayers, net.AttentionLayers);
            Assert.Equal(["input_blocks.14.1", "input_blocks.16.1", "input_blocks.17.1", "middle_block.1"], layers);
            var res = layers.Select(l => net.AttentionLayers.Single(a => a.Name == l).Resolution).ToArray();
            Assert.Equal([16, 8, 8, 8], res); // the two deepest encoder levels and the bottleneck
        }
        Assert.Null(AdmPresets.Get("adm-512-cond").GuidanceDefaults);
    }
}
