using System.Text.RegularExpressions;

namespace PagSharp.Models.Sd;

/// <summary>
/// The key names of the original (LDM / SGM) single-file checkpoints for each diffusers key of our modules — the
/// inverse of diffusers' <c>convert_ldm_unet_checkpoint</c>, <c>convert_ldm_vae_checkpoint</c> and
/// <c>convert_ldm_clip_checkpoint</c> (the OpenCLIP encoders, whose tensors are also reshaped, are mapped in
/// <see cref="SdSingleFile"/>). Names are relative to the component prefix (<c>model.diffusion_model.</c>,
/// <c>first_stage_model.</c>, <c>cond_stage_model.transformer.</c>, …).
/// </summary>
public static partial class LdmKeys
{
    /// <summary>A diffusers resnet sub-key in LDM naming (norm1 → in_layers.0, conv1 → in_layers.2, …).</summary>
    private static string Resnet(string rest) => rest
        .Replace("norm1.", "in_layers.0.", StringComparison.Ordinal)
        .Replace("conv1.", "in_layers.2.", StringComparison.Ordinal)
        .Replace("norm2.", "out_layers.0.", StringComparison.Ordinal)
        .Replace("conv2.", "out_layers.3.", StringComparison.Ordinal)
        .Replace("time_emb_proj.", "emb_layers.1.", StringComparison.Ordinal)
        .Replace("conv_shortcut.", "skip_connection.", StringComparison.Ordinal);

    /// <summary>
    /// The LDM name of a UNet parameter: input_blocks.(1 + b·(L+1) + j) for down block b's j-th resnet (.0) and
    /// attention (.1), its downsampler at j = L (.0.op); middle_block.0/1/2; output_blocks.(b·(L+1) + j), the
    /// upsampler at .1.conv (.2.conv when the block has attention); time_embed.0/2, label_emb.0.0/0.2 (SDXL's
    /// add_embedding), out.0/2. LDM U-Nets have the same number of resnets per level (L = layers_per_block).
    /// </summary>
    public static string Unet(string key, SdUNetConfig cfg) => Unet(key, cfg.LayersPerBlock, cfg.UpBlockTypes);

    /// <summary>
    /// <see cref="Unet(string, SdUNetConfig)"/> from the two settings it needs: <paramref name="layersPerBlock"/>
    /// (one value per level) and <paramref name="upBlockTypes"/> (where the upsampler sits; empty for an encoder
    /// only, such as a ControlNet).
    /// </summary>
    public static string Unet(string key, IReadOnlyList<int> layersPerBlock, IReadOnlyList<string> upBlockTypes)
    {
        int l = layersPerBlock[0];
        if (layersPerBlock.Any(v => v != l))
            throw new PagSharpException($"layers_per_block [{string.Join(", ", layersPerBlock)}] differs between levels; original (LDM) checkpoints have one value");
        Match m;
        if ((m = UnetRe().Match(key)).Success)
        {
            string kind = m.Groups["kind"].Value, rest = m.Groups["rest"].Value;
            int b = int.Parse(m.Groups["b"].Value, System.Globalization.CultureInfo.InvariantCulture);
            int j = m.Groups["j"].Success ? int.Parse(m.Groups["j"].Value, System.Globalization.CultureInfo.InvariantCulture) : 0;
            bool down = m.Groups["side"].Value == "down";
            int baseIndex = down ? 1 + b * (l + 1) : b * (l + 1);
            string blocks = down ? "input_blocks" : "output_blocks";
            return kind switch
            {
                "resnets" => $"{blocks}.{baseIndex + j}.0.{Resnet(rest)}",
                "attentions" => $"{blocks}.{baseIndex + j}.1.{rest}",
                "downsamplers" => $"input_blocks.{baseIndex + l}.0.op.{rest[(rest.IndexOf('.') + 1)..]}",
                _ => b < upBlockTypes.Count
                    ? $"output_blocks.{baseIndex + l}.{(upBlockTypes[b] == "CrossAttnUpBlock2D" ? 2 : 1)}.{rest}"
                    : throw new PagSharpException($"UNet key '{key}': up block {b} is not in the config"),
            };
        }
        if ((m = MidRe().Match(key)).Success)
            return m.Groups["kind"].Value == "resnets"
                ? $"middle_block.{2 * int.Parse(m.Groups["j"].Value, System.Globalization.CultureInfo.InvariantCulture)}.{Resnet(m.Groups["rest"].Value)}"
                : $"middle_block.1.{m.Groups["rest"].Value}";
        foreach (var (from, to) in UnetTop)
            if (key.StartsWith(from, StringComparison.Ordinal)) return to + key[from.Length..];
        throw new PagSharpException($"UNet key '{key}' has no original (LDM) name");
    }

