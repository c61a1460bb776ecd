using System.Text;
using System.Text.Json;
using PagSharp.Models.Sd;

namespace PagSharp.Tests.Sd;

/// <summary>A toy CLIP vocabulary in the real files' layout: bytes, bytes with &lt;/w&gt;, some merges, the two specials.</summary>
internal static class ToyClip
{
    public static readonly string[] Merges =
    {
        "h e", "l l", "he ll", "hell o</w>", "c a", "ca t</w>", "d o", "do g</w>", "a n", "an d</w>",
    };

    /// <summary>The byte→unicode characters of GPT-2 (as the real vocab.json holds them).</summary>
    public static IEnumerable<string> ByteChars()
    {
        var direct = new List<int>();
        for (int b = '!'; b <= '~'; b++) direct.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) direct.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) direct.Add(b);
        int n = 0;
        for (int b = 0; b < 256; b++) yield return direct.Contains(b) ? ((char)b).ToString() : ((char)(256 + n++)).ToString();
    }

    public static Dictionary<string, int> Vocab()
    {
        var tokens = new List<string>();
        var bytes = ByteChars().ToList();
        tokens.AddRange(bytes);
        tokens.AddRange(bytes.Select(b => b + "</w>"));
        tokens.AddRange(Merges.Select(m => m.Replace(" ", "")));
        tokens.Add("<|startoftext|>");
        tokens.Add("<|endoftext|>");
        return tokens.Distinct().Select((t, i) => (t, i)).ToDictionary(p => p.t, p => p.i);
    }

    /// <summary>Writes vocab.json, merges.txt and tokenizer_config.json into <paramref name="folder"/>.</summary>
    public static void Write(string folder, string pad = "<|endoftext|>")
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "vocab.json"), JsonSerializer.Serialize(Vocab()), Encoding.UTF8);
        File.WriteAllText(Path.Combine(folder, "merges.txt"), "#version: 0.2\n" + string.Join("\n", Merges) + "\n", Encoding.UTF8);
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model_max_length"] = 77,
            ["bos_token"] = new Dictionary<string, object> { ["content"] = "<|startoftext|>", ["lstrip"] = false },
            ["eos_token"] = "<|endoftext|>",
            ["unk_token"] = "<|endoftext|>",
            ["pad_token"] = pad,
            ["tokenizer_class"] = "CLIPTokenizer",
        }));
    }

    /// <summary>A tiny text_encoder/config.json.</summary>
    public static string TextConfigJson(int vocab, int hidden = 8, string act = "quick_gelu", int layers = 2) => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["architectures"] = new[] { "CLIPTextModel" },
        ["vocab_size"] = vocab, ["hidden_size"] = hidden, ["intermediate_size"] = 16, ["num_hidden_layers"] = layers,
        ["num_attention_heads"] = 2, ["max_position_embeddings"] = 77, ["hidden_act"] = act, ["layer_norm_eps"] = 1e-5,
        ["projection_dim"] = 8, ["model_type"] = "clip_text_model",
    });

    public static ClipTextConfig TextConfig(int vocab, string act = "quick_gelu") => ClipTextConfig.FromJson(TextConfigJson(vocab, act: act), "toy text_encoder/config.json");
}
