using PagSharp.Attention;
using static TorchSharp.torch;

namespace PagSharp.Models.Sd;

/// <summary>
/// Per-call state of an SD U-Net forward: the time embedding, the text conditioning, the plan, and the shared-prefix
/// fork. The fork happens at the input of the <c>Transformer2DModel</c> that holds the first perturbed self-attention:
/// there the batch, the time embedding and the text conditioning get the <see cref="PerturbationPlan.ForkSource"/>
/// entries appended, and skip connections stored earlier are widened when they are used.
/// </summary>
internal sealed class SdForwardState : IDisposable
{
    private readonly string? _forkAt;
    private readonly BatchFork _fork;

    public SdForwardState(Tensor emb, Tensor context, PerturbationPlan? plan, string? forkAt, bool splitSkips = false)
    {
        Emb = emb;
        Context = context;
        Plan = plan;
        _forkAt = forkAt;
        _fork = new BatchFork(plan, splitSkips);
    }

    public Tensor Emb { get; private set; }
    public Tensor Context { get; private set; }
    public PerturbationPlan? Plan { get; }

    /// <summary>Called before each Transformer2D: at the fork point, appends the copies to h, the embedding and the context.</summary>
    public Tensor BeforeTransformer(string path, Tensor h)
    {
        if (_fork.HasForked || path != _forkAt) return h;
        var forked = _fork.Fork(h);
        Emb = _fork.Append(Emb);
        Context = _fork.Append(Context);
        return forked;
    }

    /// <summary>
    /// A ControlNet residual (batch of the input) made to fit <paramref name="target"/>: unchanged when the batches
    /// agree, widened with the fork's copies when the target lies after the fork. Shapes must otherwise match.
    /// </summary>
    public Tensor WidenResidual(Tensor residual, Tensor target, string what)
    {
        var r = residual;
        if (_fork.HasForked && r.shape[0] == _fork.BatchBeforeFork && target.shape[0] == _fork.BatchBeforeFork + _fork.Copies)
            r = _fork.Append(r);
        bool channelsOk = r.dim() == 4 && r.shape[0] == target.shape[0] && r.shape[1] == target.shape[1];
        bool spaceOk = r.dim() == 4 && ((r.shape[2] == target.shape[2] && r.shape[3] == target.shape[3]) || (r.shape[2] == 1 && r.shape[3] == 1));
        if (!channelsOk || !spaceOk)
            throw new PagSharpException($"{what} has shape [{string.Join(",", residual.shape)}]; the UNet tensor it is added to has shape [{string.Join(",", target.shape)}]");
        return r;
    }

    /// <summary>A skip connection stored before the fork, widened to the forked batch.</summary>
    public Tensor Widen(Tensor skip) => _fork.Widen(skip);

    /// <summary>Whether the resnet consuming <paramref name="skip"/> computes its skip-only part once (<see cref="SplitSkip.Shares"/>).</summary>
    public bool SharesSkip(Tensor h, Tensor skip, long groups) => SplitSkip.Shares(_fork, h, skip, groups);

    /// <summary>The fork's widening, for the resnets that split off their skip-only part.</summary>
    public SkipWidening Widening => _widening ??= SkipWidening.Of(_fork);
    private SkipWidening? _widening;

    public void Dispose() => _fork.Dispose();
}
