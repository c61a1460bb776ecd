using PagSharp.IO;
namespace PagSharp.Models.Sd;

/// <summary>
/// Config checks shared by the two networks that build the SD encoder (UNet2DConditionModel and ControlNetModel):
/// keys that SD 1.x/2.x never set, and the shape of the down/mid blocks.
/// </summary>
internal static class SdEncoderChecks
{
    /// <summary>Keys of diffusers' encoder configs that must keep their defaults for SD 1.x/2.x.</summary>
    public static void RequireSdDefaults(JsonConfig c, string why, bool allowTextTime = false)
    {
        c.RequireDefault("class_embed_type", null, why);
        if (!allowTextTime) c.RequireDefault("addition_embed_type", null, why + " (SDXL does)");
        c.RequireDefault("num_class_embeds", null, why);
        c.RequireDefault("encoder_hid_dim", null, why);
        c.RequireDefault("encoder_hid_dim_type", null, why);
        c.RequireDefault("only_cross_attention", false, why);
    }

    /// <summary>
    /// Block types, channel counts (multiples of the GroupNorm groups), per-level layer counts, cross-attention widths
    /// and head splits; <paramref name="hasAttention"/> says whether level i holds attention.
    /// </summary>
    public static void ValidateEncoder(string source, string[] downBlockTypes, int[] blockOutChannels, string midBlockType, int normNumGroups,
                                       int[] layersPerBlock, int[] transformerLayersPerBlock, int[] crossAttentionDim, int[] attentionHeads,
                                       Func<int, bool> hasAttention)
    {
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        int n = downBlockTypes.Length;
        Require(n >= 1, "down_block_types is empty");
        Require(blockOutChannels.Length == n, $"block_out_channels has {blockOutChannels.Length} entries but down_block_types has {n}");
        foreach (var t in downBlockTypes)
            Require(t is "CrossAttnDownBlock2D" or "DownBlock2D", $"down block type '{t}' is not supported; valid: CrossAttnDownBlock2D, DownBlock2D");
        Require(midBlockType == "UNetMidBlock2DCrossAttn", $"mid_block_type '{midBlockType}' is not supported; valid: UNetMidBlock2DCrossAttn");
        Require(blockOutChannels.All(ch => ch > 0 && ch % normNumGroups == 0),
            $"every block_out_channels entry must be a positive multiple of norm_num_groups {normNumGroups} (got [{string.Join(", ", blockOutChannels)}])");
        for (int i = 0; i < n; i++)
        {
            Require(!hasAttention(i) || (attentionHeads[i] >= 1 && blockOutChannels[i] % attentionHeads[i] == 0),
                $"block {i}: {blockOutChannels[i]} channels cannot be split into attention_head_dim[{i}] = {attentionHeads[i]} heads");
            Require(layersPerBlock[i] >= 1, $"layers_per_block[{i}] must be ≥ 1");
            Require(transformerLayersPerBlock[i] >= 1, $"transformer_layers_per_block[{i}] must be ≥ 1");
            Require(crossAttentionDim[i] >= 1, $"cross_attention_dim[{i}] must be ≥ 1");
        }
        Require(crossAttentionDim.Distinct().Count() == 1, "per-block cross_attention_dim values must be equal (one text encoder feeds every block)");
    }
}
