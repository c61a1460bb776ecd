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
    /// The batch entries (of <paramref name="batch"/>) for which <paramref name="layer"/> is skipped
    /// (<see cref="SkipPerturbation"/>), or null when it is not.
    /// </summary>
    public long[]? SkippedEntries(string layer, long batch) => Skipped(layer, batch, wholeBlockOnly: false);

    /// <summary>
    /// The batch entries for which the whole transformer block of <paramref name="layer"/> is skipped
    /// (<see cref="SkipPerturbation.Block"/>), or null when it is not.
    /// </summary>
    public long[]? SkippedBlockEntries(string layer, long batch) => Skipped(layer, batch, wholeBlockOnly: true);

    private long[]? Skipped(string layer, long batch, bool wholeBlockOnly)
    {
        var skips = EntriesOf(layer).Where(e => e.Policy is SkipPerturbation s && (s.WholeBlock || !wholeBlockOnly)).ToList();
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
