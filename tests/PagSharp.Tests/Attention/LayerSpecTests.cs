using PagSharp.Attention;
using PagSharp.Models.Adm;
using PagSharp.Tests.Models;

namespace PagSharp.Tests.Attention;

/// <summary>Layer specifications resolved against model A's attention blocks (fixtures README §3).</summary>
public class LayerSpecTests
{
    private const string In3 = "input_blocks.3.1", In5 = "input_blocks.5.1", Mid = "middle_block.1",
        Out0 = "output_blocks.0.1", Out1 = "output_blocks.1.1", Out2 = "output_blocks.2.1", Out3 = "output_blocks.3.1";

    /// <summary>Model A's layers as README §3 describes them (token counts 256, 64, 64, 64, 64, 256, 256).</summary>
    private static readonly AttentionLayerInfo[] Layers =
    {
        new(In3, "input", 16, 64, 4), new(In5, "input", 8, 64, 4), new(Mid, "middle", 8, 64, 4),
        new(Out0, "output", 8, 64, 4), new(Out1, "output", 8, 64, 4), new(Out2, "output", 16, 64, 4), new(Out3, "output", 16, 64, 4),
    };

    [Fact]
    public void ModelA_HasTheseLayers()
    {
        using var net = new AdmUNet(AdmA.Config());
        Assert.Equal(Layers, net.AttentionLayers);
    }

    [Theory]
    [InlineData("middle_block.1", new[] { Mid })]
    [InlineData("output_blocks.2.1", new[] { Out2 })]
    [InlineData("input", new[] { In3, In5 })]
    [InlineData("middle", new[] { Mid })]
    [InlineData("output", new[] { Out0, Out1, Out2, Out3 })]
    [InlineData("all", new[] { In3, In5, Mid, Out0, Out1, Out2, Out3 })]
    [InlineData("@16", new[] { In3, Out2, Out3 })]
    [InlineData("@8", new[] { In5, Mid, Out0, Out1 })]
    [InlineData("all@16", new[] { In3, Out2, Out3 })]
    [InlineData("output@8", new[] { Out0, Out1 })]
    [InlineData("input@16", new[] { In3 })]
    [InlineData("output_blocks.*", new[] { Out0, Out1, Out2, Out3 })]
    [InlineData("*_blocks.?.1", new[] { In3, In5, Out0, Out1, Out2, Out3 })]
    [InlineData("*.1", new[] { In3, In5, Mid, Out0, Out1, Out2, Out3 })]
    [InlineData("output_blocks.*@16", new[] { Out2, Out3 })]
    // Lists keep the network's order and drop duplicates.
    [InlineData("middle_block.1,input_blocks.3.1", new[] { In3, Mid })]
    [InlineData(" output_blocks.3.1 , middle ,middle_block.1", new[] { Mid, Out3 })]
    [InlineData("input,@16", new[] { In3, In5, Out2, Out3 })]
    public void Resolve(string spec, string[] expected) => Assert.Equal(expected, LayerSpec.Resolve(spec, Layers));

    [Theory]
    [InlineData("nope")]
    [InlineData("middle_block")]        // names are exact, not prefixes
    [InlineData("middle_block.10")]
    [InlineData("Middle")]               // case-sensitive
    [InlineData("middle_block.1,nope")]  // one bad item fails the whole list
    [InlineData("@32")]                  // no layer at 32×32
    [InlineData("middle@16")]
    [InlineData("input_blocks.*.2")]
    [InlineData("@x")]
    [InlineData("@0")]
    [InlineData("")]
    [InlineData(" ")]
    public void Invalid_ThrowsListingValidLayers(string spec)
    {
        var e = Assert.Throws<PagSharpException>(() => LayerSpec.Resolve(spec, Layers));
        if (spec.Trim().Length > 0) Assert.Contains(spec.Split(',')[^1].Trim(), e.Message);
        if (!spec.Contains("@x") && !spec.Contains("@0"))
        {
            foreach (var l in Layers) Assert.Contains(l.Name, e.Message);
            foreach (var g in new[] { "input", "middle", "output", "all" }) Assert.Contains(g, e.Message);
        }
        else Assert.Contains("16", e.Message); // the resolutions that exist
    }
}
