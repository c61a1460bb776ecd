using System.Text.Json;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>The tiny AutoencoderKL against diffusers (fixtures README §8).</summary>
public class SdVaeParityTests
{
    private const double Tol = 1e-5;

    internal static AutoencoderKL LoadVae()
    {
        var cfg = SdVaeConfig.FromJson(SdFixtures.ConfigProperty(SdFixtures.Vae("config.json"), "vae_config_full"), "sd_vae_tiny/config.json");
        var vae = new AutoencoderKL(cfg);
        vae.eval();
        var w = SafeTensors.Load(SdFixtures.Vae("weights.safetensors"));
        try { StateDictLoader.LoadStrict(vae, w, "sd_vae_tiny/weights.safetensors"); }
        finally { TensorAssert.DisposeAll(w); }
        return vae;
    }

    [Fact]
    public void Keys_MatchDiffusers()
    {
        using var vae = LoadVae();
        var keys = JsonSerializer.Deserialize<string[]>(SdFixtures.ConfigProperty(SdFixtures.Vae("config.json"), "state_dict_keys"))!;
        Assert.Equal(keys.Order(), vae.state_dict().Keys.Order());
        Assert.Equal(11827, vae.parameters().Sum(p => p.numel()));
        Assert.Equal(2, vae.Config.ScaleFactor);
        Assert.Equal(0.18215, vae.Config.ScalingFactor);
    }

    [Fact]
    public void DecodeAndEncode_ReproduceDiffusers()
    {
        using var vae = LoadVae();
        var f = SdFixtures.Tensors(SdFixtures.Vae("cases.safetensors"));
        try
        {
            using var _ = no_grad();
            Close.Assert(f["decode_raw"], vae.Decode(f["z"]), Tol, "decode_raw");
            var dec = vae.DecodeLatents(f["z"]);
            Close.Assert(f["decode_pipeline"], dec, Tol, "decode_pipeline");
            Close.Assert(f["image_pt_pipeline"], AutoencoderKL.ToUnitRange(dec), Tol, "image_pt_pipeline");
            Close.Assert(f["debug_moments"], vae.Moments(f["x"]), Tol, "debug_moments");
            var dist = vae.Encode(f["x"]);
            Close.Assert(f["encode_mean"], dist.Mean, Tol, "encode_mean");
            Close.Assert(f["encode_logvar"], dist.LogVar, Tol, "encode_logvar");
            using (var g = new Generator(5))
                Close.Assert(f["encode_sample_seed5"], dist.Sample(g), Tol, "encode_sample_seed5 (same libtorch generator)");
            Close.Assert(f["encode_latents_scaled"], dist.Mean * (float)vae.Config.ScalingFactor, Tol, "encode_latents_scaled");
            Close.Assert(f["forward_x"], vae.Decode(dist.Mode()), Tol, "forward_x");
        }
        finally { TensorAssert.DisposeAll(f); }
    }

    [Fact]
    public void LegacyAttentionKeys_AreUpgraded()
    {
        var w = SafeTensors.Load(SdFixtures.Vae("weights.safetensors"));
        try
        {
            var legacy = w.ToDictionary(kv => kv.Key.Replace(".to_q.", ".query.").Replace(".to_out.0.", ".proj_attn."),
                kv => kv.Key.Contains(".to_q.weight") ? kv.Value.reshape(kv.Value.shape[0], kv.Value.shape[1], 1, 1) : kv.Value);
            var upgraded = AutoencoderKL.UpgradeLegacyKeys(legacy);
            Assert.Equal(w.Keys.Order(), upgraded.Keys.Order());
            using var vae = new AutoencoderKL(SdVaeConfig.FromJson(SdFixtures.ConfigProperty(SdFixtures.Vae("config.json"), "vae_config_full"), "cfg"));
            StateDictLoader.LoadStrict(vae, upgraded, "legacy");
        }
        finally { TensorAssert.DisposeAll(w); }
    }
}
