using PagSharp.Attention;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Adm;

/// <summary>
/// Port of guided-diffusion's <c>UNetModel</c> (2-D). Parameter names equal the reference state-dict keys
/// (<c>time_embed.0.weight</c>, <c>input_blocks.3.1.qkv.weight</c>, <c>out.2.weight</c>, …).
/// </summary>
public sealed class AdmUNet : Module
{
#pragma warning disable IDE1006
    private readonly Sequential time_embed;
    private readonly Embedding? label_emb;
    private readonly ModuleList<TimestepBlock> input_blocks;
    private readonly TimestepBlock middle_block;
    private readonly ModuleList<TimestepBlock> output_blocks;
    private readonly Sequential @out;
#pragma warning restore IDE1006

    public AdmConfig Config { get; }
    public IReadOnlyList<AttentionLayerInfo> AttentionLayers { get; }

    public AdmUNet(AdmConfig config) : base(nameof(AdmUNet))
    {
        config.Validate("model config");
        Config = config;
        int mc = config.ModelChannels, embDim = mc * 4;
        var mult = config.ChannelMultTuple;
        var attnDs = config.AttentionDs;
        var layers = new List<AttentionLayerInfo>();

        time_embed = Sequential(Linear(mc, embDim), SiLU(), Linear(embDim, embDim));
        if (config.ResolvedNumClasses is int nc) label_emb = Embedding(nc, embDim);

        AttentionBlock Attn(string path, string group, int ch, int heads, int ds)
        {
            var a = new AttentionBlock(path, ch, heads, config.NumHeadChannels, config.UseNewAttentionOrder, config.ImageSize / ds);
            layers.Add(new AttentionLayerInfo(path, group, a.Resolution, ch, a.Heads));
            return a;
        }

        var inBlocks = new List<TimestepBlock>();
        int ch = (int)(mult[0] * mc), inputCh = ch, ds = 1;
        var chans = new List<int> { ch };
        inBlocks.Add(new TimestepBlock(Conv2d(config.InChannels, ch, 3, padding: 1)));
        for (int level = 0; level < mult.Length; level++)
        {
            for (int r = 0; r < config.NumResBlocks; r++)
            {
                var mods = new List<Module> { new ResBlock(ch, embDim, config.Dropout, (int)(mult[level] * mc), config.UseScaleShiftNorm) };
                ch = (int)(mult[level] * mc);
                if (attnDs.Contains(ds)) mods.Add(Attn($"input_blocks.{inBlocks.Count}.1", "input", ch, config.NumHeads, ds));
                inBlocks.Add(new TimestepBlock(mods.ToArray()));
                chans.Add(ch);
            }
            if (level != mult.Length - 1)
            {
                inBlocks.Add(new TimestepBlock(config.ResblockUpdown
                    ? new ResBlock(ch, embDim, config.Dropout, ch, config.UseScaleShiftNorm, down: true)
                    : new Downsample(ch, config.ConvResample, ch)));
                chans.Add(ch);
                ds *= 2;
            }
        }
        input_blocks = new ModuleList<TimestepBlock>(inBlocks.ToArray());

        middle_block = new TimestepBlock(
            new ResBlock(ch, embDim, config.Dropout, ch, config.UseScaleShiftNorm),
            Attn("middle_block.1", "middle", ch, config.NumHeads, ds),
            new ResBlock(ch, embDim, config.Dropout, ch, config.UseScaleShiftNorm));

        var outBlocks = new List<TimestepBlock>();
        for (int level = mult.Length - 1; level >= 0; level--)
        {
            for (int i = 0; i <= config.NumResBlocks; i++)
            {
                int ich = chans[^1];
                chans.RemoveAt(chans.Count - 1);
                var mods = new List<Module> { new ResBlock(ch + ich, embDim, config.Dropout, (int)(mc * mult[level]), config.UseScaleShiftNorm) };
                ch = (int)(mc * mult[level]);
                if (attnDs.Contains(ds)) mods.Add(Attn($"output_blocks.{outBlocks.Count}.{mods.Count}", "output", ch, config.ResolvedHeadsUpsample, ds));
                if (level > 0 && i == config.NumResBlocks)
                {
                    mods.Add(config.ResblockUpdown
                        ? new ResBlock(ch, embDim, config.Dropout, ch, config.UseScaleShiftNorm, up: true)
                        : new Upsample(ch, config.ConvResample, ch));
                    ds /= 2;
                }
                outBlocks.Add(new TimestepBlock(mods.ToArray()));
            }
        }
        output_blocks = new ModuleList<TimestepBlock>(outBlocks.ToArray());

        @out = Sequential(AdmNorm.Create(ch), SiLU(), AdmNorm.Zero(Conv2d(inputCh, config.ResolvedOutChannels, 3, padding: 1)));
        AttentionLayers = layers;
        RegisterComponents();
    }

