using PagSharp.Attention;
using PagSharp.Models.Adm;
using PagSharp.Tests.Guidance;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Attention;

public class PerturbationPolicyTests
{
    private const int H = 4, W = 4, T = H * W, D = 8;

    private static (Tensor Q, Tensor K, Tensor V) Qkv(ulong seed = 3, long n = 2, long heads = 2, long tokens = T)
    {
        using var g = new Generator(seed);
        var q = randn(new[] { n, heads, tokens, D }, generator: g) * 2;
        var k = randn(new[] { n, heads, tokens, D }, generator: g) * 2;
        var v = randn(new[] { n, heads, tokens, D }, generator: g);
        return (q, k, v);
    }

    private static AttentionContext Ctx(ulong seed, int h = H, int w = W) => new("test", h, w, new Generator(seed));

    /// <summary>softmax((q·d^-¼)(k·d^-¼)ᵀ) written out independently of the library.</summary>
    private static Tensor Logits(Tensor q, Tensor k)
    {
        double s = Math.Pow(q.shape[^1], -0.25);
        return matmul(q * s, (k * s).transpose(-2, -1));
    }

    [Theory]
    [InlineData(0.5)]
    [InlineData(0.9)]
    public void Mask_KeepingDiagonal_MatchesDefinition(double r)
    {
        var (q, k, v) = Qkv();
        var actual = new MaskPerturbation(r).Attend(q, k, v, Ctx(11));

        using var g = new Generator(11);
        var masked = rand(new long[] { 2, 2, T, T }, generator: g) < r;
        masked = masked.logical_and(eye(T, dtype: ScalarType.Bool).logical_not());
        var expected = matmul(Logits(q, k).masked_fill(masked, double.NegativeInfinity).softmax(-1), v);
        TestModels.AssertClose(expected, actual, 1e-6, $"mask:{r}");
        Assert.True(TestModels.MaxAbsDiff(actual, matmul(Logits(q, k).softmax(-1), v)) > 1e-3, "masking changed nothing");
    }

    [Fact]
    public void Mask_WithoutDiagonal_MatchesDefinition_AndGuardsFullyMaskedRows()
    {
        // T = 3 keys and r = 0.8: about half the rows are masked completely.
        var (q, k, v) = Qkv(tokens: 3);
        var actual = new MaskPerturbation(0.8, retainDiagonal: false).Attend(q, k, v, Ctx(5, 1, 3));

        using var g = new Generator(5);
        var masked = rand(new long[] { 2, 2, 3, 3 }, generator: g) < 0.8;
        var m = masked.data<bool>().ToArray();
        int fullRows = 0, partialDiagMasked = 0;
        for (int row = 0; row < m.Length / 3; row++)
        {
            int i = row % 3;
            if (m[row * 3] && m[row * 3 + 1] && m[row * 3 + 2]) { m[row * 3 + i] = false; fullRows++; }
            else if (m[row * 3 + i]) partialDiagMasked++;
        }
        Assert.True(fullRows > 0, "the test needs fully masked rows");
        Assert.True(partialDiagMasked > 0, "the test needs rows whose diagonal is masked but not all keys");
        var guarded = tensor(m, new long[] { 2, 2, 3, 3 });
        var expected = matmul(Logits(q, k).masked_fill(guarded, double.NegativeInfinity).softmax(-1), v);
        Assert.False(actual.isnan().any().item<bool>());
        TestModels.AssertClose(expected, actual, 1e-6, "mask-nodiag:0.8");
    }

    [Fact]
    public void Mask_DrawsFromTheContextGenerator()
    {
        var (q, k, v) = Qkv();
        var p = new MaskPerturbation(0.5);
        var a = p.Attend(q, k, v, Ctx(1));
        var b = p.Attend(q, k, v, Ctx(1));
        var c = p.Attend(q, k, v, Ctx(2));
        TestModels.AssertBitwiseEqual(a, b, "same seed");
        Assert.True(TestModels.MaxAbsDiff(a, c) > 1e-4, "different seeds gave the same mask");
    }

