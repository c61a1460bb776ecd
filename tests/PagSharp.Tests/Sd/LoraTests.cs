using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// LoRA merging on the tiny SD folder: kohya, PEFT and old-diffusers files of the same update give the same weights,
/// equal to W + scale·(alpha/rank)·up·down computed here directly; unmerging restores the weights; foreign keys are
/// refused with their names. (Parity with diffusers' load_lora_weights is in the fixture-based tests.)
/// </summary>
[Collection(CliCollection.Name)]
public sealed class LoraTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    public void Dispose() => _sd.Dispose();

    private const string Q = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q";
    private const string Out = "mid_block.attentions.0.transformer_blocks.0.attn2.to_out.0";
    private const string Conv = "up_blocks.0.resnets.0.conv1";

    /// <summary>Random rank-2 updates for a linear, an output projection, a 3×3 conv (LoCon) and a text-encoder projection.</summary>
    private static Dictionary<string, (Tensor Down, Tensor Up)> Updates(StableDiffusion sd)
    {
        using var g = new TorchSharp.torch.Generator(4);
        var u = new Dictionary<string, (Tensor, Tensor)>();
        foreach (var layer in new[] { Q, Out, Conv })
        {
            var w = sd.Unet.state_dict()[layer + ".weight"];
            u["unet." + layer] = w.dim() == 4
                ? (randn(new long[] { 2, w.shape[1], w.shape[2], w.shape[3] }, generator: g), randn(new long[] { w.shape[0], 2, 1, 1 }, generator: g))
                : (randn(new long[] { 2, w.shape[1] }, generator: g), randn(new long[] { w.shape[0], 2 }, generator: g));
        }
        var tw = sd.TextEncoder!.state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"];
        u["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"] = (randn(new long[] { 2, tw.shape[1] }, generator: g), randn(new long[] { tw.shape[0], 2 }, generator: g));
        return u;
    }

    private string Kohya(Dictionary<string, (Tensor Down, Tensor Up)> u, float alpha)
    {
        var d = new Dictionary<string, Tensor>();
        foreach (var (k, (down, up)) in u)
        {
            string name = (k.StartsWith("unet.", StringComparison.Ordinal) ? "lora_unet_" + k[5..] : "lora_te_" + k["text_encoder.".Length..]).Replace('.', '_');
            d[name + ".lora_down.weight"] = down;
            d[name + ".lora_up.weight"] = up;
            d[name + ".alpha"] = tensor(alpha);
        }
        string f = _sd.Dir.File("kohya.safetensors");
        SafeTensors.Save(f, d);
        return f;
    }

    private string Peft(Dictionary<string, (Tensor Down, Tensor Up)> u, string name, bool oldStyle = false)
    {
        var d = new Dictionary<string, Tensor>();
        foreach (var (k, (down, up)) in u)
        {
            d[k + (oldStyle ? ".lora.down.weight" : ".lora_A.weight")] = down;
            d[k + (oldStyle ? ".lora.up.weight" : ".lora_B.weight")] = up;
        }
        string f = _sd.Dir.File(name);
        SafeTensors.Save(f, d);
        return f;
    }

    private StableDiffusion Load() => StableDiffusion.Load(_sd.Root, new SdComponents(Vae: false, TextEncoder: true));

    [Fact]
    public void KohyaWithAlpha_MergesAsTheDirectComputation_AndUnmerges()
    {
        using var sd = Load();
        var u = Updates(sd);
        string file = Kohya(u, alpha: 1f); // alpha 1, rank 2: factor 0.5
        var before = sd.Unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var teBefore = sd.TextEncoder!.state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"].clone();
        using var lora = SdLora.Load(file, sd.Unet, sd.TextEncoder, null);
        var merged = lora.Merge(0.8, sd.Unet, sd.TextEncoder, null);
        Assert.Equal(4, merged.Count);
        foreach (var layer in new[] { Q, Out, Conv })
        {
            var (down, up) = u["unet." + layer];
            var w0 = before[layer + ".weight"];
            var expected = w0 + 0.8 * 0.5 * matmul(up.reshape(up.shape[0], 2), down.reshape(2, -1)).reshape(w0.shape);
            Models.Close.Assert(expected, sd.Unet.state_dict()[layer + ".weight"], 1e-5, "merged " + layer);
        }
        var (td, tu) = u["text_encoder.text_model.encoder.layers.0.self_attn.q_proj"];
        Models.Close.Assert(teBefore + 0.4 * matmul(tu, td), sd.TextEncoder.state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"], 1e-5, "text encoder");
        // Untouched weights stay bit-identical; unmerging brings the others back.
        Assert.True(before["conv_in.weight"].eq(sd.Unet.state_dict()["conv_in.weight"]).all().item<bool>());
        merged.Unmerge();
        foreach (var layer in new[] { Q, Out, Conv })
            Models.Close.Assert(before[layer + ".weight"], sd.Unet.state_dict()[layer + ".weight"], 1e-5, "unmerged " + layer);
    }

    [Fact]
    public void KohyaPeftAndOldDiffusersFiles_OfTheSameLora_GiveTheSameWeights()
    {
        Dictionary<string, Tensor> MergedWith(Func<Dictionary<string, (Tensor, Tensor)>, string> write)
        {
            using var sd = Load();
            using var lora = SdLora.Load(write(Updates(sd)), sd.Unet, sd.TextEncoder, null);
            lora.Merge(1.0, sd.Unet, sd.TextEncoder, null);
            return sd.Unet.state_dict().Concat(sd.TextEncoder!.state_dict().Select(kv => new KeyValuePair<string, Tensor>("te." + kv.Key, kv.Value)))
                .ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        }
        var kohya = MergedWith(u => Kohya(u, alpha: 2f)); // alpha = rank: no rescaling, as PEFT without alpha
        var peft = MergedWith(u => Peft(u, "peft.safetensors"));
        var old = MergedWith(u => Peft(u, "old.safetensors", oldStyle: true));
        foreach (var k in kohya.Keys)
        {
            Assert.True(kohya[k].eq(peft[k]).all().item<bool>(), "kohya vs PEFT: " + k);
            Assert.True(kohya[k].eq(old[k]).all().item<bool>(), "kohya vs old diffusers: " + k);
        }
    }

    [Fact]
    public void ALoraForAnotherModel_IsRefusedWithItsKeys()
    {
        using var sd = Load();
        string f = _sd.Dir.File("foreign.safetensors");
        SafeTensors.Save(f, new Dictionary<string, Tensor>
        {
            ["lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q.lora_down.weight"] = zeros(2, 8),
            ["lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q.lora_up.weight"] = zeros(8, 2),
        });
        var ex = Assert.Throws<PagSharpException>(() => SdLora.Load(f, sd.Unet, sd.TextEncoder, null));
        Assert.Contains("lora_unet_input_blocks_7_1_transformer_blocks_3_attn1_to_q", ex.Message);
        Assert.Contains("match no layer of this model", ex.Message);
    }

    [Fact]
    public void Txt2Img_WithLora_ChangesTheResult_AndRecordsIt()
    {
        using var sd0 = Load();
        string file = Kohya(Updates(sd0), 2f);
        string s = SdFixtures.Unet("sampling.safetensors");
        Tensor Run(string name, params string[] extra)
        {
            string t = _sd.Dir.File(name + ".npy");
            var (exit, log) = Pag.Run([.. new[] { "txt2img", "--model", _sd.Root, "--prompt-embeds", s + ":prompt_embeds", "--guidance-scale", "1",
                "--steps", "2", "--scheduler", "ddim", "--count", "1", "--output-type", "latent", "--save-tensor", t, "--output", _sd.Dir.File("o_" + name) }, .. extra]);
            Assert.True(exit == 0, log);
            return Npy.Load(t);
        }
        using var plain = Run("plain");
        using var withLora = Run("lora", "--lora", file + ":0.5");
        Assert.False(plain.allclose(withLora));
        Assert.Contains("\"scale\": 0.5", File.ReadAllText(Path.Combine(_sd.Dir.File("o_lora"), "run.json")));
        var (exit2, log2) = Pag.Run("txt2img", "--model", _sd.Root, "--prompt-embeds", s + ":prompt_embeds", "--lora", file + ":x", "--output", _sd.Dir.File("o_bad"));
        Assert.NotEqual(0, exit2);
        Assert.Contains("is not a scale", log2);
    }
}