    public bool IsClassConditional => label_emb is not null;

    /// <summary>The blocks in forward order with their key prefixes: input_blocks.i, middle_block, output_blocks.j.</summary>
    internal IEnumerable<(string Path, TimestepBlock Block)> Blocks =>
        input_blocks.Select((b, i) => ($"input_blocks.{i}", b))
            .Append(("middle_block", middle_block))
            .Concat(output_blocks.Select((b, j) => ($"output_blocks.{j}", b)));

    /// <summary>The time-embedding MLP's two linears and the final conv (GN→SiLU→conv).</summary>
    internal (Linear First, Linear Second, Conv2d Out) Ends => ((Linear)time_embed[0], (Linear)time_embed[2], (Conv2d)@out[2]);

    /// <summary>
    /// After a shared-prefix fork, compute the part of each decoder ResBlock that depends only on a pre-fork skip
    /// connection once instead of once per branch (same result within float rounding). On by default; off for A/B
    /// benchmarks and tests.
    /// </summary>
    public bool SplitSkips { get; set; } = true;

    /// <summary>Unperturbed attention through libtorch's fused kernel (default) or in the reference operation order, for every attention block.</summary>
    public bool FusedAttention
    {
        get => modules().OfType<AttentionBlock>().All(a => a.FusedAttention);
        set { foreach (var a in modules().OfType<AttentionBlock>()) a.FusedAttention = value; }
    }

    /// <summary>
    /// ε-model output for x [B,C,H,W] at integer timesteps [B] (and class labels [B] for class-conditional models).
    /// The plan, if any, perturbs or observes attention layers for this call only; with a fork
    /// (<see cref="PerturbationPlan.ForkSource"/>) the output has B + ForkSource.Length entries.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor timesteps, Tensor? y = null, PerturbationPlan? plan = null)
    {
        if (IsClassConditional != (y is not null))
            throw new PagSharpException(IsClassConditional
                ? $"this model is class-conditional ({Config.ResolvedNumClasses} classes): labels are required"
                : "this model is unconditional: it takes no class labels");
        var state = new ForwardState(TimeEmbedding(timesteps, y), plan, ForkLayer(plan), SplitSkips);

        // Each block runs in its own dispose scope, so only block outputs (the skips) outlive it: peak memory is the
        // skips plus one block's temporaries, not every activation of the pass. Used skips are released at once.
        var hs = new List<Tensor>(input_blocks.Count);
        var h = x;
        foreach (var block in input_blocks)
        {
            var input = h;
            h = Scoped(() => block.Forward(input, state));
            hs.Add(h);
        }
        var last = h;
        h = Scoped(() => middle_block.Forward(last, state));
        foreach (var block in output_blocks)
        {
            var (prev, skip) = (h, hs[^1]);
            hs.RemoveAt(hs.Count - 1);
            h = Scoped(() => block.ForwardWithSkip(prev, skip, state));
            prev.Dispose();
            skip.Dispose();
        }
        var result = @out.forward(h);
        h.Dispose();
        state.Dispose();
        return result;
    }

    private static Tensor Scoped(Func<Tensor> f)
    {
        using var scope = NewDisposeScope();
        return f().MoveToOuterDisposeScope();
    }

    /// <summary>The embedding the ResBlocks receive: time_embed(timestep_embedding(t)) (+ label_emb(y)).</summary>
    public Tensor TimeEmbedding(Tensor timesteps, Tensor? y = null)
    {
        using var sinusoid = TimestepEmbedding.Sinusoidal(timesteps, Config.ModelChannels);
        // The sinusoid is computed in float32 as the reference; a float64 model takes it in its own precision.
        var emb = time_embed.forward(sinusoid.to_type(time_embed.parameters().First().dtype));
        return label_emb is null || y is null ? emb : emb + label_emb.forward(y);
    }

    /// <summary>The first perturbed layer in forward order, where a shared-prefix fork happens.</summary>
    private string? ForkLayer(PerturbationPlan? plan)
    {
        if (plan?.ForkSource is null) return null;
        foreach (var l in AttentionLayers)
            if (plan.TryGet(l.Name, out _)) return l.Name;
        throw new PagSharpException("a shared-prefix fork needs at least one perturbed layer");
    }
}