    [Fact]
    public void MaskOne_WithDiagonal_IsExactlyIdentity_AndMaskZeroIsNormal()
    {
        var (q, k, v) = Qkv();
        TestModels.AssertBitwiseEqual(v, new MaskPerturbation(1.0).Attend(q, k, v, Ctx(1)), "mask:1");
        TestModels.AssertBitwiseEqual(v, new MaskPerturbation(1.0, retainDiagonal: false).Attend(q, k, v, Ctx(1)), "mask-nodiag:1 (guard keeps the diagonal)");
        TestModels.AssertBitwiseEqual(AttentionMath.Normal(q, k, v), new MaskPerturbation(0).Attend(q, k, v, Ctx(1)), "mask:0");
    }

    [Theory]
    [InlineData(NoiseTarget.Probabilities)]
    [InlineData(NoiseTarget.Logits)]
    public void Noise_MatchesDefinition(NoiseTarget target)
    {
        var (q, k, v) = Qkv();
        var actual = new NoisePerturbation(0.3, target).Attend(q, k, v, Ctx(21));

        using var g = new Generator(21);
        var noise = randn(new long[] { 2, 2, T, T }, generator: g) * 0.3;
        var w = target == NoiseTarget.Probabilities ? Logits(q, k).softmax(-1) + noise : (Logits(q, k) + noise).softmax(-1);
        TestModels.AssertClose(matmul(w, v), actual, 1e-5, $"noise {target}");
        TestModels.AssertBitwiseEqual(AttentionMath.Normal(q, k, v), new NoisePerturbation(0).Attend(q, k, v, Ctx(1)), "noise:0");
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(0.6)]
    public void Blur_MatchesDefinition(double sigma)
    {
        var (q, k, v) = Qkv();
        var actual = new BlurPerturbation(sigma).Attend(q, k, v, Ctx(1));

        // Hand computation: for every (entry, head, key) blur the H×W image of query weights, reflect padding,
        // kernel 2·min(⌈3σ⌉, 3)+1, then renormalise each query row.
        var a = Logits(q, k).softmax(-1).to_type(ScalarType.Float64);
        var av = a.data<double>().ToArray();
        int radius = (int)Math.Min(Math.Ceiling(3 * sigma), H - 1);
        var kern = Enumerable.Range(-radius, 2 * radius + 1).Select(x => Math.Exp(-0.5 * x * x / (sigma * sigma))).ToArray();
        double ks = kern.Sum();
        for (int i = 0; i < kern.Length; i++) kern[i] /= ks;
        static int Reflect(int i, int n) => i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i;
        var outv = new double[av.Length];
        for (int nh = 0; nh < 4; nh++)
            for (int key = 0; key < T; key++)
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++)
                    {
                        double acc = 0;
                        for (int dy = -radius; dy <= radius; dy++)
                            for (int dx = -radius; dx <= radius; dx++)
                                acc += kern[dy + radius] * kern[dx + radius] * av[nh * T * T + (Reflect(y + dy, H) * W + Reflect(x + dx, W)) * T + key];
                        outv[nh * T * T + (y * W + x) * T + key] = acc;
                    }
        var blurred = tensor(outv, new long[] { 2, 2, T, T });
        blurred = blurred / blurred.sum(-1, keepdim: true);
        var expected = matmul(blurred, v.to_type(ScalarType.Float64));
        TestModels.AssertClose(expected, actual, 1e-5, $"blur:{sigma}");
        Assert.True(TestModels.MaxAbsDiff(actual, AttentionMath.Normal(q, k, v)) > 1e-3, "blur changed nothing");
    }

    [Fact]
    public void Blur_NeedsASpatialGrid()
    {
        var (q, k, v) = Qkv();
        var e = Assert.Throws<PagSharpException>(() => new BlurPerturbation(1).Attend(q, k, v, new AttentionContext("l", 0, 0, null)));
        Assert.Contains("spatial", e.Message);
    }

    [Fact]
    public void Soft_MatchesDefinition_OneIsIdentity_ZeroIsNormal()
    {
        var (q, k, v) = Qkv();
        const double lambda = 0.3;
        var a = Logits(q, k).softmax(-1);
        var interpolated = (1 - lambda) * a + lambda * eye(T);
        TestModels.AssertClose(matmul(interpolated, v), new SoftPerturbation(lambda).Attend(q, k, v, Ctx(1)), 1e-6, "soft:0.3");
        TestModels.AssertBitwiseEqual(v, new SoftPerturbation(1).Attend(q, k, v, Ctx(1)), "soft:1");
        TestModels.AssertBitwiseEqual(AttentionMath.Normal(q, k, v), new SoftPerturbation(0).Attend(q, k, v, Ctx(1)), "soft:0");
    }

    private static AttentionBlock RandomBlock(ulong seed)
    {
        var block = new AttentionBlock("blk", 32, 1, 8, false, 4); // 4 heads of 8 channels on a 4×4 grid
        using var g = new Generator(seed);
        using (no_grad())
            foreach (var (_, p) in block.named_parameters())
                p.copy_(randn(p.shape, generator: g) * 0.2 + (p.dim() == 1 && p.shape[0] == 32 ? 0.5 : 0));
        return block;
    }

    [Fact]
    public void Soft_ThroughAnAttentionBlock_EqualsIdentityAndNormalExactly()
    {
        using var _ = no_grad();
        var block = RandomBlock(4);
        using var g = new Generator(8);
        var x = randn(new long[] { 2, 32, H, W }, generator: g);
        var normal = block.Forward(x, null);
        var identity = block.Forward(x, PerturbationPlan.Perturb(new[] { "blk" }, IdentityPerturbation.Instance));
        TestModels.AssertBitwiseEqual(normal, block.Forward(x, PerturbationPlan.Perturb(new[] { "blk" }, new SoftPerturbation(0))), "soft:0 vs normal");
        TestModels.AssertBitwiseEqual(identity, block.Forward(x, PerturbationPlan.Perturb(new[] { "blk" }, new SoftPerturbation(1))), "soft:1 vs identity");
        TestModels.AssertBitwiseEqual(identity, block.Forward(x, PerturbationPlan.Perturb(new[] { "blk" }, new MaskPerturbation(1))), "mask:1 vs identity");
        Assert.True(TestModels.MaxAbsDiff(normal, identity) > 1e-3);
    }

    [Theory]
    [InlineData("identity")]
    [InlineData("mask:0.5")]
    [InlineData("mask-nodiag:0.5")]
    [InlineData("noise:1.0")]
    [InlineData("noise-logits:1.0")]
    [InlineData("blur:1.0")]
    [InlineData("soft:0.5")]
    public void PerturbingABatchSubset_LeavesTheOtherEntriesUntouched(string spec)
    {
        using var _ = no_grad();
        var block = RandomBlock(7);
        using var g = new Generator(9);
        var x = randn(new long[] { 3, 32, H, W }, generator: g);
        var normal = block.Forward(x, null);
        var plan = PerturbationPlan.Perturb(new[] { "blk" }, PerturbationSpec.Parse(spec), new long[] { 1 }, new Generator(3));
        var mixed = block.Forward(x, plan);
        foreach (int i in new[] { 0, 2 })
            TestModels.AssertClose(normal[i], mixed[i], 1e-6, $"{spec}: unperturbed entry {i}");
        Assert.True(TestModels.MaxAbsDiff(normal[1], mixed[1]) > 1e-4, $"{spec}: the perturbed entry did not change");

        // The perturbed entry equals the policy applied to that entry alone.
        var alone = block.Forward(x[1..2], PerturbationPlan.Perturb(new[] { "blk" }, PerturbationSpec.Parse(spec), null, new Generator(3)));
        TestModels.AssertClose(alone[0], mixed[1], 1e-5, $"{spec}: perturbed entry");
    }

    [Theory]
    [InlineData("identity")]
    [InlineData("mask:1")]
    [InlineData("soft:1")]
    public void IdentityLikePolicies_MatchTheOfficialFixture(string spec)
    {
        using var _ = no_grad();
        using var net = TestModels.FixtureA();
        var cases = PagSharp.IO.SafeTensors.Load(IO.Fixtures.Path("adm_a_uncond", "cases.safetensors"));
        try
        {
            var plan = PerturbationPlan.Perturb(new[] { "middle_block.1" }, PerturbationSpec.Parse(spec), null, new Generator(1));
            var outp = net.Forward(cases["x"], cases["t"], null, plan);
            TestModels.AssertClose(cases["out_pag_mid"], outp, 1e-4, $"{spec} vs out_pag_mid");
        }
        finally { IO.TensorAssert.DisposeAll(cases); }
    }
}

