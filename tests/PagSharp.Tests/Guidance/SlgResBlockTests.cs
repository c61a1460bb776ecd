using PagSharp.Attention;
using PagSharp.Guidance;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Models.Sd;
using PagSharp.Tests.Models;
using PagSharp.Tests.Sd;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.Guidance;

/// <summary>
/// Skip-layer guidance on the ResBlock that feeds a chosen attention layer (<c>--slg-skip resblock</c>,
/// <see cref="SkipTarget.ResBlock"/>): the ResBlock outputs its skip-connection path for the SLG entries, the attention
/// runs normally. The references are computed without the code under test: the ResBlock's own skip convolution, or
/// the same network with that ResBlock's residual branch replaced by zeros (its last conv zeroed).
/// </summary>
public sealed class SlgResBlockTests
{
    // The tiny ADM config (TestModels.TinyConfig): attention at input_blocks.3.1, middle_block.1, output_blocks.{0,1}.1
    // (output_blocks.1 ends with an upsampling ResBlock, which is not the one skipped).
    public static TheoryData<string> AdmLayers => new() { "input_blocks.3.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1" };

    /// <summary>The ResBlock before attention layer <paramref name="layer"/> in the same block: <c>X.1</c> → <c>X.0</c>.</summary>
    private static string AdmResBlockOf(string layer) => layer[..^2] + ".0";

    /// <summary>Zeroes every parameter whose name starts with one of <paramref name="prefixes"/>.</summary>
    private static void Zero(TorchSharp.torch.nn.Module net, params string[] prefixes)
    {
        using var _ = no_grad();
        int n = 0;
        foreach (var (name, p) in net.named_parameters())
            if (prefixes.Any(pre => name.StartsWith(pre, StringComparison.Ordinal))) { p.zero_(); n++; }
        Assert.True(n > 0, $"no parameter starts with {string.Join(", ", prefixes)}");
    }

    [Fact]
    public void TheSpecParses_AndAttentionLayersIgnoreAResBlockEntry()
    {
        Assert.Same(SkipPerturbation.ResBlock, PerturbationSpec.Parse("skip-resblock"));
        Assert.Equal("skip-resblock", SkipPerturbation.ResBlock.Spec);
        Assert.Equal(SkipTarget.ResBlock, SkipPerturbation.ResBlock.Target);
        Assert.Contains("skip-resblock", PerturbationSpec.ValidForms);
        Assert.Same(SkipPerturbation.ResBlock, PerturbedGuidance.Slg(2, ["a"], skip: SkipTarget.ResBlock).Policy);
        Assert.Same(SkipPerturbation.Block, PerturbedGuidance.Slg(2, ["a"], 0.01, 0.2, wholeBlock: true).Policy);
        Assert.Contains("cannot be limited to heads", Assert.Throws<PagSharpException>(() => new HeadSubsetPerturbation(SkipPerturbation.ResBlock, [0])).Message);

        // The plan's queries keep the three modes apart; several attention layers feeding one ResBlock skip each entry once.
        var plan = new PerturbationPlan().Add("a", SkipPerturbation.ResBlock, [1, 2]).Add("b", SkipPerturbation.ResBlock, [2, 3]).Add("a", IdentityPerturbation.Instance, [0]);
        Assert.Null(plan.SkippedEntries("a", 4));
        Assert.Null(plan.SkippedBlockEntries("a", 4));
        Assert.Equal(new long[] { 1, 2 }, plan.SkippedResBlockEntries("a", 4));
        Assert.Equal(new long[] { 1, 2, 3 }, plan.SkippedResBlockEntries(["a", "b"], 4));
        Assert.Equal(new long[] { 0, 1, 2, 3 }, PerturbationPlan.Perturb(["a"], SkipPerturbation.ResBlock).SkippedResBlockEntries("a", 4));
        Assert.Null(PerturbationPlan.Perturb(["a"], SkipPerturbation.Instance).SkippedResBlockEntries("a", 4));
        Assert.Same(IdentityPerturbation.Instance, Assert.Single(plan.AttentionEntriesOf("a")).Policy);

        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false);
        var block = net.modules().OfType<AttentionBlock>().First();
        using var g = new Generator(6);
        var x = randn(new long[] { 3, block.Channels, 8, 8 }, generator: g);
        TestModels.AssertBitwiseEqual(block.Forward(x, null), block.Forward(x, PerturbationPlan.Perturb([block.Path], SkipPerturbation.ResBlock, [1])), "ADM attention block");

