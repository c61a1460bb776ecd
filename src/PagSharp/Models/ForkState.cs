using PagSharp.Attention;
using static TorchSharp.torch;

namespace PagSharp.Models;

/// <summary>
/// Per-call state of a network forward with a shared-prefix fork, written once for every network: the embedding the
/// blocks receive, the plan, and the fork (<see cref="PerturbationPlan.ForkSource"/>). The network names its fork
/// point (the block where the first perturbed layer sits; before the ResBlock feeding it when skip-layer guidance
/// skips that ResBlock); there the batch, the embedding and any conditioning get
/// the fork's copies appended, and skip connections stored earlier are widened when they are used.
/// </summary>
public abstract class ForkState : IDisposable
{
    private readonly string? _forkAt;
    private protected readonly BatchFork Fork;

    private protected ForkState(Tensor emb, PerturbationPlan? plan, string? forkAt, bool splitSkips)
    {
        Emb = emb;
        Plan = plan;
        _forkAt = forkAt;
        Fork = new BatchFork(plan, splitSkips);
    }

    /// <summary>The embedding the blocks receive (widened at the fork).</summary>
    public Tensor Emb { get; private protected set; }
    public PerturbationPlan? Plan { get; }

    /// <summary>
    /// At the fork point <paramref name="path"/>: appends the copies to <paramref name="h"/> and the embedding (and,
    /// through <see cref="OnFork"/>, to what else the network conditions on). Elsewhere h unchanged.
    /// </summary>
    /// <param name="path">The block about to run.</param>
    /// <param name="h">Its input.</param>
    /// <param name="outlivesScope">The fork happens inside a dispose scope that ends before the call does: move the widened tensors out of it.</param>
    protected Tensor ForkAt(string path, Tensor h, bool outlivesScope)
    {
        if (Fork.HasForked || path != _forkAt) return h;
        var forked = Fork.Fork(h);
        var emb = Fork.Append(Emb);
        Emb = outlivesScope ? emb.MoveToOuterDisposeScope() : emb;
        OnFork(outlivesScope);
        return forked;
    }

    /// <summary>
    /// Before the ResBlock that feeds the attention module at fork point <paramref name="path"/> (holding the
    /// self-attention layers <paramref name="attentionLayers"/>): forks there when the plan skips that ResBlock on some
    /// entries (skip-layer guidance, <see cref="SkipTarget.ResBlock"/>), so the skipped copies exist when it runs.
    /// Otherwise (or away from the fork point) h unchanged: the fork stays at the attention module.
    /// </summary>
    protected Tensor ForkBeforeResBlock(string path, IEnumerable<string> attentionLayers, Tensor h, bool outlivesScope) =>
        Fork.HasForked || path != _forkAt || Plan is null || !Plan.SkipsResBlockOf(attentionLayers) ? h : ForkAt(path, h, outlivesScope);

    /// <summary>Widens whatever else the network's blocks read per entry (text conditioning, …) at the fork.</summary>
    private protected virtual void OnFork(bool outlivesScope) { }

    /// <summary>A tensor of the pre-fork batch (a skip connection) widened to the forked batch; any other tensor unchanged.</summary>
    public Tensor Widen(Tensor skip) => Fork.Widen(skip);

    /// <summary>Whether the block consuming <paramref name="skip"/> computes its skip-only part once (<see cref="SplitSkip.Shares"/>).</summary>
    public bool SharesSkip(Tensor h, Tensor skip, long groups) => SplitSkip.Shares(Fork, h, skip, groups);

    /// <summary>The fork's widening, for the blocks that split off their skip-only part.</summary>
    internal SkipWidening Widening => _widening ??= SkipWidening.Of(Fork);
    private SkipWidening? _widening;

    public void Dispose() => Fork.Dispose();
}
