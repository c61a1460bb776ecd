using PagSharp.Attention;
using PagSharp.Models;
using PagSharp.Models.Adm;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Models;

/// <summary>
/// AttentionBlock against its definition (fixtures README §3): GN → 1×1 qkv conv → per-layout split →
/// softmax((q·s)(k·s)ᵀ)·v with s = ch^−1/4 → proj_out → x + h, written out here with plain tensor arithmetic from the
/// block's own parameters. Both QKV channel layouts, on small class-conditional models with random weights.
/// </summary>
public class AttentionLayoutTests
{
    private const string Layer = "middle_block.1";

    private static AdmConfig SmallConfig(bool newOrder) => new()
    {
        ImageSize = 16, NumChannels = 32, ChannelMult = "1,2", NumResBlocks = 1, AttentionResolutions = "8",
        NumHeadChannels = 16, ClassCond = true, NumClasses = 5, LearnSigma = true, UseNewAttentionOrder = newOrder,
        UseScaleShiftNorm = true, ResblockUpdown = true,
    };

    /// <summary>
    /// The model with every parameter drawn from N(0, 0.05), GroupNorm weights +1 (as the fixtures were made), so no
    /// branch is zero-initialised.
    /// </summary>
    private static AdmUNet RandomModel(bool newOrder, int seed)
    {
        var net = new AdmUNet(SmallConfig(newOrder));
        net.eval();
        var groupNorms = net.named_modules().Where(m => m.module is TorchSharp.Modules.GroupNorm).Select(m => m.name + ".weight").ToHashSet();
        Assert.NotEmpty(groupNorms);
        using var gen = new Generator((ulong)seed);
        using var _ = no_grad();
        foreach (var (name, p) in net.named_parameters())
        {
            p.normal_(0, 0.05, gen);
            if (groupNorms.Contains(name)) p.add_(1.0);
        }
        return net;
    }

    private static AttentionBlock Block(AdmUNet net, string name) =>
        (AttentionBlock)net.named_modules().Single(m => m.name == name).module;

    private static Dictionary<string, Tensor> Params(nn.Module block) =>
        block.named_parameters().ToDictionary(p => p.name, p => p.parameter.detach());

    /// <summary>GroupNorm(32, C, eps 1e-5) over [B, C, T], from the definition (biased variance).</summary>
    private static Tensor GroupNormRef(Tensor x, Tensor weight, Tensor bias, int groups = 32)
    {
        long b = x.shape[0], c = x.shape[1], t = x.shape[2];
        var g = x.to_type(ScalarType.Float64).reshape(b, groups, -1);
        var mean = g.mean(new long[] { 2 }, keepdim: true);
        var variance = (g - mean).square().mean(new long[] { 2 }, keepdim: true);
        var n = ((g - mean) / (variance + 1e-5).sqrt()).reshape(b, c, t);
        return n * weight.to_type(ScalarType.Float64).reshape(1, c, 1) + bias.to_type(ScalarType.Float64).reshape(1, c, 1);
    }

    /// <summary>A 1×1 Conv1d: W[O, I, 1] · x[B, I, T] + b.</summary>
    private static Tensor Conv1x1Ref(Tensor x, Tensor w, Tensor bias) =>
        matmul(w.to_type(ScalarType.Float64).squeeze(-1), x) + bias.to_type(ScalarType.Float64).reshape(1, -1, 1);

