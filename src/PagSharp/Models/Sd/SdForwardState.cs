using PagSharp.Attention;
using static TorchSharp.torch;

namespace PagSharp.Models.Sd;

/// <summary>
/// Per-call state of an SD U-Net forward: the time embedding, the text conditioning, the plan, and the shared-prefix
/// fork. The fork happens at the input of the <c>Transformer2DModel</c> that holds the first perturbed self-attention:
/// there the batch, the time embedding and the text conditioning get the <see cref="PerturbationPlan.ForkSource"/>
/// entries appended, and skip connections stored earlier are widened when they are used.
/// </summary>
internal sealed class SdForwardState
{
    private readonly string? _forkAt;
    private Tensor? _forkIndex;
    private long _batchBeforeFork;

    public SdForwardState(Tensor emb, Tensor context, PerturbationPlan? plan, string? forkAt)
    {
        Emb = emb;
        Context = context;
        Plan = plan;
        _forkAt = forkAt;
    }

    public Tensor Emb { get; private set; }
    public Tensor Context { get; private set; }
    public PerturbationPlan? Plan { get; }

    /// <summary>Called before each Transformer2D: at the fork point, appends the copies to h, the embedding and the context.</summary>
    public Tensor BeforeTransformer(string path, Tensor h)
    {
        if (_forkIndex is not null || path != _forkAt) return h;
        _batchBeforeFork = h.shape[0];
        _forkIndex = tensor(Plan!.ForkSource!, device: h.device);
        Emb = cat(new[] { Emb, Emb.index_select(0, _forkIndex) }, 0);
        Context = cat(new[] { Context, Context.index_select(0, _forkIndex) }, 0);
        return cat(new[] { h, h.index_select(0, _forkIndex) }, 0);
    }

    /// <summary>
    /// A ControlNet residual (batch of the input) made to fit <paramref name="target"/>: unchanged when the batches
    /// agree, widened with the fork's copies when the target lies after the fork. Shapes must otherwise match.
    /// </summary>
    public Tensor WidenResidual(Tensor residual, Tensor target, string what)
    {
        var r = residual;
        if (_forkIndex is not null && r.shape[0] == _batchBeforeFork && target.shape[0] == _batchBeforeFork + _forkIndex.shape[0])
            r = cat(new[] { r, r.index_select(0, _forkIndex) }, 0);
        bool channelsOk = r.dim() == 4 && r.shape[0] == target.shape[0] && r.shape[1] == target.shape[1];
        bool spaceOk = r.dim() == 4 && ((r.shape[2] == target.shape[2] && r.shape[3] == target.shape[3]) || (r.shape[2] == 1 && r.shape[3] == 1));
        if (!channelsOk || !spaceOk)
            throw new PagSharpException($"{what} has shape [{string.Join(",", residual.shape)}]; the UNet tensor it is added to has shape [{string.Join(",", target.shape)}]");
        return r;
    }

    /// <summary>A skip connection stored before the fork, widened to the forked batch.</summary>
    public Tensor Widen(Tensor skip) =>
        _forkIndex is null || skip.shape[0] != _batchBeforeFork ? skip : cat(new[] { skip, skip.index_select(0, _forkIndex) }, 0);
}
