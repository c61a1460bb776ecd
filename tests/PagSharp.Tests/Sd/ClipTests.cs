using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Tests.Models;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>CLIP tokenizer and text encoder on a toy vocabulary and random weights (no diffusers fixture exists).</summary>
public class ClipTests
{
    private static ClipTokenizer Tokenizer(out TempDir dir, string pad = "<|endoftext|>")
    {
        dir = new TempDir();
        ToyClip.Write(dir.Path, pad);
        return ClipTokenizer.Load(dir.Path);
    }

    [Fact]
    public void Tokenizer_MergesWordsAndAddsSpecials()
    {
        var tok = Tokenizer(out var dir);
        using var _ = dir;
        var v = ToyClip.Vocab();
        Assert.Equal(new[] { v["hello</w>"], v["hello</w>"] }, tok.Tokenize("  Hello\t\nHELLO "));
        Assert.Equal(new[] { v["a</w>"], v["cat</w>"], v["and</w>"], v["a</w>"], v["dog</w>"], v[".</w>"] }, tok.Tokenize("A cat and a dog."));
        // Punctuation runs stay together; digits are single; "'s" is split off.
        Assert.Equal(new[] { v["cat</w>"], v["'"], v["s</w>"], v["1</w>"], v["2</w>"], v["!"], v["?</w>"] }, tok.Tokenize("cat's 12!?"));
        // Non-ASCII goes through the byte table (é = C3 A9, both single-byte symbols here).
        var bytes = ToyClip.ByteChars().ToArray();
        Assert.Equal(new[] { v[bytes[0xC3]], v[bytes[0xA9] + "</w>"] }, tok.Tokenize("É"));
        // CJK ideographs become separate words.
        Assert.Equal(2 * 3, tok.Tokenize("你好").Count);

        var enc = tok.Encode("hello cat");
        Assert.Equal(77, enc.Ids.Length);
        Assert.Equal(new[] { tok.BosId, v["hello</w>"], v["cat</w>"], tok.EosId, tok.PadId }, enc.Ids.Take(5));
        Assert.All(enc.Ids.Skip(4), id => Assert.Equal(v["<|endoftext|>"], id));
        Assert.False(enc.Truncated);
        Assert.Equal(v["<|startoftext|>"], tok.BosId);
    }

    [Fact]
    public void Tokenizer_TruncatesTo77AndReportsTheRest()
    {
        var tok = Tokenizer(out var dir);
        using var _ = dir;
        var enc = tok.Encode(string.Join(" ", Enumerable.Repeat("cat", 80)) + " dog");
        Assert.True(enc.Truncated);
        Assert.Equal(77, enc.Ids.Length);
        Assert.Equal(tok.BosId, enc.Ids[0]);
        Assert.Equal(tok.EosId, enc.Ids[76]);
        Assert.Equal("cat cat cat cat cat dog", enc.Dropped);
        Assert.False(tok.Encode(string.Join(" ", Enumerable.Repeat("cat", 75))).Truncated);
    }

    [Fact]
    public void Tokenizer_UsesTheConfiguredPadToken()
    {
        var tok = Tokenizer(out var dir, pad: "!");
        using var _ = dir;
        Assert.Equal(ToyClip.Vocab()["!"], tok.PadId);
        Assert.Equal(tok.PadId, tok.Encode("cat").Ids[^1]);
        File.Delete(System.IO.Path.Combine(dir.Path, "merges.txt"));
        var e = Assert.Throws<PagSharpException>(() => ClipTokenizer.Load(dir.Path));
        Assert.Contains("merges.txt", e.Message);
    }

    private static ClipTextModel RandomModel(int vocab, string act = "quick_gelu")
    {
        manual_seed(3);
        var m = new ClipTextModel(ToyClip.TextConfig(vocab, act));
        m.eval();
        return m;
    }