/// <summary>SEG's query blur: the σ limits and a finite σ against the blur written out here.</summary>
public sealed class SegPerturbationTests
{
    private static (Tensor Q, Tensor K, Tensor V) Qkv(int h, int w)
    {
        using var g = new Generator(21);
        return (randn(new long[] { 2, 3, h * w, 4 }, generator: g), randn(new long[] { 2, 3, h * w, 4 }, generator: g), randn(new long[] { 2, 3, h * w, 4 }, generator: g));
    }

    private static AttentionContext Ctx(int h, int w) => new("test", h, w, null);

    [Fact]
    public void SigmaZeroIsNormalAttention_AndInfinityIsTheMeanQuery()
    {
        var (q, k, v) = Qkv(4, 4);
        TestModels.AssertBitwiseEqual(AttentionMath.Normal(q, k, v), new SegPerturbation(0).Attend(q, k, v, Ctx(4, 4)), "seg:0");
        TestModels.AssertBitwiseEqual(AttentionMath.Normal(q, k, v), new SegPerturbation(1e-3).Attend(q, k, v, Ctx(4, 4)), "seg:0.001 (kernel 1)");
        var mean = q.mean(new long[] { 2 }, keepdim: true).expand_as(q);
        TestModels.AssertClose(AttentionMath.Normal(mean, k, v), new SegPerturbation(double.PositiveInfinity).Attend(q, k, v, Ctx(4, 4)), 1e-6, "seg:inf");
        Assert.Equal("seg:inf", PerturbationSpec.Parse("seg:inf").Spec);
        Assert.Equal(0.8, ((SegPerturbation)PerturbationSpec.Parse("seg:0.8")).Sigma);
    }

