using PagSharp.Attention;
using TorchSharp.Modules;

namespace PagSharp.Models;

/// <summary>
/// One U-Net forward call, as a multiply-add count sees it (<see cref="Adm.AdmCost"/>, <see cref="Sd.SdCost"/>).
/// </summary>
/// <param name="Batch">Entries fed in.</param>
/// <param name="PerturbedLayers">Self-attention layers with identity attention (no QKᵀ) for <paramref name="PerturbedEntries"/> entries.</param>
/// <param name="PerturbedEntries">How many entries those layers perturb (with a fork: the copies).</param>
/// <param name="Copies">Shared-prefix fork: entries appended at the first perturbed layer (0 = no fork).</param>
public sealed record MacCall(long Batch, IReadOnlyCollection<string>? PerturbedLayers = null, long PerturbedEntries = 0, long Copies = 0)
{
    /// <summary>
    /// The call a guided step makes on <paramref name="batch"/> samples (<see cref="Guidance.GuidedDenoiser"/>, the SD
    /// pipeline): branches [uncond if <paramref name="cfg"/>], cond, [perturbed if <paramref name="pagLayers"/> is
    /// non-empty], the perturbed one forked from the cond entries when <paramref name="sharedPrefix"/>, else fed in as
    /// a full branch.
    /// </summary>
    public static MacCall GuidedStep(long batch, bool cfg, IReadOnlyCollection<string>? pagLayers, bool sharedPrefix = true)
    {
        bool pag = pagLayers is { Count: > 0 };
        long branches = (cfg ? 2 : 1) + (pag && !sharedPrefix ? 1 : 0);
        return new MacCall(branches * batch, pag ? pagLayers : null, pag ? batch : 0, pag && sharedPrefix ? batch : 0);
    }

    /// <summary>Checks the call against the network's self-attention layers; returns the perturbed set and the fork layer (or null).</summary>
    internal (HashSet<string> Perturbed, string? ForkLayer) Resolve(IReadOnlyList<Attention.AttentionLayerInfo> layers)
    {
        if (Batch < 1 || Copies < 0 || PerturbedEntries < 0 || PerturbedEntries > Batch + Copies)
            throw new PagSharpException($"invalid call: batch {Batch}, copies {Copies}, perturbed entries {PerturbedEntries}");
        var perturbed = new HashSet<string>(PerturbedLayers ?? Array.Empty<string>(), StringComparer.Ordinal);
        foreach (var l in perturbed)
            if (!layers.Any(a => a.Name == l))
                throw new PagSharpException($"'{l}' is not a self-attention layer of this model; valid: {string.Join(", ", layers.Select(a => a.Name))}");
        string? fork = Copies == 0 ? null
            : layers.FirstOrDefault(a => perturbed.Contains(a.Name))?.Name
              ?? throw new PagSharpException("a shared-prefix fork needs at least one perturbed layer");
        return (perturbed, fork);
    }
}

/// <summary>Multiply-add formulas shared by the U-Net counts.</summary>
internal static class Macs
{
    /// <summary>A conv producing an <paramref name="height"/>×<paramref name="width"/> map: k²·C_in·C_out per output pixel.</summary>
    public static long Conv(Conv2d? conv, long height, long width) => conv is null ? 0 : conv.weight!.numel() * height * width;

    /// <summary>A linear layer applied to <paramref name="tokens"/> vectors.</summary>
    public static long Linear(Linear linear, long tokens = 1) => linear.weight!.numel() * tokens;

    /// <summary>
    /// What each forked copy does not pay in a decoder block on cat([h, skip]) whose skip-only part is computed once
    /// (<see cref="SplitSkip"/>): the skip-only channel groups of the first conv and the skip's slice of the shortcut;
    /// 0 where the block does not split (no shortcut conv, or <see cref="SplitSkip.Pays"/> says no).
    /// </summary>
    public static long SharedSkipPart(Conv2d conv1, Conv2d? shortcut, long skipChannels, long groups, long height, long width, long forkedBatch, long preForkBatch)
    {
        long cin = conv1.weight!.shape[1];
        if (shortcut is null || !SplitSkip.Pays(cin - skipChannels, skipChannels, groups, forkedBatch, preForkBatch)) return 0;
        long gs = cin / groups, k = (cin - skipChannels + gs - 1) / gs * gs;  // first channel of the first skip-only group
        return (cin - k) * (Conv(conv1, height, width) / cin) + skipChannels * (Conv(shortcut, height, width) / cin);
    }
}
