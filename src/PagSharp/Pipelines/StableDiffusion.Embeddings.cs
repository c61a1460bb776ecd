using PagSharp.IO;
using PagSharp.Models.Sd;
using static TorchSharp.torch;

namespace PagSharp.Pipelines;

public sealed partial class StableDiffusion
{
    /// <summary>The tensors of an embedding file: A1111's .pt keeps them under string_to_param (read by the safe unpickler).</summary>
    private static Dictionary<string, Tensor> Read(string file)
    {
        if (!file.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            try { return TorchZip.LoadStateDict(file, "string_to_param"); }
            catch (PagSharpException) { /* not an A1111 .pt: read it as any state dict below, whose error names the formats */ }
        }
        return StateDicts.Load(file);
    }

    /// <summary>
    /// Loads a textual-inversion embedding (A1111 <c>emb_params</c> [n, d] or a .pt with <c>string_to_param</c>, SDXL <c>clip_l</c> / <c>clip_g</c>, or a
    /// diffusers file with one tensor [d] or [n, d]) as <paramref name="token"/> (default: the file name without its
    /// extension), as diffusers' <c>load_textual_inversion</c>: the token and its <c>_1</c> … <c>_{n−1}</c> companions
    /// get new ids in the tokenizer(s), the vectors new rows in the text encoder(s), and the token in a prompt stands
    /// for all n vectors. Returns the token.
    /// </summary>
    public string LoadEmbedding(string file, string? token = null)
    {
        if (Tokenizer is null && Tokenizer2 is null)
            throw new PagSharpException("textual-inversion embeddings change how prompts are encoded; this call was loaded without the text encoders");
        token ??= Path.GetFileNameWithoutExtension(file);
        var w = Read(file);
        try
        {
            Tensor? l = w.GetValueOrDefault("clip_l"), g = w.GetValueOrDefault("clip_g");
            Tensor? single = w.GetValueOrDefault("emb_params") ?? (w.Count == 1 && l is null && g is null ? w.Values.First() : null);
            if (IsXl && (l is null || g is null) && single is null)
                throw new PagSharpException($"{file}: an SDXL embedding needs clip_l and clip_g tensors (found: {string.Join(", ", w.Keys)})");
            if (!IsXl && single is null)
                throw new PagSharpException($"{file}: expected one embedding tensor (emb_params [n, d], or a diffusers file with a single tensor); found: {string.Join(", ", w.Keys)}");
            var pairs = IsXl
                ? new[] { (Tokenizer, TextEncoder, l ?? single!), (Tokenizer2, TextEncoder2, g ?? single!) }
                : new[] { (Tokenizer, TextEncoder, single!) };
            foreach (var (tok, te, vectors) in pairs)
            {
                if (tok is null || te is null) continue;
                var v = vectors.dim() == 1 ? vectors.unsqueeze(0) : vectors;
                if (v.dim() != 2 || v.shape[1] != te.Config.HiddenSize)
                    throw new PagSharpException($"{file}: embedding vectors of shape [{string.Join(",", vectors.shape)}] do not fit a text encoder of width {te.Config.HiddenSize} (an embedding for another model?)");
                var ids = tok.AddToken(token, (int)v.shape[0]);
                long first = te.AppendTokens(v.to_type(ScalarType.Float32));
                if (first != ids[0])
                    throw new PagSharpException($"{file}: the tokenizer gives '{token}' id {ids[0]} but the text encoder's next row is {first} (vocabulary and embedding sizes differ)");
            }
            return token;
        }
        finally
        {
            foreach (var t in w.Values) t.Dispose();
        }
    }
}