    /// <summary>
    /// The block's output for x [B,C,H,W], in float64. <paramref name="identityEntries"/>: batch entries whose attention
    /// output is V (PAG's identity attention map), giving x + proj_out(V).
    /// </summary>
    private static Tensor BlockRef(Tensor x, Dictionary<string, Tensor> p, int heads, bool newOrder, ISet<long>? identityEntries = null)
    {
        long b = x.shape[0], c = x.shape[1], ch = c / heads;
        var xf = x.to_type(ScalarType.Float64).reshape(b, c, -1);
        long t = xf.shape[2];
        var qkv = Conv1x1Ref(GroupNormRef(xf, p["norm.weight"], p["norm.bias"]), p["qkv.weight"], p["qkv.bias"]); // [B, 3C, T]
        Tensor q, k, v;
        if (newOrder)
        {
            // q, k, v = qkv.chunk(3, 1); each .reshape(B*H, ch, T)
            q = qkv[.., ..(int)c].reshape(b * heads, ch, t);
            k = qkv[.., (int)c..(int)(2 * c)].reshape(b * heads, ch, t);
            v = qkv[.., (int)(2 * c)..].reshape(b * heads, ch, t);
        }
        else
        {
            // qkv.reshape(B*H, 3*ch, T).split(ch, 1): per head [q_h; k_h; v_h]
            var r = qkv.reshape(b * heads, 3 * ch, t);
            q = r[.., ..(int)ch];
            k = r[.., (int)ch..(int)(2 * ch)];
            v = r[.., (int)(2 * ch)..];
        }
        double s = Math.Pow(ch, -0.25);
        var w = matmul((q * s).transpose(1, 2), k * s).softmax(-1); // [BH, T(query), S(key)] = einsum("bct,bcs->bts")
        var a = matmul(v, w.transpose(1, 2));                        // einsum("bts,bcs->bct", w, v)
        if (identityEntries is not null)
        {
            var rows = Enumerable.Range(0, (int)(b * heads)).Select(i => identityEntries.Contains(i / heads)).ToArray();
            using var mask = tensor(rows).reshape(-1, 1, 1);
            a = where(mask, v, a);
        }
        var h = Conv1x1Ref(a.reshape(b, c, t), p["proj_out.weight"], p["proj_out.bias"]);
        return (xf + h).reshape(x.shape);
    }

