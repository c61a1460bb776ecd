using TorchSharp.Modules;

namespace PagSharp.Models.Adm;

/// <summary>
/// Multiply-adds (MACs) of one <see cref="AdmUNet"/> forward call as PagSharp executes it: every convolution and
/// linear layer, and the two products of attention (QKᵀ and the map times V). GroupNorm, SiLU, softmax, resampling
/// and additions are a few operations per activation and are not counted. The count follows the executed work: a
/// shared-prefix fork (<see cref="Attention.PerturbationPlan.ForkSource"/>) runs the copies only from the first
/// perturbed layer on, split skips (<see cref="AdmUNet.SplitSkips"/>, <see cref="SplitSkip.Pays"/>) compute the skip-only
/// part of a decoder block once, and identity-perturbed entries form no attention products. The ratio of two counts is
/// the ratio of the work two configurations do; time ratios differ from it only as far as the CPU runs the parts of a
/// pass at different speeds.
/// </summary>
public static class AdmCost
{
    /// <summary>Multiply-adds of <paramref name="call"/> on <paramref name="net"/> (with its current <see cref="AdmUNet.SplitSkips"/>).</summary>
    public static long Forward(AdmUNet net, MacCall call)
    {
        long b = call.Batch, f = call.Copies;
        var (perturbed, fork) = call.Resolve(net.AttentionLayers);

        var (first, second, outConv) = net.Ends;
        long total = b * (Macs.Linear(first) + Macs.Linear(second));  // embeddings are made before any fork
        bool forked = false;
        long n = b;  // entries at the current point of the pass
        long r = net.Config.ImageSize, ch = 0;
        var skips = new Stack<(long Channels, bool PreFork)>();
        foreach (var (path, block) in net.Blocks)
        {
            bool encoder = path.StartsWith("input_blocks", StringComparison.Ordinal), decoder = path.StartsWith("output_blocks", StringComparison.Ordinal);
            var skip = decoder ? skips.Pop() : default;
            for (int i = 0; i < block.Layers.Count; i++)
                switch (block.Layers[i])
                {
                    case Conv2d conv:
                        total += n * Macs.Conv(conv, r, r);
                        ch = conv.weight!.shape[0];
                        break;
                    case ResBlock res:
                        long rOut = res.Resample switch { -1 => r / 2, 1 => r * 2, _ => r };
                        long perEntry = Macs.Conv(res.InConv, rOut, rOut) + Macs.Conv(res.SkipConv, rOut, rOut) + Macs.Conv(res.OutConv, rOut, rOut) + Macs.Linear(res.EmbLinear);
                        total += n * perEntry;
                        // A decoder block after the fork whose skip was stored before it computes the skip-only part once.
                        if (i == 0 && decoder && forked && skip.PreFork && net.SplitSkips && res.Resample == 0)
                            total -= f * Macs.SharedSkipPart(res.InConv, res.SkipConv, skip.Channels, AdmNorm.Groups, rOut, rOut, b + f, b);
                        (r, ch) = (rOut, res.InConv.weight!.shape[0]);
                        break;
                    case AttentionBlock attn:
                        if (attn.Path == fork) { forked = true; n = b + f; }
                        long t = (long)attn.Resolution * attn.Resolution, c = attn.Channels;
                        long identity = perturbed.Contains(attn.Path) ? call.PerturbedEntries : 0;
                        total += n * 4 * c * c * t           // qkv (3C×C) and proj_out (C×C) per token
                               + (n - identity) * 2 * t * t * c;  // QKᵀ and (map)·V over all heads
                        break;
                    case Downsample down:
                        r /= 2;
                        total += n * Macs.Conv(down.Conv, r, r);
                        break;
                    case Upsample up:
                        r *= 2;
                        total += n * Macs.Conv(up.Conv, r, r);
                        break;
                    default:
                        throw new InvalidOperationException($"{path}: no cost rule for {block.Layers[i].GetType().Name}");
                }
            if (encoder) skips.Push((ch, !forked));  // every encoder block's output is a skip
        }
        return total + n * Macs.Conv(outConv, r, r);
    }
}
