using TorchSharp.Modules;

namespace PagSharp.Models.Adm;

/// <summary>
/// Multiply-adds (MACs) of one <see cref="AdmUNet"/> forward call as PagSharp executes it: every convolution and
/// linear layer, and the two products of attention (QKᵀ and the map times V). GroupNorm, SiLU, softmax, resampling
/// and additions are a few operations per activation and are not counted. The count follows the executed work: a
/// shared-prefix fork (<see cref="Attention.PerturbationPlan.ForkSource"/>) runs the copies only from the first
/// perturbed layer on, split skips (<see cref="AdmUNet.SplitSkips"/>, <see cref="SplitSkip.Pays"/>) compute the skip-only
/// part of a decoder block once, and identity-perturbed entries form no attention products. Dividing two counts gives
/// the lower bound of a time ratio for a machine whose speed is proportional to multiply-adds.
/// </summary>
public static class AdmCost
{
    /// <summary>One forward call.</summary>
    /// <param name="Batch">Entries fed in.</param>
    /// <param name="PerturbedLayers">Layers with identity attention for <paramref name="PerturbedEntries"/> entries.</param>
    /// <param name="PerturbedEntries">How many entries those layers perturb (with a fork: the copies).</param>
    /// <param name="Copies">Shared-prefix fork: entries appended at the first perturbed layer (0 = no fork).</param>
    public sealed record Call(long Batch, IReadOnlyCollection<string>? PerturbedLayers = null, long PerturbedEntries = 0, long Copies = 0);

    /// <summary>
    /// The call <see cref="Guidance.GuidedDenoiser"/> makes for one step on <paramref name="batch"/> samples: branches
    /// [uncond if <paramref name="cfg"/>], cond, [perturbed if <paramref name="pagLayers"/> is non-empty], the perturbed
    /// one forked from the cond entries when <paramref name="sharedPrefix"/>, else fed in as a full branch.
    /// </summary>
    public static Call GuidedStep(long batch, bool cfg, IReadOnlyCollection<string>? pagLayers, bool sharedPrefix = true)
    {
        bool pag = pagLayers is { Count: > 0 };
        long branches = (cfg ? 2 : 1) + (pag && !sharedPrefix ? 1 : 0);
        return new Call(branches * batch, pag ? pagLayers : null, pag ? batch : 0, pag && sharedPrefix ? batch : 0);
    }

    /// <summary>Multiply-adds of <paramref name="call"/> on <paramref name="net"/> (with its current <see cref="AdmUNet.SplitSkips"/>).</summary>
    public static long Forward(AdmUNet net, Call call)
    {
        long b = call.Batch, f = call.Copies;
        if (b < 1 || f < 0 || call.PerturbedEntries < 0)
            throw new PagSharpException($"invalid call: batch {b}, copies {f}, perturbed entries {call.PerturbedEntries}");
        var perturbed = new HashSet<string>(call.PerturbedLayers ?? Array.Empty<string>(), StringComparer.Ordinal);
        foreach (var l in perturbed)
            if (!net.AttentionLayers.Any(a => a.Name == l))
                throw new PagSharpException($"'{l}' is not an attention layer of this model; valid: {string.Join(", ", net.AttentionLayers.Select(a => a.Name))}");
        string? fork = f == 0 ? null
            : net.AttentionLayers.FirstOrDefault(a => perturbed.Contains(a.Name))?.Name
              ?? throw new PagSharpException("a shared-prefix fork needs at least one perturbed layer");
        if (call.PerturbedEntries > b + f)
            throw new PagSharpException($"{call.PerturbedEntries} perturbed entries exceed the batch of {b + f}");

        var (first, second, outConv) = net.Ends;
        long total = b * (LinearMacs(first) + LinearMacs(second));  // embeddings are made before any fork
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
                        total += n * ConvMacs(conv, r);
                        ch = conv.weight!.shape[0];
                        break;
                    case ResBlock res:
                        long rOut = res.Resample switch { -1 => r / 2, 1 => r * 2, _ => r };
                        long cin = res.InConv.weight!.shape[1], cout = res.InConv.weight!.shape[0];
                        long perEntry = ConvMacs(res.InConv, rOut) + ConvMacs(res.SkipConv, rOut) + ConvMacs(res.OutConv, rOut) + LinearMacs(res.EmbLinear);
                        // Decoder block after the fork whose skip was stored before it: the skip-only channel groups of the
                        // first conv and the skip's slice of the skip connection run on the pre-fork batch only.
                        if (i == 0 && decoder && forked && skip.PreFork && net.SplitSkips && res.Resample == 0 && res.SkipConv is not null
                            && SplitSkip.Pays(cin - skip.Channels, skip.Channels, AdmNorm.Groups, b + f, b))
                        {
                            long gs = cin / AdmNorm.Groups, k = (cin - skip.Channels + gs - 1) / gs * gs;
                            long inConvPerChannel = ConvMacs(res.InConv, rOut) / cin, skipConvPerChannel = ConvMacs(res.SkipConv, rOut) / cin;
                            long skipOnly = (cin - k) * inConvPerChannel + skip.Channels * skipConvPerChannel;
                            total += n * perEntry - f * skipOnly;
                        }
                        else total += n * perEntry;
                        (r, ch) = (rOut, cout);
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
                        total += n * ConvMacs(down.Conv, r);
                        break;
                    case Upsample up:
                        r *= 2;
                        total += n * ConvMacs(up.Conv, r);
                        break;
                    default:
                        throw new InvalidOperationException($"{path}: no cost rule for {block.Layers[i].GetType().Name}");
                }
            if (encoder) skips.Push((ch, !forked));  // every encoder block's output is a skip
        }
        return total + n * ConvMacs(outConv, r);
    }

    /// <summary>A "same"-padded conv producing a <paramref name="resolution"/>² map: k²·C_in·C_out per output pixel.</summary>
    private static long ConvMacs(Conv2d? conv, long resolution)
    {
        if (conv is null) return 0;
        var w = conv.weight!.shape;  // [C_out, C_in, kh, kw]
        return w[0] * w[1] * w[2] * w[3] * resolution * resolution;
    }

    private static long LinearMacs(Linear linear) => linear.weight!.shape[0] * linear.weight!.shape[1];
}
