using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models;

/// <summary>
/// How a shared-prefix fork widens a tensor of the pre-fork batch: <see cref="Widen"/> returns the widened copy,
/// <see cref="AddWidened"/> adds it to a tensor of the forked batch in place (returning that tensor) without the copy.
/// </summary>
internal sealed record SkipWidening(Func<Tensor, Tensor> Widen, Func<Tensor, Tensor, Tensor> AddWidened)
{
    public static SkipWidening Of(Attention.BatchFork fork) => new(fork.Widen, fork.AddWidened);
}

/// <summary>
/// The first layers of a decoder ResBlock on cat([h, skip], 1) after a shared-prefix fork, where the skip still has
/// the pre-fork batch and <c>widen</c> appends the fork's copies (<see cref="SkipWidening"/>). Convolutions are linear in their input channels and
/// GroupNorm normalises each group of channels on its own, so every group made only of skip channels (all but at most
/// one group straddling h and the skip) is normalised, activated and convolved once, on the pre-fork batch, then
/// widened and added to the per-branch part. The results equal the concatenated computation up to float rounding.
/// </summary>
internal static class SplitSkip
{
    /// <summary>
    /// The one decision whether a decoder block computes its skip-only part once: the fork allows it
    /// (<see cref="Attention.BatchFork.CanShareSkip"/>) and it is expected to be faster (<see cref="Pays"/>).
    /// </summary>
    public static bool Shares(Attention.BatchFork fork, Tensor h, Tensor skip, long groups) =>
        fork.CanShareSkip(h, skip) && Pays(h.shape[1], skip.shape[1], groups, h.shape[0], skip.shape[0]);

    /// <summary>
    /// Whether splitting is expected to be faster than the concatenated computation for a block whose input is
    /// cat([h (<paramref name="hChannels"/>, forked batch), skip (<paramref name="skipChannels"/>, pre-fork batch)]).
    /// The first conv dominates the part that changes; oneDNN's blocked layouts round a conv's input channels up to a
    /// multiple of 16 on this CPU (AVX-512; measured: 66 input channels cost as much as 80), so the cost is counted in
    /// padded channels × batch. A straddling group adds its skip channels to the per-branch part (64 + 2 → 80), which
    /// can undo the saving; the split, with its extra calls, must save at least 10% to be taken.
    /// </summary>
    public static bool Pays(long hChannels, long skipChannels, long groups, long forkedBatch, long preForkBatch)
    {
        long total = hChannels + skipChannels;
        if (groups <= 0 || total % groups != 0) return false;
        long gs = total / groups, k = (hChannels + gs - 1) / gs * gs;
        if (k >= total) return false;
        static long Padded(long c) => (c + 15) / 16 * 16;
        double split = Padded(k) * (double)forkedBatch + Padded(total - k) * (double)preForkBatch;
        double plain = Padded(total) * (double)forkedBatch;
        return split <= 0.9 * plain;
    }

    /// <summary>
    /// conv(act(norm(cat([h, widen(skip)], 1)))) for a 3×3 "same" conv, or null when no group holds only skip
    /// channels (nothing to share).
    /// </summary>
    public static Tensor? NormActConv(Tensor h, Tensor skip, SkipWidening widen, GroupNorm norm, long groups, double eps,
                                      Func<Tensor, Tensor> act, Conv2d conv)
    {
        long ch = h.shape[1], total = ch + skip.shape[1], gs = total / groups;
        long k = (ch + gs - 1) / gs * gs;  // first channel of the first group made only of skip channels
        if (k >= total) return null;
        long mixed = k - ch;
        long pad = conv.weight!.shape[2] / 2;

        // Per branch: h plus the skip channels of the straddling group (if any). Temporaries are released as soon as
        // they are used, so this block's peak memory stays below that of the concatenated computation.
        Tensor perBranch;
        using (var a = mixed == 0 ? h.alias() : cat(new[] { h, widen.Widen(skip.narrow(1, 0, mixed)) }, 1))
        using (var na = functional.group_norm(a, k / gs, norm.weight!.narrow(0, 0, k), norm.bias!.narrow(0, 0, k), eps))
        using (var aa = act(na))
            perBranch = functional.conv2d(aa, conv.weight!.narrow(1, 0, k), conv.bias, padding: [pad, pad]);
        // Once, on the pre-fork batch: the groups of skip channels alone.
        using (var ns = functional.group_norm(skip.narrow(1, mixed, total - k), groups - k / gs, norm.weight!.narrow(0, k, total - k), norm.bias!.narrow(0, k, total - k), eps))
        using (var sa = act(ns))
        using (var shared = functional.conv2d(sa, conv.weight!.narrow(1, k, total - k), null, padding: [pad, pad]))
            return widen.AddWidened(perBranch, shared);
    }

    /// <summary>conv(cat([h, widen(skip)], 1)) for a "same" conv (the 1×1 or 3×3 skip connection / shortcut).</summary>
    public static Tensor Conv(Tensor h, Tensor skip, SkipWidening widen, Conv2d conv)
    {
        long ch = h.shape[1], pad = conv.weight!.shape[2] / 2;
        var result = functional.conv2d(h, conv.weight!.narrow(1, 0, ch), conv.bias, padding: [pad, pad]);
        using var shared = functional.conv2d(skip, conv.weight!.narrow(1, ch, skip.shape[1]), null, padding: [pad, pad]);
        return widen.AddWidened(result, shared);
    }
}