/// <summary>Per-call state of an ADM U-Net forward (<see cref="ForkState"/>): the fork happens before the first perturbed attention block.</summary>
public sealed class ForwardState : ForkState
{
    public ForwardState(Tensor emb, PerturbationPlan? plan, string? forkLayer, bool splitSkips = false) : base(emb, plan, forkLayer, splitSkips) { }

    /// <summary>Called before each attention block: at the fork layer, appends the copies to h and to the embedding.</summary>
    public Tensor BeforeAttention(string layer, Tensor h) => ForkAt(layer, h, outlivesScope: true); // inside a block's dispose scope

    /// <summary>
    /// Called before the ResBlock that feeds attention block <paramref name="layer"/>: when the plan skips that ResBlock
    /// on some entries (<see cref="SkipTarget.ResBlock"/>) and <paramref name="layer"/> is the fork layer, the fork
    /// happens here, before the ResBlock, so the skipped entries exist when it runs.
    /// </summary>
    public Tensor BeforeResBlock(string layer, Tensor h) => ForkBeforeResBlock(layer, [layer], h, outlivesScope: true);

    /// <summary>Whether the block consuming <paramref name="skip"/> computes its skip-only part once.</summary>
    public bool SharesSkip(Tensor h, Tensor skip) => SharesSkip(h, skip, AdmNorm.Groups);
}

/// <summary>guided-diffusion's TimestepEmbedSequential: children named 0, 1, …; ResBlocks get the embedding.</summary>
public sealed class TimestepBlock : Module
{
    private readonly Module[] _layers;

    public TimestepBlock(params Module[] layers) : base(nameof(TimestepBlock))
    {
        _layers = layers;
        for (int i = 0; i < layers.Length; i++) register_module(i.ToString(System.Globalization.CultureInfo.InvariantCulture), layers[i]);
    }

    /// <summary>
    /// A decoder block on cat([h, skip], 1). After a shared-prefix fork a skip stored before it still has the pre-fork
    /// batch; the first ResBlock then computes its skip-only part once (<see cref="ResBlock.ForwardSplitSkip"/>).
    /// </summary>
    /// <summary>The block's layers in order (children 0, 1, …).</summary>
    internal IReadOnlyList<Module> Layers => _layers;

    public Tensor ForwardWithSkip(Tensor h, Tensor skip, ForwardState state)
    {
        // A skipped first ResBlock (skip-layer guidance, SkipTarget.ResBlock) may need the fork before it: fork h, then
        // the skip (stored before the fork) is widened or split like any other.
        if (FedAttention(0) is { } layer) h = state.BeforeResBlock(layer, h);
        if (state.SharesSkip(h, skip) && _layers[0] is ResBlock r
            && r.ForwardSplitSkip(h, skip, state.Widening, state.Emb, Skipped(0, h.shape[0], state)) is { } first)
            return Forward(first, state, 1);
        return Forward(cat(new[] { h, state.Widen(skip) }, 1), state);
    }

    public Tensor Forward(Tensor x, ForwardState state) => Forward(x, state, 0);

    private Tensor Forward(Tensor x, ForwardState state, int from)
    {
        for (int i = from; i < _layers.Length; i++)
        {
            if (FedAttention(i) is { } layer) x = state.BeforeResBlock(layer, x);
            x = _layers[i] switch
            {
                ResBlock r => r.Forward(x, state.Emb, Skipped(i, x.shape[0], state)),
                AttentionBlock a => a.Forward(state.BeforeAttention(a.Path, x), state.Plan),
                Module<Tensor, Tensor> m => m.call(x),
                _ => throw new InvalidOperationException($"unexpected layer {_layers[i].GetType().Name}"),
            };
        }
        return x;
    }

    /// <summary>The attention block layer <paramref name="i"/> feeds when it is a ResBlock followed by one (its SLG ResBlock skip is keyed by that layer), else null.</summary>
    private string? FedAttention(int i) =>
        _layers[i] is ResBlock && i + 1 < _layers.Length && _layers[i + 1] is AttentionBlock a ? a.Path : null;

    /// <summary>The entries of a batch of <paramref name="batch"/> for which ResBlock <paramref name="i"/> is skipped, or null.</summary>
    private long[]? Skipped(int i, long batch, ForwardState state) =>
        FedAttention(i) is { } layer ? state.Plan?.SkippedResBlockEntries(layer, batch) : null;
}
