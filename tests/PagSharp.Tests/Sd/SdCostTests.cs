using PagSharp.Models;
using PagSharp.Models.Sd;

namespace PagSharp.Tests.Sd;

/// <summary>The SD U-Net multiply-add count against a count written out by hand for a small UNet2DConditionModel.</summary>
public class SdCostTests
{
    /// <summary>
    /// block_out_channels (32, 64), one resnet per down block, CrossAttnDownBlock2D + DownBlock2D, UpBlock2D +
    /// CrossAttnUpBlock2D, 2 heads, cross_attention_dim 16, 8×8 latents, 3 text tokens.
    /// </summary>
    private static SdUNet Small(bool splitSkips = true) => new(new SdUNetConfig
    {
        SampleSize = 8, BlockOutChannels = new[] { 32, 64 }, LayersPerBlock = new[] { 1, 1 },
        DownBlockTypes = new[] { "CrossAttnDownBlock2D", "DownBlock2D" }, UpBlockTypes = new[] { "UpBlock2D", "CrossAttnUpBlock2D" },
        AttentionHeads = new[] { 2, 2 }, CrossAttentionDim = new[] { 16, 16 }, TransformerLayersPerBlock = new[] { 1, 1 },
    }) { SplitSkips = splitSkips };

    private const int Text = 3;

    /// <summary>A Transformer2D on C channels and T tokens: proj_in/out, attn1, attn2 (k, v on the 3 text tokens), GEGLU feed-forward.</summary>
    private static long Transformer(long c, long t, bool identity = false) =>
        2 * c * c * t                                      // proj_in, proj_out (1×1 convs)
        + 4 * c * c * t + (identity ? 0 : 2 * t * t * c)   // attn1: q, k, v, out; QKᵀ and map·V
        + 2 * c * c * t + 2 * 16 * c * Text + 2 * t * Text * c  // attn2: q, out; k, v on the text; products
        + c * 8 * c * t + 4 * c * c * t;                   // ff: GEGLU proj (C → 2·4C), out (4C → C)

    // P: latent pixels (64 at 8×8), Q: pixels after the downsampler (16 at 4×4).
    private const long Time = 32 * 128 + 128 * 128;
    private static long ConvIn(long p) => 9 * 4 * 32 * p;
    private static long Down0(long p) => 2 * (9 * 32 * 32 * p) + 128 * 32;                           // resnet 32→32
    private static long Downsampler(long q) => 9 * 32 * 32 * q;
    private static long Down1(long q) => 9 * 32 * 64 * q + 9 * 64 * 64 * q + 32 * 64 * q + 128 * 64;  // resnet 32→64, 1×1 shortcut
    private static long MidResnet(long q) => 2 * (9 * 64 * 64 * q) + 128 * 64;
    private static long Up0a(long q) => 9 * 128 * 64 * q + 9 * 64 * 64 * q + 128 * 64 * q + 128 * 64; // cat 64+64 → 64
    private static long Up0b(long q) => 9 * 96 * 64 * q + 9 * 64 * 64 * q + 96 * 64 * q + 128 * 64;   // cat 64+32 → 64
    private static long Upsampler(long p) => 9 * 64 * 64 * p;                                          // back to the skip's size
    private static long Up1a(long p) => 9 * 96 * 32 * p + 9 * 32 * 32 * p + 96 * 32 * p + 128 * 32;   // cat 64+32 → 32
    private static long Up1b(long p) => 9 * 64 * 32 * p + 9 * 32 * 32 * p + 64 * 32 * p + 128 * 32;   // cat 32+32 → 32
    private static long ConvOut(long p) => 9 * 32 * 4 * p;

    private static long NoneAt(long p, long q) => Time + ConvIn(p) + Down0(p) + Transformer(32, p) + Downsampler(q) + Down1(q)
        + MidResnet(q) + Transformer(64, q) + MidResnet(q) + Up0a(q) + Up0b(q) + Upsampler(p) + Up1a(p) + Transformer(32, p) + Up1b(p) + Transformer(32, p) + ConvOut(p);

