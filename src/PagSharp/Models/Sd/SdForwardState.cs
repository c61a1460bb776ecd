using PagSharp.Attention;
using static TorchSharp.torch;

namespace PagSharp.Models.Sd;

/// <summary>
/// Per-call state of an SD U-Net forward: the time embedding, the text conditioning, the plan, and the shared-prefix
/// fork. The fork happens at the input of the <c>Transformer2DModel</c> that holds the first perturbed self-attention
/// (at the input of the resnet before it when skip-layer guidance skips that resnet, <see cref="SkipTarget.ResBlock"/>):
/// there the batch, the time embedding and the text conditioning get the <see cref="PerturbationPlan.ForkSource"/>
/// entries appended, and skip connections stored earlier are widened when they are used.
/// </summary>
internal sealed class SdForwardState : ForkState
{
    public SdForwardState(Tensor emb, Tensor context, PerturbationPlan? plan, string? forkAt, bool splitSkips = false)
        : base(emb, plan, forkAt, splitSkips) => Context = context;

    /// <summary>The text conditioning the cross-attention layers read (widened at the fork).</summary>
    public Tensor Context { get; private set; }

    /// <summary>Called before each Transformer2D: at the fork point, appends the copies to h, the embedding and the context.</summary>
    public Tensor BeforeTransformer(string path, Tensor h) => ForkAt(path, h, outlivesScope: false);

    /// <summary>
    /// Called before the resnet that feeds <paramref name="transformer"/> (null: none follows it): when the plan skips
    /// that resnet on some entries (<see cref="SkipTarget.ResBlock"/>) and the transformer is the fork point, the fork
    /// happens here, before the resnet.
    /// </summary>
    public Tensor BeforeResnet(Transformer2D? transformer, Tensor h) =>
        transformer is null ? h : ForkBeforeResBlock(transformer.Path, transformer.SelfAttentionPaths, h, outlivesScope: false);

    /// <summary>
    /// The entries of a batch of <paramref name="batch"/> for which the resnet feeding <paramref name="transformer"/>
    /// is skipped (for any of its self-attention layers, each entry once), or null.
    /// </summary>
    public long[]? SkippedResnetEntries(Transformer2D? transformer, long batch) =>
        transformer is null ? null : Plan?.SkippedResBlockEntries(transformer.SelfAttentionPaths, batch);

    private protected override void OnFork(bool outlivesScope)
    {
        var c = Fork.Append(Context);
        Context = outlivesScope ? c.MoveToOuterDisposeScope() : c;
    }

    /// <summary>
    /// A ControlNet residual (batch of the input) made to fit <paramref name="target"/>: unchanged when the batches
    /// agree, widened with the fork's copies when the target lies after the fork. Shapes must otherwise match.
    /// </summary>
    public Tensor WidenResidual(Tensor residual, Tensor target, string what)
    {
        var r = residual;
        if (Fork.HasForked && r.shape[0] == Fork.BatchBeforeFork && target.shape[0] == Fork.BatchBeforeFork + Fork.Copies)
            r = Fork.Append(r);
        bool channelsOk = r.dim() == 4 && r.shape[0] == target.shape[0] && r.shape[1] == target.shape[1];
        bool spaceOk = r.dim() == 4 && ((r.shape[2] == target.shape[2] && r.shape[3] == target.shape[3]) || (r.shape[2] == 1 && r.shape[3] == 1));
        if (!channelsOk || !spaceOk)
            throw new PagSharpException($"{what} has shape [{string.Join(",", residual.shape)}]; the UNet tensor it is added to has shape [{string.Join(",", target.shape)}]");
        return r;
    }
}
