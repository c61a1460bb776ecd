using System.Text.Json;
using PagSharp.Attention;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>The tiny diffusers UNet2DConditionModel against diffusers' own outputs (fixtures README §5.1).</summary>
public class SdUNetParityTests
{
    private const double Tol = 1e-4;

    [Fact]
    public void Config_AndLayers_MatchDiffusers()
    {
        using var net = SdFixtures.LoadUnet();
        using var doc = JsonDocument.Parse(File.ReadAllText(SdFixtures.Unet("cases.json")));
        var expected = doc.RootElement.GetProperty("self_attention_modules").EnumerateArray().Select(e => e.GetString()!).Order().ToArray();
        Assert.Equal(expected, net.AttentionLayers.Select(l => l.Name).Order().ToArray());
        Assert.Equal(new[] { "input", "input", "middle", "output", "output", "output" }, net.AttentionLayers.Select(l => l.Group));
        Assert.All(net.AttentionLayers, l => Assert.Equal(8, l.Heads));
        Assert.All(net.AttentionLayers, l => Assert.Equal(16, l.Resolution));
        // Every key of the reference state dict, and nothing else.
        var keys = JsonSerializer.Deserialize<string[]>(SdFixtures.ConfigProperty(SdFixtures.Unet("config.json"), "state_dict_keys"))!;
        Assert.Equal(keys.Order(), net.state_dict().Keys.Order());
        Assert.Equal(24428, net.parameters().Sum(p => p.numel()));
    }

    [Fact]
    public void Forward_ReproducesEveryCase()
    {
        using var net = SdFixtures.LoadUnet();
        var cases = SdFixtures.Tensors(SdFixtures.Unet("cases.safetensors"));
        try
        {
            using var _ = no_grad();
            var x = cases["x"];
            var ehs = cases["encoder_hidden_states"];
            var neg = cases["encoder_hidden_states_neg"];
            using var t = cases["t"].reshape(Array.Empty<long>()); // a 0-dim tensor, as the reference call
            Close.Assert(cases["out_none"], net.Forward(x, t, ehs), Tol, "out_none");
            Close.Assert(cases["out_uncond"], net.Forward(x, t, neg), Tol, "out_uncond");

            var sets = new Dictionary<string, string[]>
            {
                ["out_pag_mid"] = new[] { "mid_block.attentions.0.transformer_blocks.0.attn1" },
                ["out_pag_down_blocks_1"] = new[] { "down_blocks.1.attentions.0.transformer_blocks.0.attn1", "down_blocks.1.attentions.1.transformer_blocks.0.attn1" },
                ["out_pag_all"] = net.AttentionLayers.Select(l => l.Name).ToArray(),
            };
            foreach (var (key, layers) in sets)
            {
                using var scope = NewDisposeScope();
                // All entries perturbed.
                var all = net.Forward(x, t, ehs, PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance));
                Close.Assert(cases[key], all, Tol, key + " (all perturbed)");
                // diffusers' batch [org; ptb] with the perturbed half last.
                var both = net.Forward(cat(new[] { x, x }), t, cat(new[] { ehs, ehs }),
                    PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance, new long[] { 2, 3 }));
                Close.Assert(cases["out_none"], both.narrow(0, 0, 2), Tol, key + " unperturbed half");
                Close.Assert(cases[key], both.narrow(0, 2, 2), Tol, key + " perturbed half");
                // Shared prefix: feed [org], fork it at the first perturbed layer.
                var forked = net.Forward(x, t, ehs,
                    PerturbationPlan.Perturb(layers, IdentityPerturbation.Instance, new long[] { 2, 3 }, forkSource: new long[] { 0, 1 }));
                Close.Assert(cases["out_none"], forked.narrow(0, 0, 2), Tol, key + " forked, unperturbed");
                Close.Assert(cases[key], forked.narrow(0, 2, 2), Tol, key + " forked, perturbed");
            }
            // The CFG layout [uncond, cond, cond_perturbed].
            var cfg = net.Forward(cat(new[] { x, x, x }), t, cat(new[] { neg, ehs, ehs }),
                PerturbationPlan.Perturb(sets["out_pag_mid"], IdentityPerturbation.Instance, new long[] { 4, 5 }));
            Close.Assert(cases["out_uncond"], cfg.narrow(0, 0, 2), Tol, "cfg layout uncond");
            Close.Assert(cases["out_none"], cfg.narrow(0, 2, 2), Tol, "cfg layout cond");
            Close.Assert(cases["out_pag_mid"], cfg.narrow(0, 4, 2), Tol, "cfg layout perturbed");

            Close.AssertDiffer(cases["out_none"], cases["out_pag_mid"], 100 * Tol, "out_none vs out_pag_mid");
            Close.AssertDiffer(cases["out_pag_mid"], cases["out_pag_all"], 100 * Tol, "out_pag_mid vs out_pag_all");
        }
        finally
        {
            TensorAssert.DisposeAll(cases);
        }
    }

    [Fact]
    public void StrictLoading_ReportsMissingAndMisShapedKeys()
    {
        using var net = new SdUNet(SdFixtures.UnetConfig());
        var w = SafeTensors.Load(SdFixtures.Unet("weights.safetensors"));
        try
        {
            w.Remove("conv_in.bias", out var removed);
            removed!.Dispose();
            w["conv_out.weight"] = zeros(4, 4, 1, 1);
            var e = Assert.Throws<PagSharpException>(() => StateDictLoader.LoadStrict(net, w, "unet.safetensors"));
            Assert.Contains("conv_in.bias", e.Message);
            Assert.Contains("conv_out.weight", e.Message);
        }
        finally { TensorAssert.DisposeAll(w); }
    }

    [Fact]
    public void Config_RejectsUnsupportedFeatures()
    {
        var e = Assert.Throws<PagSharpException>(() => SdUNetConfig.FromJson("{\"addition_embed_type\": \"text_time\"}", "unet/config.json"));
        Assert.Contains("addition_embed_type", e.Message);
        Assert.Contains("unet/config.json", e.Message);
        e = Assert.Throws<PagSharpException>(() => SdUNetConfig.FromJson("{\"block_out_channels\": [32, 64], \"norm_num_groups\": 32}", "unet/config.json"));
        Assert.Contains("block_out_channels has 2 entries", e.Message);
    }
}