    [Fact]
    public void KernelSizesFollowTheAuthorsRule()
    {
        var s = new SegPerturbation(1.5);          // ⌈9⌉ = 9, odd → 9
        Assert.Equal(9, s.KernelSize(16));
        Assert.Equal(9, s.KernelSize(8));           // even side 8 → min(9, 8 + 1)
        Assert.Equal(7, s.KernelSize(7));           // odd side 7 → min(9, 7)
        Assert.Equal(11, new SegPerturbation(1.7).KernelSize(64)); // ⌈10.2⌉ = 11, odd → 11
        Assert.Equal(5, new SegPerturbation(2.0 / 3).KernelSize(64)); // ⌈4⌉ = 4, even → 5
    }

    [Fact]
    public void AFiniteSigmaMatchesTheBlurWrittenOut()
    {
        const int h = 4, w = 4;
        const double sigma = 0.8;
        var (q, k, v) = Qkv(h, w);
        var seg = new SegPerturbation(sigma);
        int ks = seg.KernelSize(h);   // ⌈4.8⌉ = 5 → 5; min(5, 4 + 1) = 5
        Assert.Equal(5, ks);
        var taps = Enumerable.Range(0, ks).Select(i => Math.Exp(-Math.Pow(i - (ks - 1) / 2.0, 2) / (2 * sigma * sigma))).ToArray();
        double sum = taps.Sum();
        taps = taps.Select(t => t / sum).ToArray();
        static int Reflect(int i, int side) => i < 0 ? -i : i >= side ? 2 * (side - 1) - i : i;
        var qd = q.to_type(ScalarType.Float64).data<double>().ToArray();
        var outd = new double[qd.Length];
        int p = ks / 2, dim = 4;
        for (int nh = 0; nh < 2 * 3; nh++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    for (int c = 0; c < dim; c++)
                    {
                        double acc = 0;
                        for (int dy = -p; dy <= p; dy++)
                            for (int dx = -p; dx <= p; dx++)
                                acc += taps[dy + p] * taps[dx + p] * qd[((nh * h + Reflect(y + dy, h)) * w + Reflect(x + dx, w)) * dim + c];
                        outd[((nh * h + y) * w + x) * dim + c] = acc;
                    }
        var expectedQ = tensor(outd).reshape(q.shape).to_type(ScalarType.Float32);
        TestModels.AssertClose(expectedQ, seg.BlurQueries(q, h, w), 1e-5, "blurred queries");
        TestModels.AssertClose(AttentionMath.Normal(expectedQ, k, v), seg.Attend(q, k, v, Ctx(h, w)), 1e-5, "SEG attention");
        Assert.True(TestModels.MaxAbsDiff(AttentionMath.Normal(q, k, v), seg.Attend(q, k, v, Ctx(h, w))) > 1e-3, "the blur changed nothing");
    }
}

/// <summary>Per-head PAG: the policy on the chosen heads, normal attention on the others.</summary>
public sealed class HeadSubsetTests
{
    [Fact]
    public void ChosenHeadsGetThePolicyOthersNormalAttention()
    {
        using var g = new Generator(4);
        var q = randn(new long[] { 2, 4, 16, 8 }, generator: g);
        var k = randn(new long[] { 2, 4, 16, 8 }, generator: g);
        var v = randn(new long[] { 2, 4, 16, 8 }, generator: g);
        var ctx = new AttentionContext("layer", 4, 4, null);
        var outp = new HeadSubsetPerturbation(IdentityPerturbation.Instance, [1, 3]).Attend(q, k, v, ctx);
        var normal = AttentionMath.Normal(q, k, v);
        foreach (int h in new[] { 0, 2 }) TestModels.AssertBitwiseEqual(normal[.., h], outp[.., h], $"head {h} normal");
        foreach (int h in new[] { 1, 3 }) TestModels.AssertBitwiseEqual(v[.., h], outp[.., h], $"head {h} identity");
        TestModels.AssertClose(IdentityPerturbation.Instance.Attend(q, k, v, ctx), new HeadSubsetPerturbation(IdentityPerturbation.Instance, [0, 1, 2, 3]).Attend(q, k, v, ctx), 0, "all heads = the policy");
        Assert.Contains("has 4 heads", Assert.Throws<PagSharpException>(() => new HeadSubsetPerturbation(IdentityPerturbation.Instance, [4]).Attend(q, k, v, ctx)).Message);
    }

