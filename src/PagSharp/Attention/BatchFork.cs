using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// The batch bookkeeping of a shared-prefix fork (<see cref="PerturbationPlan.ForkSource"/>) during one forward call:
/// at the fork point the batch gets copies of the source entries appended; per-entry tensors made before the fork
/// (skip connections, embeddings, conditioning) are widened the same way when they are used afterwards.
/// </summary>
public sealed class BatchFork : IDisposable
{
    private readonly long[]? _source;
    private Tensor? _index;

    private readonly bool _splitSkips;

    /// <param name="plan">The call's plan; no fork without a <see cref="PerturbationPlan.ForkSource"/>.</param>
    /// <param name="splitSkips">Let decoder blocks compute the part that depends only on a pre-fork skip once (<see cref="CanShareSkip"/>).</param>
    public BatchFork(PerturbationPlan? plan, bool splitSkips = false)
    {
        _source = plan?.ForkSource;
        _splitSkips = splitSkips;
        if (_source is { Length: > 0 } s && s.Select((v, i) => v - i).Distinct().Count() == 1) _sourceStart = s[0];
    }

    /// <summary>The first source entry when the source entries are consecutive (the usual case: all, or the conditional block).</summary>
    private readonly long? _sourceStart;

    public bool HasForked => _index is not null;
    /// <summary>Batch size before the fork.</summary>
    public long BatchBeforeFork { get; private set; }
    /// <summary>Number of appended copies.</summary>
    public long Copies => _source?.Length ?? 0;

    /// <summary>Forks <paramref name="h"/>: remembers its batch size and returns it with the copies appended.</summary>
    public Tensor Fork(Tensor h)
    {
        if (_source is null) throw new InvalidOperationException("the plan has no fork");
        BatchBeforeFork = h.shape[0];
        _index = tensor(_source, device: h.device).DetachFromDisposeScope();
        return Append(h);
    }

    /// <summary><paramref name="t"/> with the fork's copies of its entries appended (after <see cref="Fork"/>).</summary>
    public Tensor Append(Tensor t)
    {
        using var copies = t.index_select(0, _index!);
        return cat(new[] { t, copies }, 0);
    }

    /// <summary>A tensor of the pre-fork batch widened to the forked batch; any other tensor unchanged.</summary>
    public Tensor Widen(Tensor t) => _index is null || t.shape[0] != BatchBeforeFork ? t : Append(t);

    /// <summary>
    /// <paramref name="target"/> (forked batch) += <see cref="Widen"/>(<paramref name="preFork"/>), in place and without
    /// the widened copy: the pre-fork entries are added to the first rows and the source entries to the appended ones.
    /// </summary>
    public Tensor AddWidened(Tensor target, Tensor preFork)
    {
        long b = BatchBeforeFork, n = Copies;
        using (var head = target.narrow(0, 0, b)) head.add_(preFork);
        using var tail = target.narrow(0, b, n);
        using var src = _sourceStart is { } a ? preFork.narrow(0, a, n) : preFork.index_select(0, _index!);
        tail.add_(src);
        return target;
    }

    /// <summary>
    /// True when a decoder block normalising cat([h, skip]) could compute its skip-only part once: skip splitting is
    /// on, <paramref name="skip"/> was stored before the fork and <paramref name="h"/> comes after it. Whether that
    /// pays is the network's cost decision (<c>Models.SplitSkip.Shares</c>).
    /// </summary>
    public bool CanShareSkip(Tensor h, Tensor skip) =>
        _splitSkips && HasForked && skip.shape[0] == BatchBeforeFork && h.shape[0] == BatchBeforeFork + Copies;

    public void Dispose() => _index?.Dispose();
}