    private static readonly (string From, string To)[] UnetTop =
    [
        ("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
        ("add_embedding.linear_1.", "label_emb.0.0."), ("add_embedding.linear_2.", "label_emb.0.2."),
        ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
    ];

    [GeneratedRegex(@"^(?<side>down|up)_blocks\.(?<b>\d+)\.(?<kind>resnets|attentions|downsamplers|upsamplers)\.(?:(?<j>\d+)\.)?(?<rest>.*)$")]
    private static partial Regex UnetRe();

    [GeneratedRegex(@"^mid_block\.(?<kind>resnets|attentions)\.(?<j>\d+)\.(?<rest>.*)$")]
    private static partial Regex MidRe();

    /// <summary>
    /// The original (lllyasviel/ControlNet <c>cldm</c>) name of a ControlNet parameter — the inverse of diffusers'
    /// <c>convert_controlnet_checkpoint</c>: <c>controlnet_cond_embedding.conv_in</c> → <c>input_hint_block.0</c>,
    /// <c>.blocks.i</c> → <c>input_hint_block.(2i+2)</c>, <c>.conv_out</c> → <c>input_hint_block.14</c> (diffusers'
    /// fixed index: cldm's hint block always has 3 levels, i.e. 6 blocks), <c>controlnet_down_blocks.i</c> →
    /// <c>zero_convs.i.0</c>, <c>controlnet_mid_block</c> → <c>middle_block_out.0</c>; time embedding, conv_in, down
    /// and mid blocks as the UNet's encoder (<see cref="Unet(string, IReadOnlyList{int}, IReadOnlyList{string})"/>).
    /// </summary>
    public static string ControlNet(string key, ControlNetConfig cfg)
    {
        const string emb = "controlnet_cond_embedding.";
        if (key.StartsWith(emb, StringComparison.Ordinal))
        {
            string rest = key[emb.Length..];
            if (rest.StartsWith("conv_in.", StringComparison.Ordinal)) return "input_hint_block.0." + rest["conv_in.".Length..];
            if (rest.StartsWith("conv_out.", StringComparison.Ordinal)) return $"input_hint_block.{HintConvOut}." + rest["conv_out.".Length..];
            if (rest.StartsWith("blocks.", StringComparison.Ordinal))
            {
                string r = rest["blocks.".Length..];
                int dot = r.IndexOf('.');
                int i = int.Parse(r[..dot], System.Globalization.CultureInfo.InvariantCulture);
                if (2 * i + 2 >= HintConvOut)
                    throw new PagSharpException($"ControlNet key '{key}': original (cldm) checkpoints have at most {HintConvOut / 2 - 1} conditioning-embedding blocks (conditioning_embedding_out_channels of up to 4 entries)");
                return $"input_hint_block.{2 * i + 2}.{r[(dot + 1)..]}";
            }
        }
        if (key.StartsWith("controlnet_down_blocks.", StringComparison.Ordinal))
        {
            string r = key["controlnet_down_blocks.".Length..];
            int dot = r.IndexOf('.');
            return $"zero_convs.{r[..dot]}.0.{r[(dot + 1)..]}";
        }
        if (key.StartsWith("controlnet_mid_block.", StringComparison.Ordinal)) return "middle_block_out.0." + key["controlnet_mid_block.".Length..];
        return Unet(key, cfg.LayersPerBlock, []);
    }

    /// <summary>The index of the conditioning embedding's last conv in cldm's <c>input_hint_block</c> (diffusers reads it there).</summary>
    public const int HintConvOut = 14;

    /// <summary>
    /// The LDM name of a VAE parameter (<paramref name="levels"/> = number of blocks): encoder.down.i.block.j /
    /// .downsample.conv, decoder.up.(levels−1−i).block.j / .upsample.conv (LDM numbers the decoder from the lowest
    /// resolution up), mid.block_1/attn_1/block_2 with norm/q/k/v/proj_out, norm_out, nin_shortcut. The
    /// mid-attention weights are 1×1 convolutions there (<see cref="VaeIsConv1x1"/>).
    /// </summary>
    public static string Vae(string key, int levels)
    {
        Match m;
        if ((m = VaeBlockRe().Match(key)).Success)
        {
            int i = int.Parse(m.Groups["i"].Value, System.Globalization.CultureInfo.InvariantCulture);
            string part = m.Groups["part"].Value, rest = m.Groups["rest"].Value.Replace("conv_shortcut.", "nin_shortcut.", StringComparison.Ordinal);
            bool enc = m.Groups["coder"].Value == "encoder";
            string level = enc ? $"encoder.down.{i}" : $"decoder.up.{levels - 1 - i}";
            return part switch
            {
                "resnets" => $"{level}.block.{rest}",
                "downsamplers" => $"{level}.downsample.{rest[(rest.IndexOf('.') + 1)..]}",
                _ => $"{level}.upsample.{rest[(rest.IndexOf('.') + 1)..]}",
            };
        }
        if ((m = VaeMidRe().Match(key)).Success)
        {
            string coder = m.Groups["coder"].Value, rest = m.Groups["rest"].Value;
            if (m.Groups["kind"].Value == "resnets")
                return $"{coder}.mid.block_{int.Parse(m.Groups["j"].Value, System.Globalization.CultureInfo.InvariantCulture) + 1}.{rest.Replace("conv_shortcut.", "nin_shortcut.", StringComparison.Ordinal)}";
            foreach (var (from, to) in VaeAttention)
                if (rest.StartsWith(from, StringComparison.Ordinal)) return $"{coder}.mid.attn_1.{to}{rest[from.Length..]}";
        }
        if (key.StartsWith("encoder.conv_norm_out.", StringComparison.Ordinal)) return "encoder.norm_out." + key["encoder.conv_norm_out.".Length..];
        if (key.StartsWith("decoder.conv_norm_out.", StringComparison.Ordinal)) return "decoder.norm_out." + key["decoder.conv_norm_out.".Length..];
        return key; // conv_in, conv_out, quant_conv, post_quant_conv
    }

    /// <summary>Whether the LDM tensor of this VAE key is a 1×1 convolution where diffusers has a linear layer.</summary>
    public static bool VaeIsConv1x1(string key) => key.Contains(".mid_block.attentions.0.", StringComparison.Ordinal)
        && key.EndsWith(".weight", StringComparison.Ordinal) && !key.Contains("group_norm", StringComparison.Ordinal);

    private static readonly (string From, string To)[] VaeAttention =
        [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")];

    [GeneratedRegex(@"^(?<coder>encoder|decoder)\.(?:down|up)_blocks\.(?<i>\d+)\.(?<part>resnets|downsamplers|upsamplers)\.(?<rest>.*)$")]
    private static partial Regex VaeBlockRe();

    [GeneratedRegex(@"^(?<coder>encoder|decoder)\.mid_block\.(?<kind>resnets|attentions)\.(?<j>\d+)\.(?<rest>.*)$")]
    private static partial Regex VaeMidRe();
}