    [Fact]
    public void HeadSpecsSplitFromLayerSpecs()
    {
        var (spec, heads) = HeadSpec.Split("middle_block.1:h0,h3,output@16,input_blocks.3.1:h1");
        Assert.Equal("middle_block.1,output@16,input_blocks.3.1", spec);
        Assert.Equal([0, 3], heads["middle_block.1"]);
        Assert.Equal([1], heads["input_blocks.3.1"]);
        Assert.Empty(HeadSpec.Split("middle,output").Heads);
        Assert.Throws<PagSharpException>(() => HeadSpec.Split("middle_block.1:x"));
    }
}

/// <summary>Exact and diffusers matching of diffusers-style layer identifiers.</summary>
public sealed class LayerMatchTests
{
    private static readonly AttentionLayerInfo[] Layers =
    [
        new("down_blocks.1.attentions.0.transformer_blocks.0.attn1", "input", 32, 64, 2),
        new("down_blocks.10.attentions.0.transformer_blocks.0.attn1", "input", 16, 64, 2),
        new("mid_block.attentions.0.transformer_blocks.0.attn1", "middle", 8, 64, 2),
        new("up_blocks.1.attentions.2.transformer_blocks.0.attn1", "output", 16, 64, 2),
    ];

    [Fact]
    public void ExactMatchingTakesWholeDottedPrefixes_DiffusersMatchingSearchesRegexes()
    {
        Assert.Equal([Layers[0].Name], DiffusersLayerSpec.Resolve("down_blocks.1", Layers, LayerMatch.Exact));
        Assert.Equal([Layers[0].Name, Layers[1].Name], DiffusersLayerSpec.Resolve("down_blocks.1", Layers, LayerMatch.Diffusers));
        Assert.Equal([Layers[2].Name], DiffusersLayerSpec.Resolve("mid", Layers, LayerMatch.Exact));
        Assert.Equal([Layers[3].Name], DiffusersLayerSpec.Resolve("up_blocks.1.attentions.2", Layers, LayerMatch.Exact));
        Assert.Equal([Layers[0].Name, Layers[1].Name], DiffusersLayerSpec.Resolve("input", Layers, LayerMatch.Exact));
        Assert.Contains("diffusers matching mode", Assert.Throws<PagSharpException>(() => DiffusersLayerSpec.Resolve("down_blocks\\.1", Layers, LayerMatch.Exact)).Message);
    }
}

/// <summary>Skip-layer guidance's policy: the skipped block passes its input on (ADM), the self-attention adds nothing (SD).</summary>
public sealed class SkipPerturbationTests
{
    [Fact]
    public void ASkippedAdmAttentionBlockReturnsItsInput_OnTheSkippedEntriesOnly()
    {
        using var net = TestModels.Tiny(classConditional: false);
        var block = net.modules().OfType<AttentionBlock>().First();
        using var g = new Generator(6);
        var x = randn(new long[] { 3, block.Channels, 8, 8 }, generator: g);
        using var _ = no_grad();
        var normal = block.Forward(x, null);
        var plan = PerturbationPlan.Perturb([block.Path], SkipPerturbation.Instance, [1]);
        var outp = block.Forward(x, plan);
        TestModels.AssertBitwiseEqual(x[1], outp[1], "skipped entry = input");
        TestModels.AssertClose(normal[0], outp[0], 1e-5, "entry 0 normal");
        TestModels.AssertClose(normal[2], outp[2], 1e-5, "entry 2 normal");
        Assert.True(TestModels.MaxAbsDiff(normal[1], x[1]) > 1e-4, "the block is not an identity to begin with");
        Assert.Equal("skip", PerturbationSpec.Parse("skip").Spec);
    }

