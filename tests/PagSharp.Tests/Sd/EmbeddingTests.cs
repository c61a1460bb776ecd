using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Textual-inversion embeddings on the tiny SD folder: a token whose vectors are the rows of "cat" and "dog" must
/// encode exactly as those words do (so the embedding changes the prompt exactly where the token is, and only there),
/// multi-vector tokens expand in place, and embeddings of another width are refused.
/// </summary>
public sealed class EmbeddingTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    public void Dispose() => _sd.Dispose();

    private StableDiffusion Load() => StableDiffusion.Load(_sd.Root, new SdComponents(Vae: false, TextEncoder: true));

    [Fact]
    public void ATokenWithTheRowsOfTwoWords_EncodesAsThoseWords()
    {
        using var sd = Load();
        var vocab = ToyClip.Vocab();
        var rows = sd.TextEncoder!.state_dict()["text_model.embeddings.token_embedding.weight"];
        using var vectors = stack(new[] { rows[vocab["cat</w>"]], rows[vocab["dog</w>"]] });
        string file = _sd.Dir.File("pets.safetensors");
        SafeTensors.Save(file, new Dictionary<string, Tensor> { ["emb_params"] = vectors });
        long rowsBefore = sd.TextEncoder.VocabRows;
        Assert.Equal("<pets>", sd.LoadEmbedding(file, "<pets>"));
        Assert.Equal(rowsBefore + 2, sd.TextEncoder.VocabRows);

        var withToken = sd.Tokenizer!.Encode("hello <pets> and");
        var withWords = sd.Tokenizer.Encode("hello cat dog and");
        // The ids differ exactly at the two positions of the token …
        var differ = withToken.Ids.Select((id, i) => id != withWords.Ids[i] ? i : -1).Where(i => i >= 0).ToArray();
        Assert.Equal(new[] { 2, 3 }, differ);
        Assert.Equal(new[] { (int)rowsBefore, (int)rowsBefore + 1 }, differ.Select(i => withToken.Ids[i]).ToArray());
        // … and the encoded prompts are the same.
        using var a = sd.EncodePrompt("hello <pets> and", 0, out _);
        using var b = sd.EncodePrompt("hello cat dog and", 0, out _);
        Assert.True(a.eq(b).all().item<bool>(), "the token's rows are those of 'cat' and 'dog'");
        using var c = sd.EncodePrompt("hello and", 0, out _);
        Assert.False(a.allclose(c));
    }

    [Fact]
    public void AnEmbeddingOfAnotherWidth_IsRefused()
    {
        using var sd = Load();
        string file = _sd.Dir.File("wide.safetensors");
        SafeTensors.Save(file, new Dictionary<string, Tensor> { ["emb_params"] = zeros(3, 768) });
        var ex = Assert.Throws<PagSharpException>(() => sd.LoadEmbedding(file));
        Assert.Contains("do not fit a text encoder of width 8", ex.Message);
        string sdxl = _sd.Dir.File("xl.safetensors");
        SafeTensors.Save(sdxl, new Dictionary<string, Tensor> { ["clip_l"] = zeros(1, 8), ["clip_g"] = zeros(1, 8) });
        Assert.Throws<PagSharpException>(() => sd.LoadEmbedding(sdxl));
    }

    [Fact]
    public void AnA1111PtEmbedding_ReadsAsItsSafetensorsTwin()
    {
        // ti_a1111.pt: torch.save({"string_to_token", "string_to_param": {"*": v}, "name", "step", …}) as A1111 writes
        // it, read by the safe unpickler; ti_a1111_emb_params.safetensors holds the same v (tests/fixtures/recipes/make_ti_pt_fixture.py).
        using var a = Load();
        using var b = Load();
        a.LoadEmbedding(PagSharp.Tests.IO.Fixtures.Path("lora", "ti_a1111.pt"), "<toy>");
        b.LoadEmbedding(PagSharp.Tests.IO.Fixtures.Path("lora", "ti_a1111_emb_params.safetensors"), "<toy>");
        using var ea = a.EncodePrompt("hello <toy> cat", 0, out _);
        using var eb = b.EncodePrompt("hello <toy> cat", 0, out _);
        Assert.True(ea.eq(eb).all().item<bool>());
        using var plain = a.EncodePrompt("hello cat", 0, out _);
        Assert.False(ea.allclose(plain));
    }
}
