using TorchSharp.Modules;

namespace PagSharp.Models.Sd;

/// <summary>
/// Multiply-adds (MACs) of one <see cref="SdUNet"/> forward call as PagSharp executes it, counted as
/// <see cref="Adm.AdmCost"/> counts the ADM U-Net: every convolution and linear layer (cross-attention keys and values
/// on the text tokens), the attention products (self: T² per channel, cross: T·S), the shared-prefix fork at the
/// Transformer2D holding the first perturbed layer, split skips in the up blocks, and no QKᵀ for identity-perturbed
/// entries. The text encoder, VAE and ControlNet are not part of it.
/// </summary>
public static class SdCost
{
    /// <summary>
    /// Multiply-adds of <paramref name="call"/> on <paramref name="unet"/> for latents of
    /// <paramref name="height"/>×<paramref name="width"/> (default: the config's sample_size, else 64) and
    /// <paramref name="textTokens"/> conditioning tokens (CLIP: 77).
    /// </summary>
    public static long Forward(SdUNet unet, MacCall call, int? height = null, int? width = null, int textTokens = 77)
    {
        long b = call.Batch, f = call.Copies;
        var (perturbed, forkLayer) = call.Resolve(unet.AttentionLayers);
        string? fork = forkLayer is null ? null : forkLayer[..forkLayer.IndexOf(".transformer_blocks.", StringComparison.Ordinal)];
        long hh = height ?? unet.Config.SampleSize ?? 64, ww = width ?? unet.Config.SampleSize ?? 64;
        if (hh < 1 || ww < 1 || textTokens < 1) throw new PagSharpException($"latent size {hh}×{ww} and {textTokens} text tokens must be positive");
        var (convIn, timeEmbedding, downs, mid, ups, convOut) = unet.Parts;
        bool forked = false;
        long n = b;

        long total = b * timeEmbedding.parameters().Where(p => p.dim() == 2).Sum(p => p.numel());
        total += b * Macs.Conv(convIn, hh, ww);
        var skips = new Stack<(long Channels, long H, long W, bool PreFork)>();
        skips.Push((convIn.weight!.shape[0], hh, ww, true));

        long Resnet(ResnetBlock2D r) =>
            r.parameters().Where(p => p.dim() == 4).Sum(p => p.numel()) * hh * ww + r.parameters().Where(p => p.dim() == 2).Sum(p => p.numel());
        long Transformer(Transformer2D t)
        {
            if (t.Path == fork) { forked = true; n = b + f; }
            long tokens = hh * ww, cost = 0;
            foreach (var (name, p) in t.named_parameters())
            {
                if (p.dim() < 2) continue;  // norms and biases
                bool onText = name.Contains(".attn2.to_k.", StringComparison.Ordinal) || name.Contains(".attn2.to_v.", StringComparison.Ordinal);
                cost += n * p.numel() * (onText ? textTokens : tokens);
            }
            foreach (var block in t.SelfAttentionPaths)
            {
                long inner = unet.AttentionLayers.First(l => l.Name == block).Channels;
                long identity = perturbed.Contains(block) ? call.PerturbedEntries : 0;
                cost += (n - identity) * 2 * tokens * tokens * inner;  // self-attention: QKᵀ and (map)·V
                cost += n * 2 * tokens * textTokens * inner;            // cross-attention
            }
            return cost;
        }

        foreach (var down in downs)
        {
            var (layers, sampler) = down.Parts;
            foreach (var (resnet, attention) in layers)
            {
                total += n * Resnet(resnet);
                if (attention is not null) total += Transformer(attention);
                skips.Push((resnet.InputConvs.Conv1.weight!.shape[0], hh, ww, !forked));
            }
            if (sampler is not null)
            {
                var (conv, padding) = sampler.Layout;
                long Out(long size) => padding == 0 ? (size + 1 - 3) / 2 + 1 : (size + 2 * padding - 3) / 2 + 1;
                (hh, ww) = (Out(hh), Out(ww));
                total += n * Macs.Conv(conv, hh, ww);
                skips.Push((conv.weight!.shape[0], hh, ww, !forked));
            }
        }
        var (first, pairs) = mid.Parts;
        total += n * Resnet(first);
        foreach (var (attention, resnet) in pairs) total += Transformer(attention) + n * Resnet(resnet);
        foreach (var up in ups)
        {
            var (layers, sampler) = up.Parts;
            foreach (var (resnet, attention) in layers)
            {
                var skip = skips.Pop();
                total += n * Resnet(resnet);
                var (conv1, shortcut) = resnet.InputConvs;
                if (forked && skip.PreFork && unet.SplitSkips)
                    total -= f * Macs.SharedSkipPart(conv1, shortcut, skip.Channels, resnet.Groups, hh, ww, b + f, b);
                if (attention is not null) total += Transformer(attention);
            }
            if (sampler is not null)
            {
                // Nearest upsampling to the next skip's size (×2 when the latents divide evenly), then a 3×3 conv.
                (hh, ww) = skips.Count > 0 ? (skips.Peek().H, skips.Peek().W) : (hh * 2, ww * 2);
                total += n * Macs.Conv(sampler.Conv, hh, ww);
            }
        }
        return total + n * Macs.Conv(convOut, hh, ww);
    }
}
