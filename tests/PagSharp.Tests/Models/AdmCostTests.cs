using PagSharp.Models;
using PagSharp.Models.Adm;

namespace PagSharp.Tests.Models;

/// <summary>The multiply-add count against a count written out by hand for a small model.</summary>
public class AdmCostTests
{
    /// <summary>8×8, 1 channel, 32 model channels, mult (1, 2), one ResBlock per level, attention at 4×4, scale-shift norm.</summary>
    private static AdmUNet Small(bool splitSkips = true) => new(new AdmConfig
    {
        ImageSize = 8, InChannels = 1, NumChannels = 32, ChannelMult = "1,2", NumResBlocks = 1, AttentionResolutions = "4", NumHeads = 1,
    }) { SplitSkips = splitSkips };

    // Per sample, by block (k²·C_in·C_out·pixels per conv; linears in·out; attention 4·C²·T + 2·T²·C).
    private const long TimeEmbed = 32 * 128 + 128 * 128;
    private const long In0 = 9 * 1 * 32 * 64;
    private const long In1 = 2 * (9 * 32 * 32 * 64) + 128 * 64;                                  // ResBlock 32→32 at 8×8
    private const long In2 = 9 * 32 * 32 * 16;                                                  // stride-2 conv to 4×4
    private const long In3 = 9 * 32 * 64 * 16 + 9 * 64 * 64 * 16 + 128 * 128 + 32 * 64 * 16;   // ResBlock 32→64, 1×1 skip
    private const long AttnLinear = 4 * 64 * 64 * 16, AttnCore = 2 * 16 * 16 * 64;             // C 64, T 16
    private const long Mid = 2 * (9 * 64 * 64 * 16) + 128 * 128;                                // each middle ResBlock
    private const long Out0 = 9 * 128 * 64 * 16 + 128 * 64 * 16 + 9 * 64 * 64 * 16 + 128 * 128;  // cat 64+64 → 64
    private const long Out1 = 9 * 96 * 64 * 16 + 96 * 64 * 16 + 9 * 64 * 64 * 16 + 128 * 128;    // cat 64+32 → 64
    private const long Up = 9 * 64 * 64 * 64;                                                    // conv after ×2 upsampling
    private const long Out2 = 9 * 96 * 32 * 64 + 96 * 32 * 64 + 9 * 32 * 32 * 64 + 128 * 64;     // cat 64+32 → 32 at 8×8
    private const long Out3 = 9 * 64 * 32 * 64 + 64 * 32 * 64 + 9 * 32 * 32 * 64 + 128 * 64;     // cat 32+32 → 32
    private const long OutConv = 9 * 32 * 1 * 64;
    private const long Attn = AttnLinear + AttnCore;

    private const long None = TimeEmbed + In0 + In1 + In2 + In3 + Attn + Mid + Attn + Mid + Out0 + Attn + Out1 + Attn + Up + Out2 + Out3 + OutConv;

    // Split skips at batch 1 + 1 copy (SplitSkip.Pays): 64+64 and 32+32 split (skip-only groups: 64 and 32 channels);
    // 64+32 does not (groups of 3 straddle: 66 per-branch channels pad to 80, no saving).
    private const long Out0Shared = 64 * (9 * 64 * 16) + 64 * (64 * 16);
    private const long Out3Shared = 32 * (9 * 32 * 64) + 32 * (32 * 64);

    [Fact]
    public void UnguidedPassMatchesTheHandCount()
    {
        using var net = Small();
        Assert.Equal(16_236_544, None);
        Assert.Equal(None, AdmCost.Forward(net, new MacCall(1)));
        Assert.Equal(3 * None, AdmCost.Forward(net, new MacCall(3)));
    }

    [Fact]
    public void ForkAtTheMiddleRunsOnlyTheSuffixTwiceAndSharesSplitSkips()
    {
        using var net = Small();
        string[] mid = { "middle_block.1" };
        long suffix = AttnLinear + Mid + Out0 - Out0Shared + Attn + Out1 + Attn + Up + Out2 + Out3 - Out3Shared + OutConv;
        Assert.Equal(None + suffix, AdmCost.Forward(net, MacCall.GuidedStep(1, cfg: false, mid)));
        // CFG + PAG: two full branches plus the same suffix.
        Assert.Equal(2 * None + suffix, AdmCost.Forward(net, MacCall.GuidedStep(1, cfg: true, mid)));
        // Without split skips the copies pay the whole decoder.
        using var plain = Small(splitSkips: false);
        Assert.Equal(None + suffix + Out0Shared + Out3Shared, AdmCost.Forward(plain, MacCall.GuidedStep(1, cfg: false, mid)));
        // Naive: a full second pass whose middle attention forms no products.
        Assert.Equal(2 * None - AttnCore, AdmCost.Forward(net, MacCall.GuidedStep(1, cfg: false, mid, sharedPrefix: false)));
    }

    [Fact]
    public void ForkInTheEncoderLeavesLaterSkipsUnshared()
    {
        using var net = Small();
        string[] layers = { "input_blocks.3.1", "middle_block.1" };
        // From input_blocks.3.1 on; the skip of input_blocks.3 is made after the fork, so output_blocks.0 cannot split.
        long suffix = AttnLinear + Mid + AttnLinear + Mid + Out0 + Attn + Out1 + Attn + Up + Out2 + Out3 - Out3Shared + OutConv;
        Assert.Equal(None + suffix, AdmCost.Forward(net, MacCall.GuidedStep(1, cfg: false, layers)));
    }

    /// <summary>
    /// An outside check: DiT (Peebles &amp; Xie, 2023) lists ADM at 1120 Gflops for 256×256 and 1983 for 512×512, counted with
    /// fvcore, which also counts one multiply-add as one flop.
    /// </summary>
    [Theory]
    [InlineData("adm-256-uncond", 1120e9)]
    [InlineData("adm-512-cond", 1983e9)]
    public void OpenAiModelsMatchThePublishedCount(string preset, double published)
    {
        using var net = new AdmUNet(AdmPresets.Get(preset));
        Assert.InRange(AdmCost.Forward(net, new MacCall(1)) / published, 0.998, 1.002);
    }

    [Fact]
    public void LaterPerturbedLayersAreCheaperOnTheOpenAi256Model()
    {
        using var net = new AdmUNet(AdmPresets.Get("adm-256-uncond"));
        long none = AdmCost.Forward(net, new MacCall(1));
        var ratios = net.AttentionLayers.Select(l => (double)AdmCost.Forward(net, MacCall.GuidedStep(1, false, new[] { l.Name })) / none).ToArray();
        for (int i = 1; i < ratios.Length; i++) Assert.True(ratios[i] < ratios[i - 1], $"{net.AttentionLayers[i].Name}: {ratios[i]} ≥ {ratios[i - 1]}");
        // Everything from 32×32 upwards in the decoder runs twice: even the last attention layer costs half a pass.
        Assert.InRange(ratios[^1], 1.45, 1.55);
        Assert.InRange(ratios[0], 1.55, 1.65);
    }

    [Fact]
    public void BadCallsAreRejectedWithTheValidNames()
    {
        using var net = Small();
        var e = Assert.Throws<PagSharpException>(() => AdmCost.Forward(net, MacCall.GuidedStep(1, false, new[] { "middle_block.2" })));
        Assert.Contains("middle_block.1", e.Message);
        Assert.Throws<PagSharpException>(() => AdmCost.Forward(net, new MacCall(1, Copies: 1)));
        Assert.Throws<PagSharpException>(() => AdmCost.Forward(net, new MacCall(0)));
    }
}
