using System.Text.Json;
using PagSharp.Attention;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Models;

/// <summary>ADM model A against the guided-diffusion reference outputs (fixtures README §3, §4.1).</summary>
public class AdmParityTests
{
    private const double Tol = 1e-4;

    /// <summary>cases.json: output key → perturbed AttentionBlocks.</summary>
    private static Dictionary<string, string[]> CaseLayers()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(AdmA.File("cases.json")));
        return doc.RootElement.GetProperty("outputs").EnumerateObject().ToDictionary(
            p => p.Name, p => p.Value.GetProperty("perturbed_layers").EnumerateArray().Select(e => e.GetString()!).ToArray());
    }

    public static TheoryData<string> WeightSources => new() { "safetensors", "pt-torchzip", "pt-statedicts" };

    private static Dictionary<string, Tensor> LoadWeights(string source) => source switch
    {
        "safetensors" => SafeTensors.Load(AdmA.File("weights.safetensors")),
        "pt-torchzip" => TorchZip.Load(AdmA.File("weights.pt")),
        "pt-statedicts" => StateDicts.Load(AdmA.File("weights.pt")),
        _ => throw new ArgumentException(source),
    };

    [Theory]
    [MemberData(nameof(WeightSources))]
    public void Forward_ReproducesEveryCase(string source)
    {
        var layers = CaseLayers();
        Assert.Equal(new[] { "out_none", "out_pag_mid", "out_pag_in", "out_pag_out", "out_pag_all" }, layers.Keys);
        var weights = LoadWeights(source);
        var cases = AdmA.Tensors("cases.safetensors");
        try
        {
            using var net = AdmA.Build(weights, source);
            using var _ = no_grad();
            var x = cases["x"];
            var t = cases["t"];
            Assert.Equal(ScalarType.Int64, t.dtype);
            Assert.Equal(new long[] { 0, 250, 500, 999 }, t.data<long>().ToArray());
            foreach (var (key, perturbed) in layers)
            {
                using var scope = NewDisposeScope();
                var plan = perturbed.Length == 0 ? null : PerturbationPlan.Perturb(perturbed, IdentityPerturbation.Instance);
                var outp = net.Forward(x, t, null, plan);
                Close.Assert(cases[key], outp, Tol, $"{source} {key}");
            }
            // The perturbation must matter at this tolerance, or the comparisons above prove nothing about it.
            Close.AssertDiffer(cases["out_none"], cases["out_pag_mid"], 100 * Tol, "out_none vs out_pag_mid");
            Close.AssertDiffer(cases["out_pag_in"], cases["out_pag_out"], 100 * Tol, "out_pag_in vs out_pag_out");
        }
        finally
        {
            TensorAssert.DisposeAll(weights);
            TensorAssert.DisposeAll(cases);
        }
    }

    [Fact]
    public void TimestepEmbedding_MatchesReference()
    {
        var cases = AdmA.Tensors("cases.safetensors");
        try
        {
            using var emb = TimestepEmbedding.Sinusoidal(cases["t"], 32);
            Close.Assert(cases["debug_timestep_embedding"], emb, 1e-5, "timestep_embedding(t, 32)");
            Assert.Equal(ScalarType.Float32, emb.dtype);
            // cos comes first: at t = 0 the first half is 1 and the second half 0.
            Assert.Equal(1f, emb[0, 0].item<float>());
            Assert.Equal(0f, emb[0, 16].item<float>());

            using var net = AdmA.Load();
            using var _ = no_grad();
            using var temb = net.TimeEmbedding(cases["t"]);
            Close.Assert(cases["debug_emb"], temb, Tol, "time_embed(timestep_embedding(t))");
        }
        finally
        {
            TensorAssert.DisposeAll(cases);
        }
    }

    [Fact]
    public void StateDictKeys_AreTheReferenceKeysInOrder()
    {
        using var net = new AdmUNet(AdmA.Config());
        var expected = AdmA.StringArray("state_dict_keys");
        Assert.Equal(216, expected.Length);
        Assert.Equal(expected, net.state_dict().Keys);
        Assert.Equal(1_422_278L, net.parameters().Sum(p => p.numel()));
    }

    [Fact]
    public void AttentionLayers_AreTheReferenceBlocks()
    {
        using var net = new AdmUNet(AdmA.Config());
        Assert.Equal(AdmA.StringArray("attention_blocks"), net.AttentionLayers.Select(l => l.Name));
        // README §3: all 64 channels, 4 heads × 16; token counts 256, 64, 64, 64, 64, 256, 256.
        Assert.Equal(new[] { 16, 8, 8, 8, 8, 16, 16 }, net.AttentionLayers.Select(l => l.Resolution));
        Assert.All(net.AttentionLayers, l => Assert.Equal((64, 4), (l.Channels, l.Heads)));
        Assert.Equal(new[] { "input", "input", "middle", "output", "output", "output", "output" }, net.AttentionLayers.Select(l => l.Group));
    }

    /// <summary>A plan restricted to some batch entries perturbs exactly those (the batched-PAG building block).</summary>
    [Fact]
    public void Forward_PerturbingSomeBatchEntries_MatchesPerEntryReference()
    {
        var cases = AdmA.Tensors("cases.safetensors");
        try
        {
            using var net = AdmA.Load();
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var plan = PerturbationPlan.Perturb(new[] { "middle_block.1" }, IdentityPerturbation.Instance, new long[] { 1, 3 });
            var outp = net.Forward(cases["x"], cases["t"], null, plan);
            foreach (int i in new[] { 0, 2 }) Close.Assert(cases["out_none"][i], outp[i], Tol, $"unperturbed entry {i}");
            foreach (int i in new[] { 1, 3 }) Close.Assert(cases["out_pag_mid"][i], outp[i], Tol, $"perturbed entry {i}");
        }
        finally
        {
            TensorAssert.DisposeAll(cases);
        }
    }

    [Fact]
    public void Forward_RejectsLabelsOnUnconditionalModel()
    {
        using var net = AdmA.Load();
        using var _ = no_grad();
        using var x = zeros(1, 3, 32, 32);
        using var t = zeros(1, dtype: ScalarType.Int64);
        using var y = zeros(1, dtype: ScalarType.Int64);
        var e = Assert.Throws<PagSharpException>(() => net.Forward(x, t, y));
        Assert.Contains("unconditional", e.Message);
    }
}