    private static Tensor Input(AttentionBlock block, int batch, int seed)
    {
        using var gen = new Generator((ulong)seed);
        return randn(new long[] { batch, block.Channels, block.Resolution, block.Resolution }, generator: gen);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BlockForward_MatchesDefinition(bool newOrder)
    {
        using var net = RandomModel(newOrder, seed: 3);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        Assert.True(net.IsClassConditional);
        var block = Block(net, Layer);
        Assert.Equal(newOrder, block.NewAttentionOrder);
        Assert.Equal((64, 4, 8), (block.Channels, block.Heads, block.Resolution));
        var p = Params(block);
        Assert.Equal(new[] { "norm.bias", "norm.weight", "proj_out.bias", "proj_out.weight", "qkv.bias", "qkv.weight" }, p.Keys.Order(StringComparer.Ordinal));

        var x = Input(block, 3, seed: 5);
        var actual = block.Forward(x, null);
        var expected = BlockRef(x, p, block.Heads, newOrder);
        Close.Assert(expected, actual, 1e-5, $"{(newOrder ? "new" : "legacy")} order block output");

        // The two layouts must give clearly different outputs for the same weights, or this test could not tell them apart.
        Close.AssertDiffer(BlockRef(x, p, block.Heads, !newOrder), actual, 1e-2, "other layout");
        // And the attention branch must contribute (proj_out is not zero).
        Close.AssertDiffer(x, actual, 1e-2, "block output vs input");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void IdentityPerturbation_OnSomeEntries_GivesValueOnThoseAndNormalAttentionOnOthers(bool newOrder)
    {
        using var net = RandomModel(newOrder, seed: 4);
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var block = Block(net, Layer);
        var p = Params(block);
        var x = Input(block, 4, seed: 6);
        var perturbed = new long[] { 1, 3 };

        var plan = PerturbationPlan.Perturb(new[] { Layer }, IdentityPerturbation.Instance, perturbed);
        var actual = block.Forward(x, plan);
        var expected = BlockRef(x, p, block.Heads, newOrder, new HashSet<long>(perturbed));
        Close.Assert(expected, actual, 1e-5, "mixed batch vs definition");

        // Unperturbed entries: exactly the normal attention of the block itself.
        var normal = block.Forward(x, null);
        foreach (int i in new[] { 0, 2 }) Close.Assert(normal[i], actual[i], 1e-6, $"entry {i} (not perturbed)");
        // Perturbed entries: the same as perturbing the whole batch.
        var all = block.Forward(x, PerturbationPlan.Perturb(new[] { Layer }, IdentityPerturbation.Instance));
        foreach (int i in new[] { 1, 3 }) Close.Assert(all[i], actual[i], 1e-6, $"entry {i} (perturbed)");
        foreach (int i in new[] { 1, 3 }) Close.AssertDiffer(normal[i], actual[i], 1e-3, $"entry {i} normal vs perturbed");

        // A plan for another layer leaves this block alone.
        var other = block.Forward(x, PerturbationPlan.Perturb(new[] { "input_blocks.3.1" }, IdentityPerturbation.Instance));
        Close.Assert(normal, other, 0, "plan for another layer");
    }

    [Fact]
    public void AttentionLayers_OfSmallModel()
    {
        using var net = new AdmUNet(SmallConfig(newOrder: true));
        Assert.Equal(new[] { "input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1" }, net.AttentionLayers.Select(l => l.Name));
        Assert.All(net.AttentionLayers, l => Assert.Equal(8, l.Resolution));
        Assert.Equal(new long[] { 5, 128 }, net.state_dict()["label_emb.weight"].shape);
    }

    [Fact]
    public void LoadStrict_ReportsMissingUnexpectedAndMisShapedKeysTogether()
    {
        using var source = RandomModel(newOrder: false, seed: 7);
        using var target = new AdmUNet(SmallConfig(newOrder: false));
        var weights = source.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value);
        weights.Remove("middle_block.1.qkv.bias");
        weights.Remove("out.2.weight");
        weights["middle_block.1.extra.weight"] = zeros(3);
        weights["label_emb.weight"] = zeros(6, 128);
        weights["input_blocks.0.0.weight"] = zeros(32, 3, 5, 5);
        using var before = target.state_dict()["time_embed.0.weight"].clone();

        var e = Assert.Throws<PagSharpException>(() => StateDictLoader.LoadStrict(target, weights, "bad.safetensors"));
        string m = e.Message;
        Assert.Contains("bad.safetensors", m);
        Assert.Contains("missing keys (2)", m);
        Assert.Contains("middle_block.1.qkv.bias", m);
        Assert.Contains("out.2.weight", m);
        Assert.Contains("unexpected keys (1)", m);
        Assert.Contains("middle_block.1.extra.weight", m);
        Assert.Contains("shape mismatches (2)", m);
        Assert.Contains("label_emb.weight: checkpoint [6,128], model [5,128]", m);
        Assert.Contains("input_blocks.0.0.weight: checkpoint [32,3,5,5], model [32,3,3,3]", m);
        // Nothing was copied.
        Close.Assert(before, target.state_dict()["time_embed.0.weight"], 0, "target parameters after a failed load");

        // The intact state dict loads and reproduces the source model.
        var good = source.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value);
        StateDictLoader.LoadStrict(target, good, "good");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var x = randn(2, 3, 16, 16);
        var t = tensor(new long[] { 10, 900 });
        var y = tensor(new long[] { 0, 4 });
        Close.Assert(source.Forward(x, t, y), target.Forward(x, t, y), 0, "loaded copy");
    }
}

public class FusedAttentionTests
{
    [Fact]
    public void FusedKernelMatchesTheReferenceOrderWithin1e5()
    {
        using var _ = TorchSharp.torch.no_grad();
        using var net = AdmA.Load();
        var cases = AdmA.Tensors("cases.safetensors");
        try
        {
            net.FusedAttention = false;
            using var reference = net.Forward(cases["x"], cases["t"]);
            net.FusedAttention = true;
            using var fused = net.Forward(cases["x"], cases["t"]);
            Close.Assert(reference, fused, 1e-5, "fused scaled_dot_product_attention vs softmax((q·s)(k·s)ᵀ)·v");
        }
        finally
        {
            PagSharp.Tests.IO.TensorAssert.DisposeAll(cases);
        }
    }
}