        manual_seed(9);
        using var tb = new BasicTransformerBlock("test", 16, 2, 8, 8, 0);
        var h = randn(new long[] { 3, 16, 16 }, generator: g);
        var context = randn(new long[] { 3, 5, 8 }, generator: g);
        TestModels.AssertBitwiseEqual(tb.Forward(h, context, 4, 4, null),
            tb.Forward(h, context, 4, 4, PerturbationPlan.Perturb(["test.attn1"], SkipPerturbation.ResBlock, [1])), "SD transformer block");
    }

    [Fact]
    public void AnAdmResBlock_OutputsItsSkipConnection_OnTheSkippedEntriesOnly()
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false);
        var r = (ResBlock)net.Blocks.Single(b => b.Path == "input_blocks.3").Block.Layers[0];
        Assert.NotNull(r.SkipConv); // 32 → 64 channels: a 1×1 conv skip connection
        using var g = new Generator(2);
        var x = randn(new long[] { 3, 32, 8, 8 }, generator: g);
        var emb = randn(new long[] { 3, 128 }, generator: g);
        var normal = r.Forward(x, emb);
        var skipped = r.Forward(x, emb, [1]);
        TestModels.AssertClose(r.SkipConv!.forward(x)[1], skipped[1], 1e-6, "skipped entry = skip_connection(x)");
        TestModels.AssertBitwiseEqual(normal[0], skipped[0], "entry 0");
        TestModels.AssertBitwiseEqual(normal[2], skipped[2], "entry 2");
        Assert.True(TestModels.MaxAbsDiff(normal[1], skipped[1]) > 1e-3, "the residual branch is not zero to begin with");
    }

    [Theory]
    [MemberData(nameof(AdmLayers))]
    public void AdmNetwork_WithTheResBlockSkipped_EqualsTheNetworkWithoutItsResidualBranch(string layer)
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false, seed: 3);
        Assert.Contains(layer, net.AttentionLayers.Select(l => l.Name));
        using var reference = TestModels.Tiny(classConditional: false, seed: 3);
        Zero(reference, AdmResBlockOf(layer) + ".out_layers.3."); // h = 0: the block outputs skip_connection(x)
        using var g = new Generator(4);
        var x = randn(new long[] { 3, 3, 16, 16 }, generator: g);
        var t = tensor(new long[] { 100, 500, 900 });
        var normal = net.Forward(x, t);
        var expected = reference.Forward(x, t);
        Assert.True(TestModels.MaxAbsDiff(normal, expected) > 1e-4, "the ResBlock matters");
        var slg = net.Forward(x, t, null, PerturbationPlan.Perturb([layer], SkipPerturbation.ResBlock, [1]));
        TestModels.AssertClose(expected[1], slg[1], 1e-5, $"{layer}: skipped entry");
        TestModels.AssertClose(normal[0], slg[0], 1e-6, $"{layer}: entry 0 untouched");
        TestModels.AssertClose(normal[2], slg[2], 1e-6, $"{layer}: entry 2 untouched");
    }

    /// <summary>
    /// A shared-prefix fork (before the skipped ResBlock when it is the first perturbed layer) equals feeding the copies
    /// in, with and without the decoder's split skips (output_blocks.0's ResBlock takes the split: 64 + 64 channels).
    /// </summary>
    [Theory]
    [InlineData("input_blocks.3.1", null)]
    [InlineData("middle_block.1", null)]
    [InlineData("output_blocks.0.1", null)]          // the fork happens at a split decoder ResBlock that is skipped
    [InlineData("output_blocks.1.1", null)]
    [InlineData("output_blocks.0.1", "middle_block.1")]   // forked earlier by PAG: the skipped ResBlock splits a pre-fork skip
    [InlineData("output_blocks.1.1", "input_blocks.3.1")]
    [InlineData("middle_block.1", "middle_block.1")]      // PAG and the ResBlock skip at one layer
    public void AdmSharedPrefixEqualsFeedingTheCopies(string layer, string? pagLayer)
    {
        Assert.True(SplitSkip.Pays(64, 64, AdmNorm.Groups, 4, 2), "output_blocks.0 should take the split");
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: false, seed: 5);
        using var g = new Generator(8);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: g);
        var t = tensor(new long[] { 300, 700 });
        PerturbationPlan Plan(long[]? fork)
        {
            var plan = new PerturbationPlan { ForkSource = fork };
            if (pagLayer is not null) plan.Add(pagLayer, IdentityPerturbation.Instance, [2, 3]);
            return plan.Add(layer, SkipPerturbation.ResBlock, [4, 5]);
        }
        var copies = tensor(new long[] { 0, 1, 0, 1 });
        var unshared = net.Forward(cat(new[] { x, x.index_select(0, copies) }), cat(new[] { t, t.index_select(0, copies) }), null, Plan(null));
        var shared = net.Forward(x, t, null, Plan([0, 1, 0, 1]));
        Assert.Equal(new long[] { 6, 6, 16, 16 }, shared.shape); // learned variance: 2 × 3 channels
        TestModels.AssertClose(unshared, shared, 1e-5, $"{layer} fork vs unshared");
        net.SplitSkips = false;
        TestModels.AssertClose(unshared, net.Forward(x, t, null, Plan([0, 1, 0, 1])), 1e-5, $"{layer} fork without split skips");
        // The SLG entries really are skipped (they differ from the plain conditional pass).
        Assert.True(TestModels.MaxAbsDiff(unshared.narrow(0, 4, 2), unshared.narrow(0, 0, 2)) > 1e-4, "the skip changes the output");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void GuidedSlgOnTheResBlock_FollowsTheFormula_SharedOrNot_AndDiffersFromAttentionMode(bool cfg)
    {
        using var _ = no_grad();
        using var net = TestModels.Tiny(classConditional: true, seed: 4);
        using var gen = new Generator(6);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: gen);
        var y = tensor(new long[] { 0, 1 });
        var t = full(2, 300L);
        string[] layers = ["middle_block.1", "output_blocks.0.1"];
        GuidanceSettings Settings(SkipTarget skip, bool shared) => new()
        {
            GuidanceScale = cfg ? 2.5 : 1, PagScale = new ScaleSchedule.Constant(2), PagLayers = ["input_blocks.3.1"],
            Perturbed = [PerturbedGuidance.Slg(3, layers, 0, 1, skip)], SharedPrefix = shared,
        };
        var step = TestModels.At(t);
        using var sharedD = new GuidedDenoiser(TestModels.Adm(net, y), Settings(SkipTarget.ResBlock, true), 1000);
        using var naiveD = new GuidedDenoiser(TestModels.Adm(net, y), Settings(SkipTarget.ResBlock, false), 1000);
        using var attnD = new GuidedDenoiser(TestModels.Adm(net, y), Settings(SkipTarget.Attention, true), 1000);
        var shared = sharedD.Predict(x, step).Output;
        var naive = naiveD.Predict(x, step).Output;
        TestModels.AssertClose(naive, shared, 1e-5 * (1 + 2 * 2 + 2 * 3 + (cfg ? 2 * 2.5 : 0)), "shared prefix on = off");

        var c = TestModels.Fwd(net, x, t, y, null).Output;
        var u = TestModels.Fwd(net, x, t, full(2, 2L), null).Output;
        var p = TestModels.Fwd(net, x, t, y, PerturbationPlan.Perturb(["input_blocks.3.1"], IdentityPerturbation.Instance)).Output;
        var slg = TestModels.Fwd(net, x, t, y, PerturbationPlan.Perturb(layers, SkipPerturbation.ResBlock)).Output;
        var expected = (cfg ? u + 2.5 * (c - u) : c) + 2 * (c - p) + 3 * (c - slg);
        TestModels.AssertClose(expected, naive, 3e-5, "CFG + PAG + SLG(resblock)");
        var attention = attnD.Predict(x, step).Output;
        Assert.True(TestModels.MaxAbsDiff(attention, shared) > 1e-3, "skipping the ResBlock is not skipping the attention");
    }

    // ---- Stable Diffusion (diffusers UNet2DConditionModel) ----

    /// <summary>Attention layer → the resnet feeding it, in the tiny SD fixture (DownBlock2D + CrossAttnDownBlock2D, two resnets per down block).</summary>
    public static TheoryData<string, string> SdLayers => new()
    {
        { "down_blocks.1.attentions.0.transformer_blocks.0.attn1", "down_blocks.1.resnets.0" }, // 4 → 8: conv_shortcut
        { "down_blocks.1.attentions.1.transformer_blocks.0.attn1", "down_blocks.1.resnets.1" }, // identity shortcut
        { "mid_block.attentions.0.transformer_blocks.0.attn1", "mid_block.resnets.0" },
        { "up_blocks.0.attentions.1.transformer_blocks.0.attn1", "up_blocks.0.resnets.1" },       // on cat([h, skip])
    };

    private static (Tensor Sample, Tensor Text) SdInputs(long batch, ulong seed)
    {
        using var g = new Generator(seed);
        return (randn(new long[] { batch, 4, 16, 16 }, generator: g), randn(new long[] { batch, 3, 8 }, generator: g));
    }

    [Theory]
    [MemberData(nameof(SdLayers))]
    public void SdNetwork_WithTheResnetSkipped_EqualsTheNetworkWithoutItsResidualBranch(string layer, string resnet)
    {
        using var _ = no_grad();
        using var net = SdFixtures.LoadUnet();
        Assert.Contains(layer, net.AttentionLayers.Select(l => l.Name));
        using var reference = SdFixtures.LoadUnet();
        Zero(reference, resnet + ".conv2."); // h = 0: the resnet outputs shortcut(x) / output_scale_factor (1 here)
        var (sample, text) = SdInputs(3, 11);
        var t = tensor(500L);
        var normal = net.Forward(sample, t, text);
        var expected = reference.Forward(sample, t, text);
        Assert.True(TestModels.MaxAbsDiff(normal, expected) > 1e-4, "the resnet matters");
        var slg = net.Forward(sample, t, text, PerturbationPlan.Perturb([layer], SkipPerturbation.ResBlock, [1]));
        TestModels.AssertClose(expected[1], slg[1], 1e-5, $"{layer}: skipped entry");
        TestModels.AssertClose(normal[0], slg[0], 1e-6, $"{layer}: entry 0 untouched");
        TestModels.AssertClose(normal[2], slg[2], 1e-6, $"{layer}: entry 2 untouched");
        // Skipping the attention instead is something else.
        var attn = net.Forward(sample, t, text, PerturbationPlan.Perturb([layer], SkipPerturbation.Instance, [1]));
        Assert.True(TestModels.MaxAbsDiff(attn[1], slg[1]) > 1e-4, "resblock mode differs from attention mode");
    }

    [Theory]
    [InlineData("down_blocks.1.attentions.0.transformer_blocks.0.attn1", null)]
    [InlineData("mid_block.attentions.0.transformer_blocks.0.attn1", null)]
    [InlineData("up_blocks.0.attentions.1.transformer_blocks.0.attn1", null)]
    [InlineData("up_blocks.0.attentions.2.transformer_blocks.0.attn1", "down_blocks.1.attentions.0.transformer_blocks.0.attn1")]
    public void SdSharedPrefixEqualsFeedingTheCopies(string layer, string? pagLayer)
    {
        using var _ = no_grad();
        using var net = SdFixtures.LoadUnet();
        AssertSdFork(net, layer, pagLayer, 21);
    }

    /// <summary>
    /// A UNet whose CrossAttnUpBlock2D resnets take the split (32 + 32 channels in 32 groups), random weights: a skipped
    /// resnet that splits its pre-fork skip, with the fork right before it or earlier, equals the unshared computation.
    /// </summary>
    [Theory]
    [InlineData(null)]
    [InlineData("down_blocks.0.attentions.0.transformer_blocks.0.attn1")]
    public void SdSkippedResnet_WithSplitSkips_EqualsFeedingTheCopies(string? pagLayer)
    {
        using var _ = no_grad();
        using var net = new SdUNet(new SdUNetConfig
        {
            SampleSize = 8, BlockOutChannels = [32, 64], LayersPerBlock = [1, 1],
            DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"], UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"],
            AttentionHeads = [2, 2], CrossAttentionDim = [8, 8], TransformerLayersPerBlock = [1, 1],
        });
        using (var g = new Generator(3))
        {
            foreach (var (_, p) in net.named_parameters()) p.copy_(randn(p.shape, generator: g) * 0.05);
            foreach (var m in net.modules())
                if (m is TorchSharp.Modules.GroupNorm gn) gn.weight!.add_(1.0);
                else if (m is TorchSharp.Modules.LayerNorm ln) ln.weight!.add_(1.0);
        }
        net.eval();
        Assert.True(SplitSkip.Pays(32, 32, 32, 4, 2), "up_blocks.1.resnets.1 should take the split");
        AssertSdFork(net, "up_blocks.1.attentions.1.transformer_blocks.0.attn1", pagLayer, 5, size: 8);
    }

    private static void AssertSdFork(SdUNet net, string layer, string? pagLayer, ulong seed, long size = 16)
    {
        using var g = new Generator(seed);
        var sample = randn(new long[] { 2, 4, size, size }, generator: g);
        var text = randn(new long[] { 2, 3, 8 }, generator: g);
        var t = tensor(new long[] { 200, 800 });
        PerturbationPlan Plan(long[]? fork)
        {
            var plan = new PerturbationPlan { ForkSource = fork };
            if (pagLayer is not null) plan.Add(pagLayer, IdentityPerturbation.Instance, [2, 3]);
            return plan.Add(layer, SkipPerturbation.ResBlock, [4, 5]);
        }
        var copies = tensor(new long[] { 0, 1, 0, 1 });
        var unshared = net.Forward(cat(new[] { sample, sample.index_select(0, copies) }), cat(new[] { t, t.index_select(0, copies) }),
            cat(new[] { text, text.index_select(0, copies) }), Plan(null));
        net.SplitSkips = true;
        var shared = net.Forward(sample, t, text, Plan([0, 1, 0, 1]));
        Assert.Equal(6, shared.shape[0]);
        TestModels.AssertClose(unshared, shared, 1e-5, $"{layer}: fork vs unshared");
        net.SplitSkips = false;
        TestModels.AssertClose(unshared, net.Forward(sample, t, text, Plan([0, 1, 0, 1])), 1e-5, $"{layer}: fork without split skips");
        Assert.True(TestModels.MaxAbsDiff(unshared.narrow(0, 4, 2), unshared.narrow(0, 0, 2)) > 1e-5, "the skip changes the output");
    }

    [Fact]
    public void SplitSkipResBlocks_SkipTheSameEntriesAsTheConcatenatedForward()
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var gen = new Generator(12);
        var copies = tensor(new long[] { 2, 0 });
        Tensor Widen(Tensor t) => cat(new[] { t, t.index_select(0, copies) }, 0);
        var widening = new SkipWidening(Widen, (t, p) => t.add_(Widen(p)));
        long[] skipped = [1, 4];

        var block = new ResBlock(128, 16, 0, 64, true);
        foreach (var p in block.parameters()) p.copy_(randn(p.shape, generator: gen) * 0.2);
        block.eval();
        var skip = randn(new long[] { 3, 64, 8, 8 }, generator: gen);
        var h = randn(new long[] { 5, 64, 8, 8 }, generator: gen);
        var emb = randn(new long[] { 5, 16 }, generator: gen);
        var input = cat(new[] { h, Widen(skip) }, 1);
        var plain = block.Forward(input, emb);
        var split = block.ForwardSplitSkip(h, skip, widening, emb, skipped);
        Assert.NotNull(split);
        TestModels.AssertClose(block.Forward(input, emb, skipped), split!, 1e-5, "ADM split = concatenated, with skipped entries");
        var shortcut = block.SkipConv!.forward(input);
        foreach (long i in skipped) TestModels.AssertClose(shortcut[i], split![i], 1e-5, $"ADM entry {i} = skip_connection(cat)");
        foreach (long i in new long[] { 0, 2, 3 }) TestModels.AssertClose(plain[i], split![i], 1e-5, $"ADM entry {i} untouched");

        var sd = new ResnetBlock2D(128, 64, 16, 32, 1e-6, "silu");
        foreach (var p in sd.parameters()) p.copy_(randn(p.shape, generator: gen) * 0.2);
        sd.eval();
        var sdPlain = sd.Forward(input, emb);
        var sdSplit = sd.ForwardSplitSkip(h, skip, widening, emb, skipped);
        Assert.NotNull(sdSplit);
        TestModels.AssertClose(sd.Forward(input, emb, skipped), sdSplit!, 1e-5, "SD split = concatenated, with skipped entries");
        var sdShortcut = sd.InputConvs.Shortcut!.forward(input);
        foreach (long i in skipped) TestModels.AssertClose(sdShortcut[i], sdSplit![i], 1e-5, $"SD entry {i} = conv_shortcut(cat)");
        foreach (long i in new long[] { 0, 2, 3 }) TestModels.AssertClose(sdPlain[i], sdSplit![i], 1e-5, $"SD entry {i} untouched");
    }

    [Fact]
    public void AnSdResnetWithAnOutputScale_GivesShortcutOverScale()
    {
        using var _ = no_grad();
        using var gen = new Generator(13);
        var sd = new ResnetBlock2D(8, 8, 16, 2, 1e-6, "silu", outputScaleFactor: 2);
        foreach (var p in sd.parameters()) p.copy_(randn(p.shape, generator: gen) * 0.2);
        sd.eval();
        var x = randn(new long[] { 2, 8, 4, 4 }, generator: gen);
        var emb = randn(new long[] { 2, 16 }, generator: gen);
        TestModels.AssertClose(x[1] / 2, sd.Forward(x, emb, [1])[1], 1e-6, "identity shortcut / output_scale_factor");
        TestModels.AssertBitwiseEqual(sd.Forward(x, emb)[0], sd.Forward(x, emb, [1])[0], "entry 0");
    }
}