    [Fact]
    public void ASkippedSdSelfAttentionAddsNothing()
    {
        using var attn = new PagSharp.Models.Sd.SdAttention(16, null, 2, 8, bias: false, path: "test.attn1");
        using var g = new Generator(7);
        var h = randn(new long[] { 2, 16, 16 }, generator: g);
        using var _ = no_grad();
        var outp = attn.Forward(h, null, 4, 4, PerturbationPlan.Perturb(["test.attn1"], SkipPerturbation.Instance));
        Assert.Equal(0f, outp.abs().max().item<float>());
        Assert.True(attn.Forward(h, null, 4, 4, null).abs().max().item<float>() > 1e-4);
    }

    [Fact]
    public void ASkippedSdTransformerBlockReturnsItsInput_WhileASkippedAttentionKeepsCrossAttentionAndFeedForward()
    {
        manual_seed(9);
        using var block = new PagSharp.Models.Sd.BasicTransformerBlock("test", 16, 2, 8, 8, 0);
        using var g = new Generator(8);
        var h = randn(new long[] { 3, 16, 16 }, generator: g);
        var context = randn(new long[] { 3, 5, 8 }, generator: g);
        using var _ = no_grad();
        var normal = block.Forward(h, context, 4, 4, null);
        var skipBlock = block.Forward(h, context, 4, 4, PerturbationPlan.Perturb(["test.attn1"], SkipPerturbation.Block, [1]));
        TestModels.AssertBitwiseEqual(h[1], skipBlock[1], "skipped block = input");
        TestModels.AssertClose(normal[0], skipBlock[0], 1e-5, "entry 0 normal");
        TestModels.AssertClose(normal[2], skipBlock[2], 1e-5, "entry 2 normal");
        var skipAttn = block.Forward(h, context, 4, 4, PerturbationPlan.Perturb(["test.attn1"], SkipPerturbation.Instance, [1]));
        Assert.True(TestModels.MaxAbsDiff(skipAttn[1], h[1]) > 1e-4, "skipping the self-attention alone keeps the rest of the block");
        Assert.True(TestModels.MaxAbsDiff(skipAttn[1], normal[1]) > 1e-4, "skipping the self-attention changes the block");
        Assert.Same(SkipPerturbation.Block, PerturbationSpec.Parse("skip-block"));
        Assert.Equal(new long[] { 1 }, PerturbationPlan.Perturb(["a"], SkipPerturbation.Block, [1]).SkippedEntries("a", 3));
        Assert.Null(PerturbationPlan.Perturb(["a"], SkipPerturbation.Instance, [1]).SkippedBlockEntries("a", 3));
    }
}
