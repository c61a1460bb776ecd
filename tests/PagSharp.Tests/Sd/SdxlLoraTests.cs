using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// An SDXL LoRA on sdxl_tiny (fixtures README §15): the same rank-2 LoRA (alpha 4 / 1 / 3 for unet / text_encoder /
/// text_encoder_2) as diffusers' PEFT file, as a kohya file with diffusers module names and as a kohya file with the
/// original SGM names (<c>lora_unet_input_blocks_4_1_…</c>, <c>lora_te1_</c>/<c>lora_te2_</c>), merges at 0.8 to the
/// weights diffusers' StableDiffusionXLPipeline.load_lora_weights + fuse_lora(lora_scale=0.8) gives for all three, and
/// the fused UNet (with added conditioning) and text encoders give its outputs.
/// </summary>
public sealed class SdxlLoraTests
{
    private static string Fx(string name) => Fixtures.Path("lora", "sdxl", name);
    private static string Dir => Fixtures.Path("sdxl_tiny");

    [Theory]
    [InlineData("sdxl_lora_peft.safetensors")]
    [InlineData("sdxl_lora_kohya.safetensors")]
    [InlineData("sdxl_lora_kohya_sgm.safetensors")]
    public void SdxlLora_MergesAsDiffusersFuseLora(string file)
    {
        var folder = DiffusersFolder.Open(Dir);
        using var unet = folder.LoadUnet();
        using var te = folder.LoadTextEncoder();
        using var te2 = folder.LoadTextEncoder2();
        var before = unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        using (var lora = SdLora.Load(Fx(file), unet, te, te2))
        {
            Assert.Equal(195, lora.Updates.Count);
            Assert.Equal(135, lora.Updates.Count(u => u.Component == "unet"));
            Assert.Equal(30, lora.Updates.Count(u => u.Component == "text_encoder_2"));
            lora.Merge(0.8, unet, te, te2);
        }
        var expected = SafeTensors.Load(Fx("merged.safetensors"));
        var cases = SafeTensors.Load(Fx("cases.safetensors"));
        var xl = SafeTensors.Load(Fixtures.Path("sdxl_tiny", "cases.safetensors"));
        try
        {
            var sds = new Dictionary<string, Dictionary<string, Tensor>>
            {
                ["unet"] = unet.state_dict(), ["text_encoder"] = te.state_dict(), ["text_encoder_2"] = te2.state_dict(),
            };
            foreach (var (k, e) in expected)
            {
                int dot = k.IndexOf('.');
                var actual = sds[k[..dot]][k[(dot + 1)..]];
                SdFixtures.AssertRelative(e, actual, 1e-6, $"{file}: {k}");
            }
            // Only the LoRA's layers changed.
            foreach (var (k, t) in sds["unet"])
                if (!expected.ContainsKey("unet." + k)) TensorAssert.BitwiseEqual(t, before[k], $"{file}: unet.{k} changed");

            using var _ = no_grad();
            var added = new SdAddedConditioning(xl["run_in.pooled_prompt_embeds"], xl["unet.time_ids"]);
            using (var o = unet.Forward(xl["unet.x"], tensor(500L), xl["run_in.prompt_embeds"], added: added))
                SdFixtures.AssertRelative(cases["unet.out_fused"], o, 1e-5, $"{file}: SDXL UNet with the fused LoRA");
            var (h1, _) = te.EncodeWithPooled(xl["te.input_ids_1"], 1);
            var (h2, pooled) = te2.EncodeWithPooled(xl["te.input_ids_2"], 1);
            using (var embeds = cat(new[] { h1, h2 }, -1))
                SdFixtures.AssertRelative(cases["encode_prompt.prompt_embeds_fused"], embeds, 1e-5, $"{file}: prompt embeds with the fused LoRA");
            SdFixtures.AssertRelative(cases["te2.text_embeds_fused"], pooled, 1e-5, $"{file}: pooled text embeds with the fused LoRA");
        }
        finally
        {
            TensorAssert.DisposeAll(expected);
            TensorAssert.DisposeAll(cases);
            TensorAssert.DisposeAll(xl);
            foreach (var t in before.Values) t.Dispose();
        }
    }

    [Fact]
    public void SgmNames_ResolveToTheDiffusersLayers()
    {
        var folder = DiffusersFolder.Open(Dir);
        using var unet = folder.LoadUnet();
        using var te = folder.LoadTextEncoder();
        using var te2 = folder.LoadTextEncoder2();
        using var sgm = SdLora.Load(Fx("sdxl_lora_kohya_sgm.safetensors"), unet, te, te2);
        using var peft = SdLora.Load(Fx("sdxl_lora_peft.safetensors"), unet, te, te2);
        var a = sgm.Updates.ToDictionary(u => u.Component + "." + u.Target);
        var b = peft.Updates.ToDictionary(u => u.Component + "." + u.Target);
        Assert.Equal(b.Keys.Order(), a.Keys.Order());
        foreach (var (k, u) in b)
        {
            Assert.Equal(u.Alpha, a[k].Alpha);
            TensorAssert.BitwiseEqual(u.Down, a[k].Down, k + " down");
            TensorAssert.BitwiseEqual(u.Up, a[k].Up, k + " up");
        }
        // Spot checks of the SGM names: an attention of input block 4, a resnet conv (in_layers.2), the output side.
        Assert.Contains("unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight", a.Keys);
        Assert.Equal(4f, a["unet.down_blocks.0.resnets.0.conv1.weight"].Alpha);
        Assert.Equal(1f, a["text_encoder.text_model.encoder.layers.0.self_attn.q_proj.weight"].Alpha);
        Assert.Equal(3f, a["text_encoder_2.text_model.encoder.layers.0.mlp.fc1.weight"].Alpha);
        Assert.Contains("unet.up_blocks.1.resnets.0.conv2.weight", a.Keys);
        Assert.Contains("unet.down_blocks.1.resnets.0.conv_shortcut.weight", a.Keys);
    }
}
