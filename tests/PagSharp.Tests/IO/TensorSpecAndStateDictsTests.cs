using PagSharp.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.IO;

public class TensorSpecAndStateDictsTests
{
    private static readonly string WeightsSt = Fixtures.Path("adm_a_uncond", "weights.safetensors");
    private static readonly string WeightsPt = Fixtures.Path("adm_a_uncond", "weights.pt");

    [Fact]
    public void Spec_NpySafetensorsAndPt()
    {
        using var dir = new TempDir();
        string npy = dir.File("x.npy");
        using Tensor x = arange(6, ScalarType.Float32).reshape(2, 3);
        Npy.Save(npy, x);
        using (Tensor t = TensorSpec.Load(npy)) TensorAssert.BitwiseEqual(x, t);

        using Tensor fromSt = TensorSpec.Load(WeightsSt + ":input_blocks.0.0.weight");
        using Tensor fromPt = TensorSpec.Load(WeightsPt + ":input_blocks.0.0.weight");
        Assert.Equal([32L, 3L, 3L, 3L], fromSt.shape);
        TensorAssert.BitwiseEqual(fromSt, fromPt);

        // The keyed forms go by content, not extension: a safetensors file named .bin works too.
        string renamed = dir.File("weights.bin");
        File.Copy(WeightsSt, renamed);
        using Tensor fromBin = TensorSpec.Load(renamed + ":input_blocks.0.0.weight");
        TensorAssert.BitwiseEqual(fromSt, fromBin);
    }

    [Fact]
    public void Spec_MissingKey_ListsAvailableKeys()
    {
        foreach (string file in new[] { WeightsSt, WeightsPt })
        {
            var e = Assert.Throws<PagSharpException>(() => TensorSpec.Load(file + ":no.such.key"));
            Assert.Contains("'no.such.key'", e.Message);
            Assert.Contains(file, e.Message);
            Assert.Contains("216 tensors", e.Message);
            Assert.Contains("'time_embed.0.weight'", e.Message);
            Assert.Contains("(196 more)", e.Message);
        }
    }

    [Theory]
    [InlineData("model.safetensors:a.b:c", "model.safetensors", "a.b:c")]
    [InlineData("/x/y.PT:w", "/x/y.PT", "w")]
    [InlineData("C:\\m\\w.pth:layer.0", "C:\\m\\w.pth", "layer.0")]
    [InlineData("a.bin:key.safetensors:x", "a.bin", "key.safetensors:x")]
    [InlineData("data/x.npy", "data/x.npy", null)]
    public void Spec_Parse(string spec, string file, string? key)
    {
        Assert.Equal((file, key), TensorSpec.Parse(spec));
    }

    [Theory]
    [InlineData("weights.safetensors", "no tensor")]
    [InlineData("weights.safetensors:", "empty key")]
    [InlineData("weights.ckpt", "not understood")]
    public void Spec_Malformed(string spec, string problem)
    {
        var e = Assert.Throws<PagSharpException>(() => TensorSpec.Load(spec));
        Assert.Contains(problem, e.Message);
        Assert.Contains("FILE.safetensors:KEY", e.Message);
    }

    [Fact]
    public void StateDicts_DispatchesOnContent()
    {
        using var dir = new TempDir();
        var st = StateDicts.Load(WeightsSt);
        Assert.Equal(216, st.Count);

        // A safetensors file under another name is recognised by its header.
        string renamed = dir.File("weights.bin");
        File.Copy(WeightsSt, renamed);
        var st2 = StateDicts.Load(renamed);
        Assert.Equal(st.Keys, st2.Keys);
        TensorAssert.DisposeAll(st);
        TensorAssert.DisposeAll(st2);

        string text = dir.File("notes.pt");
        File.WriteAllText(text, "hello, these are not weights");
        var e = Assert.Throws<PagSharpException>(() => StateDicts.Load(text));
        Assert.Contains(text, e.Message);
        Assert.Contains("safetensors", e.Message);
        Assert.Contains("torch.save", e.Message);

        string npy = dir.File("a.npy");
        using (Tensor t = zeros(2)) Npy.Save(npy, t);
        Assert.Contains("Npy.Load", Assert.Throws<PagSharpException>(() => StateDicts.Load(npy)).Message);

        string pickle = dir.File("p.pkl");
        File.WriteAllBytes(pickle, new PickleWriter().Proto().None().Stop().ToArray());
        Assert.Contains("bare Python pickle", Assert.Throws<PagSharpException>(() => StateDicts.Load(pickle)).Message);

        Assert.Contains("Cannot open", Assert.Throws<PagSharpException>(() => StateDicts.Load(dir.File("missing.pt"))).Message);
    }
}