    private static readonly long None = NoneAt(64, 16);

    // Split skips at batch 1 + 1 copy: 64+64 and 32+32 split; 64+32 does not (a group of 3 straddles: 66 → 80 padded).
    private const long Up0aShared = 64 * (9 * 64 * 16) + 64 * (64 * 16);
    private const long Up1bShared = 32 * (9 * 32 * 64) + 32 * (32 * 64);

    private const string Mid = "mid_block.attentions.0.transformer_blocks.0.attn1";

    [Fact]
    public void UnguidedPassMatchesTheHandCount()
    {
        using var unet = Small();
        Assert.Equal(None, SdCost.Forward(unet, new MacCall(1), textTokens: Text));
        Assert.Equal(2 * None, SdCost.Forward(unet, MacCall.GuidedStep(1, cfg: true, null), textTokens: Text));
    }

    [Fact]
    public void ForkAtTheMidBlockRunsTheSuffixOnceMore()
    {
        using var unet = Small();
        long suffix = Transformer(64, 16, identity: true) + MidResnet(16) + Up0a(16) - Up0aShared + Up0b(16) + Upsampler(64)
                      + Up1a(64) + Transformer(32, 64) + Up1b(64) - Up1bShared + Transformer(32, 64) + ConvOut(64);
        Assert.Equal(None + suffix, SdCost.Forward(unet, MacCall.GuidedStep(1, cfg: false, new[] { Mid }), textTokens: Text));
        Assert.Equal(2 * None + suffix, SdCost.Forward(unet, MacCall.GuidedStep(1, cfg: true, new[] { Mid }), textTokens: Text));
        using var plain = Small(splitSkips: false);
        Assert.Equal(None + suffix + Up0aShared + Up1bShared, SdCost.Forward(plain, MacCall.GuidedStep(1, cfg: false, new[] { Mid }), textTokens: Text));
        // diffusers' way: a third full branch whose mid self-attention forms no products.
        Assert.Equal(3 * None - 2 * 16 * 16 * 64, SdCost.Forward(unet, MacCall.GuidedStep(1, cfg: true, new[] { Mid }, sharedPrefix: false), textTokens: Text));
    }

    [Fact]
    public void ForkInTheFirstDownBlockLeavesItsSkipUnshared()
    {
        using var unet = Small();
        string first = "down_blocks.0.attentions.0.transformer_blocks.0.attn1";
        // From down_blocks.0.attentions.0 on: only the conv_in skip (consumed by the last resnet) was stored before the fork.
        long suffix = Transformer(32, 64, identity: true) + Downsampler(16) + Down1(16) + MidResnet(16) + Transformer(64, 16) + MidResnet(16)
                      + Up0a(16) + Up0b(16) + Upsampler(64) + Up1a(64) + Transformer(32, 64) + Up1b(64) - Up1bShared + Transformer(32, 64) + ConvOut(64);
        Assert.Equal(None + suffix, SdCost.Forward(unet, MacCall.GuidedStep(1, cfg: false, new[] { first }), textTokens: Text));
    }

    [Fact]
    public void LatentsThatDoNotHalveEvenlyUpsampleToTheSkipSize()
    {
        using var unet = Small();
        // 7×5 latents: 4×3 after the stride-2 conv (padding 1), and the upsampler goes back to the 7×5 skip.
        Assert.Equal(NoneAt(35, 12), SdCost.Forward(unet, new MacCall(1), 7, 5, Text));
    }

    [Fact]
    public void BadCallsAreRejected()
    {
        using var unet = Small();
        var e = Assert.Throws<PagSharpException>(() => SdCost.Forward(unet, MacCall.GuidedStep(1, false, new[] { "mid_block.attentions.0" })));
        Assert.Contains(Mid, e.Message);
        Assert.Throws<PagSharpException>(() => SdCost.Forward(unet, new MacCall(1), 0, 8));
    }
}
