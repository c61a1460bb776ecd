using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// For one forward call: which attention layers are perturbed, with which policy, for which batch entries; and which
/// layers should hand out their (unperturbed) attention maps. Attention blocks ask the plan; the network itself has
/// no notion of PAG, SAG or any ablation.
/// </summary>
public sealed class PerturbationPlan
{
    private readonly Dictionary<string, List<Entry>> _entries = new(StringComparer.Ordinal);
    private readonly HashSet<string> _capture = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Tensor> _captured = new(StringComparer.Ordinal);

    /// <summary>One perturbed layer: the policy and the batch entries it applies to (null = all entries).</summary>
    public sealed record Entry(IAttentionPerturbation Policy, long[]? BatchIndices);

    /// <summary>Random source handed to stochastic policies.</summary>
    public Generator? Generator { get; init; }

    /// <summary>
    /// Shared-prefix fork (null = none): the network runs the batch it was given up to the first perturbed layer,
    /// then appends copies of these batch entries (in this order) and continues with the larger batch. Skip
    /// connections stored before the fork are shared the same way. Perturbations address the enlarged batch, so the
    /// copies are the entries [B, B + ForkSource.Length). The result equals running the copies as separate batch
    /// entries from the start, at the cost of one prefix.
    /// </summary>
    public long[]? ForkSource { get; init; }

    /// <summary>A plan that perturbs <paramref name="layers"/> with <paramref name="policy"/> on the given batch entries (null = all).</summary>
    public static PerturbationPlan Perturb(IEnumerable<string> layers, IAttentionPerturbation policy, long[]? batchIndices = null,
                                           Generator? generator = null, long[]? forkSource = null)
    {
        var plan = new PerturbationPlan { Generator = generator, ForkSource = forkSource };
        foreach (var l in layers) plan.Add(l, policy, batchIndices);
        return plan;
    }

    /// <summary>
    /// Perturbs <paramref name="layer"/> with <paramref name="policy"/> on the given entries (null = all). Several
    /// entries for one layer (one per guidance branch: PAG, SEG, SLG, …) must name disjoint batch entries.
    /// </summary>
    public PerturbationPlan Add(string layer, IAttentionPerturbation policy, long[]? batchIndices = null)
    {
        if (!_entries.TryGetValue(layer, out var list)) _entries[layer] = list = new List<Entry>();
        if (list.Count > 0 && (batchIndices is null || list.Any(e => e.BatchIndices is null || e.BatchIndices.Intersect(batchIndices).Any())))
            throw new PagSharpException($"layer '{layer}' is perturbed twice on the same batch entries");
        list.Add(new Entry(policy, batchIndices));
        return this;
    }

    /// <summary>Every perturbation of <paramref name="layer"/> (empty when it is not perturbed).</summary>
    public IReadOnlyList<Entry> EntriesOf(string layer) => _entries.TryGetValue(layer, out var list) ? list : [];

    /// <summary>Ask <paramref name="layer"/> to store its softmax attention map ([B, heads, T, T]) during the call.</summary>
    public PerturbationPlan Capture(string layer)
    {
        _capture.Add(layer);
        return this;
    }

    /// <summary>
    /// The perturbations of <paramref name="layer"/> its attention applies: <see cref="EntriesOf"/> without the
    /// ResBlock skips (<see cref="SkipTarget.ResBlock"/>), which leave the attention itself alone.
    /// </summary>
    public IReadOnlyList<Entry> AttentionEntriesOf(string layer)
    {
        var all = EntriesOf(layer);
        return all.Any(e => IsResBlockSkip(e.Policy)) ? all.Where(e => !IsResBlockSkip(e.Policy)).ToList() : all;
    }

    /// <summary>
    /// The batch entries (of <paramref name="batch"/>) for which <paramref name="layer"/> is skipped
    /// (<see cref="SkipPerturbation"/> on the attention or the whole block), or null when it is not.
    /// </summary>
    public long[]? SkippedEntries(string layer, long batch) => Skipped([layer], batch, t => t != SkipTarget.ResBlock);

    /// <summary>
    /// The batch entries for which the whole transformer block of <paramref name="layer"/> is skipped
    /// (<see cref="SkipPerturbation.Block"/>), or null when it is not.
    /// </summary>
    public long[]? SkippedBlockEntries(string layer, long batch) => Skipped([layer], batch, t => t == SkipTarget.Block);

    /// <summary>
    /// The batch entries for which the ResBlock feeding <paramref name="attentionLayer"/> is skipped
    /// (<see cref="SkipPerturbation.ResBlock"/>), or null when it is not.
    /// </summary>
    public long[]? SkippedResBlockEntries(string attentionLayer, long batch) => SkippedResBlockEntries([attentionLayer], batch);

    /// <summary>
    /// The batch entries for which the ResBlock feeding any of <paramref name="attentionLayers"/> (the self-attention
    /// layers of one attention module, which one ResBlock feeds) is skipped, each entry once; null when none is.
    /// </summary>
    public long[]? SkippedResBlockEntries(IEnumerable<string> attentionLayers, long batch) => Skipped(attentionLayers, batch, t => t == SkipTarget.ResBlock);

    /// <summary>Whether the ResBlock feeding any of <paramref name="attentionLayers"/> is skipped on some entries (before the batch is known, e.g. to fork ahead of it).</summary>
    public bool SkipsResBlockOf(IEnumerable<string> attentionLayers) => attentionLayers.Any(l => EntriesOf(l).Any(e => IsResBlockSkip(e.Policy)));

    private static bool IsResBlockSkip(IAttentionPerturbation p) => p is SkipPerturbation { Target: SkipTarget.ResBlock };

    private long[]? Skipped(IEnumerable<string> layers, long batch, Func<SkipTarget, bool> which)
    {
        var skips = layers.SelectMany(EntriesOf).Where(e => e.Policy is SkipPerturbation s && which(s.Target)).ToList();
        if (skips.Count == 0) return null;
        return skips.SelectMany(e => e.BatchIndices ?? Enumerable.Range(0, (int)batch).Select(i => (long)i)).Distinct().Order().ToArray();
    }

    public bool IsEmpty => _entries.Count == 0 && _capture.Count == 0;
    public IReadOnlyCollection<string> PerturbedLayers => _entries.Keys;
    /// <summary>The first perturbation of <paramref name="layer"/>; false when it is not perturbed.</summary>
    public bool TryGet(string layer, out Entry entry)
    {
        entry = _entries.TryGetValue(layer, out var list) && list.Count > 0 ? list[0] : null!;
        return entry is not null;
    }
    public bool WantsCapture(string layer) => _capture.Contains(layer);

    internal void Store(string layer, Tensor map)
    {
        if (_captured.Remove(layer, out var old)) old.Dispose();
        _captured[layer] = map.DetachFromDisposeScope();
    }

    /// <summary>The attention map captured at <paramref name="layer"/>; ownership passes to the caller.</summary>
    public Tensor TakeCaptured(string layer) =>
        _captured.Remove(layer, out var t) ? t : throw new PagSharpException($"no attention map was captured at layer '{layer}'");
}