    [Fact]
    public void TextModel_ShapesCausalityAndFinalNorm()
    {
        int vocab = ToyClip.Vocab().Count;
        using var m = RandomModel(vocab);
        using var _ = no_grad();
        var ids = randint(0, vocab, new long[] { 2, 77 }, dtype: ScalarType.Int64);
        var h = m.Encode(ids);
        Assert.Equal(new long[] { 2, 77, 8 }, h.shape);
        // Causal: changing token 40 leaves positions 0..39 unchanged and changes 40 onwards.
        var ids2 = ids.clone();
        ids2[0, 40] = (ids[0, 40] + 1) % vocab;
        var h2 = m.Encode(ids2);
        Close.Assert(h[0, ..40], h2[0, ..40], 0, "positions before the change");
        Close.AssertDiffer(h[0, 40..], h2[0, 40..], 1e-4, "positions from the change on");
        // Final LayerNorm with unit weight, zero bias: zero mean, unit variance per position.
        Close.Assert(zeros(2, 77), h.mean(new long[] { -1 }), 1e-5, "mean");
        Close.Assert(ones(2, 77), h.var(-1, unbiased: false), 1e-3, "variance");
        // clip skip uses an earlier layer's output.
        Close.AssertDiffer(h, m.Encode(ids, clipSkip: 1), 1e-3, "clip skip 1");
    }

    [Fact]
    public void TextModel_MatchesAHandWrittenReference()
    {
        int vocab = ToyClip.Vocab().Count;
        foreach (var act in new[] { "quick_gelu", "gelu" })
        {
            using var m = RandomModel(vocab, act);
            using var _ = no_grad();
            var ids = randint(0, vocab, new long[] { 1, 77 }, dtype: ScalarType.Int64);
            var sd = m.state_dict();
            Tensor P(string k) => sd["text_model." + k];
            Tensor Ln(Tensor x, string k)
            {
                var mu = x.mean(new long[] { -1 }, keepdim: true);
                var va = x.var(-1, unbiased: false, keepdim: true);
                return (x - mu) / sqrt(va + 1e-5) * P(k + ".weight") + P(k + ".bias");
            }
            Tensor Lin(Tensor x, string k) => matmul(x, P(k + ".weight").t()) + P(k + ".bias");
            var x = P("embeddings.token_embedding.weight").index_select(0, ids[0]) + P("embeddings.position_embedding.weight");
            for (int l = 0; l < 2; l++)
            {
                string p = $"encoder.layers.{l}.";
                var a = Ln(x, p + "layer_norm1");
                var q = Lin(a, p + "self_attn.q_proj"); var k = Lin(a, p + "self_attn.k_proj"); var v = Lin(a, p + "self_attn.v_proj");
                var heads = new List<Tensor>();
                for (int hh = 0; hh < 2; hh++)
                {
                    var qs = q[.., (hh * 4)..(hh * 4 + 4)]; var ks = k[.., (hh * 4)..(hh * 4 + 4)]; var vs = v[.., (hh * 4)..(hh * 4 + 4)];
                    var logits = matmul(qs, ks.t()) / 2.0 + full(77, 77, float.NegativeInfinity).triu(1);
                    heads.Add(matmul(logits.softmax(-1), vs));
                }
                x = x + Lin(cat(heads.ToArray(), -1), p + "self_attn.out_proj");
                var f = Lin(Ln(x, p + "layer_norm2"), p + "mlp.fc1");
                f = act == "quick_gelu" ? f * sigmoid(1.702 * f) : 0.5 * f * (1 + erf(f / Math.Sqrt(2)));
                x = x + Lin(f, p + "mlp.fc2");
            }
            Close.Assert(Ln(x, "final_layer_norm").unsqueeze(0), m.Encode(ids), 1e-5, act);
        }
    }

    [Fact]
    public void TextModel_LoadsStrictlyAndIgnoresPositionIds()
    {
        int vocab = ToyClip.Vocab().Count;
        using var a = RandomModel(vocab);
        var w = a.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        w[ClipTextModel.PositionIdsKey] = arange(77, dtype: ScalarType.Int64).unsqueeze(0);
        using var dir = new TempDir();
        string file = dir.File("model.safetensors");
        SafeTensors.Save(file, w);
        using var loaded = SdLoader.LoadTextEncoder(ToyClip.TextConfig(vocab), file);
        using var _ = no_grad();
        var ids = randint(0, vocab, new long[] { 1, 77 }, dtype: ScalarType.Int64);
        Close.Assert(a.Encode(ids), loaded.Encode(ids), 0, "reloaded");
        w.Remove("text_model.final_layer_norm.bias");
        SafeTensors.Save(file, w);
        var e = Assert.Throws<PagSharpException>(() => SdLoader.LoadTextEncoder(ToyClip.TextConfig(vocab), file));
        Assert.Contains("final_layer_norm.bias", e.Message);
        Assert.Contains(file, e.Message);
    }
}
