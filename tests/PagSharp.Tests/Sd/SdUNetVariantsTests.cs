using System.Text.Json.Nodes;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>SD 2.x-style UNet options (linear projections, per-block head counts) and odd latent sizes.</summary>
public class SdUNetVariantsTests
{
    private static SdUNetConfig Config(Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(SdFixtures.UnetConfigJson())!.AsObject();
        edit(o);
        return SdUNetConfig.FromJson(o.ToJsonString(), "edited config");
    }

    [Fact]
    public void LinearProjection_WithTheSameWeights_EqualsConvProjection()
    {
        // diffusers converts between the two by reshaping the 1×1 conv kernels; the outputs must agree.
        var cfg = Config(o => { o["use_linear_projection"] = true; o["attention_head_dim"] = new JsonArray(8, 8); });
        Assert.True(cfg.UseLinearProjection);
        using var net = new SdUNet(cfg);
        net.eval();
        var w = SafeTensors.Load(SdFixtures.Unet("weights.safetensors"));
        var cases = SdFixtures.Tensors(SdFixtures.Unet("cases.safetensors"));
        try
        {
            var lin = w.ToDictionary(kv => kv.Key, kv => (kv.Key.Contains(".proj_in.weight") || kv.Key.Contains(".proj_out.weight"))
                ? kv.Value.reshape(kv.Value.shape[0], kv.Value.shape[1]) : kv.Value);
            StateDictLoader.LoadStrict(net, lin, "reshaped");
            Assert.Equal(2, net.state_dict()["mid_block.attentions.0.proj_in.weight"].dim());
            using var _ = no_grad();
            using var t = tensor(500L);
            Close.Assert(cases["out_none"], net.Forward(cases["x"], t, cases["encoder_hidden_states"]), 1e-4, "linear projection");
        }
        finally
        {
            TensorAssert.DisposeAll(w);
            TensorAssert.DisposeAll(cases);
        }
    }

    [Fact]
    public void PerBlockHeads_FollowDiffusersReversal()
    {
        var cfg = Config(o =>
        {
            o["block_out_channels"] = new JsonArray(8, 16);
            o["down_block_types"] = new JsonArray("CrossAttnDownBlock2D", "CrossAttnDownBlock2D");
            o["up_block_types"] = new JsonArray("CrossAttnUpBlock2D", "CrossAttnUpBlock2D");
            o["attention_head_dim"] = new JsonArray(2, 4);
        });
        using var net = new SdUNet(cfg);
        int Heads(string prefix) => net.AttentionLayers.First(l => l.Name.StartsWith(prefix, StringComparison.Ordinal)).Heads;
        Assert.Equal(2, Heads("down_blocks.0"));
        Assert.Equal(4, Heads("down_blocks.1"));
        Assert.Equal(4, Heads("mid_block"));
        Assert.Equal(4, Heads("up_blocks.0")); // up blocks take the reversed list
        Assert.Equal(2, Heads("up_blocks.1"));
        Assert.Equal(2 * 2 + 1 + 2 * 3, net.AttentionLayers.Count);
        // head size = channels / heads: to_q of a 16-channel block is [16, 16] whatever the head count.
        Assert.Equal(new long[] { 16, 16 }, net.state_dict()["mid_block.attentions.0.transformer_blocks.0.attn1.to_q.weight"].shape);
    }

    [Theory]
    [InlineData(31, 29)]
    [InlineData(30, 34)]
    public void OddLatentSizes_UpsampleToTheSkipSize(int h, int w)
    {
        using var net = SdFixtures.LoadUnet();
        using var _ = no_grad();
        manual_seed(2);
        using var x = randn(1, 4, h, w);
        using var e = randn(1, 77, 8);
        using var t = tensor(10L);
        using var o = net.Forward(x, t, e);
        Assert.Equal(new long[] { 1, 4, h, w }, o.shape);
    }
}
