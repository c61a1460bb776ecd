using PagSharp.Attention;
using PagSharp.Models.Adm;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>
/// Port of diffusers' <c>UNet2DConditionModel</c> for the Stable Diffusion 1.x / 2.x and SDXL families. Parameter names equal
/// the diffusers state-dict keys (<c>conv_in.weight</c>, <c>time_embedding.linear_1.weight</c>,
/// <c>down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight</c>, …). The self-attention layers
/// (<c>attn1</c>) are perturbable through a <see cref="PerturbationPlan"/> keyed by their module names.
/// </summary>
public sealed class SdUNet : Module
{
#pragma warning disable IDE1006 // field names are checkpoint keys
    private readonly Conv2d conv_in;
    private readonly SdTimeMlp time_embedding;
    private readonly SdTimeMlp? add_embedding;
    private readonly ModuleList<SdDownBlock> down_blocks;
    private readonly SdMidBlock mid_block;
    private readonly ModuleList<SdUpBlock> up_blocks;
    private readonly GroupNorm conv_norm_out;
    private readonly Conv2d conv_out;
#pragma warning restore IDE1006
    private readonly Dictionary<string, string> _transformerOf = new(StringComparer.Ordinal);

    public SdUNetConfig Config { get; }

    /// <summary>Every self-attention layer (attn1) in forward order: down blocks, mid block, up blocks.</summary>
    public IReadOnlyList<AttentionLayerInfo> AttentionLayers { get; }

    public SdUNet(SdUNetConfig config) : base(nameof(SdUNet))
    {
        config.Validate("unet config");
        Config = config;
        var boc = config.BlockOutChannels;
        int n = boc.Length;
        // resnet_out_scale_factor only reaches diffusers' ResnetDownsampleBlock2D-style blocks, not these: their resnets use 1.
        var s = new SdBlockSettings(config.TimeEmbedDim, config.NormNumGroups, config.NormEps, config.ActFn, config.Dropout,
                                    config.ResnetTimeScaleShift, 1.0, config.UseLinearProjection);
        conv_in = SdNn.Conv(config.InChannels, boc[0], config.ConvInKernel);
        time_embedding = new SdTimeMlp(boc[0], config.TimeEmbedDim, config.ActFn);
        // diffusers' TimestepEmbedding default activation (SiLU), whatever act_fn says.
        if (config.UsesTextTime) add_embedding = new SdTimeMlp(config.ProjectionClassEmbeddingsInputDim!.Value, config.TimeEmbedDim, "silu");

        var downs = SdDownBlock.Encoder(config.BlockOutChannels, config.DownBlockTypes, config.LayersPerBlock, config.AttentionHeads,
            config.TransformerLayersPerBlock, config.CrossAttentionDim, config.DownsamplePadding, s);
        down_blocks = SdModuleList.Of(downs);
        mid_block = new SdMidBlock(boc[^1], config.AttentionHeads[^1], config.TransformerLayersPerBlock[^1], config.CrossAttentionDim[^1],
            config.MidBlockScaleFactor, s);

        var ups = new List<SdUpBlock>();
        var rBoc = boc.Reverse().ToArray();
        var rHeads = config.AttentionHeads.Reverse().ToArray();
        var rLayers = config.LayersPerBlock.Reverse().ToArray();
        var rTLayers = config.TransformerLayersPerBlock.Reverse().ToArray();
        var rCross = config.CrossAttentionDim.Reverse().ToArray();
        long outCh = rBoc[0];
        for (int i = 0; i < n; i++)
        {
            long prevOut = outCh;
            outCh = rBoc[i];
            long inCh = rBoc[Math.Min(i + 1, n - 1)];
            ups.Add(new SdUpBlock($"up_blocks.{i}", inCh, prevOut, outCh, rLayers[i] + 1, config.UpBlockTypes[i] == "CrossAttnUpBlock2D",
                rHeads[i], rTLayers[i], rCross[i], i < n - 1, s));
        }
        up_blocks = SdModuleList.Of(ups);
        conv_norm_out = SdNn.GroupNorm(config.NormNumGroups, boc[0], config.NormEps);
        conv_out = SdNn.Conv(boc[0], config.OutChannels, config.ConvOutKernel);

        var layers = new List<AttentionLayerInfo>();
        int sample = config.SampleSize ?? 64;
        void Add(IEnumerable<Transformer2D> ts, string group, int level, long ch, int heads)
        {
            foreach (var t in ts)
                foreach (var p in t.SelfAttentionPaths)
                {
                    _transformerOf[p] = t.Path;
                    layers.Add(new AttentionLayerInfo(p, group, Math.Max(1, sample >> level), (int)ch, heads));
                }
        }
        for (int i = 0; i < n; i++) Add(downs[i].Transformers, "input", i, boc[i], config.AttentionHeads[i]);
        Add(mid_block.Transformers, "middle", n - 1, boc[^1], config.AttentionHeads[^1]);
        for (int i = 0; i < n; i++) Add(ups[i].Transformers, "output", n - 1 - i, rBoc[i], rHeads[i]);
        AttentionLayers = layers;
        RegisterComponents();
    }

    /// <summary>
    /// After a shared-prefix fork, compute the part of each up-block resnet that depends only on a pre-fork skip
    /// connection once instead of once per branch (same result within float rounding). On by default.
    /// </summary>
    public bool SplitSkips { get; set; } = true;

    /// <summary>Unperturbed attention through libtorch's fused kernel (default) or in the reference operation order, for every attention layer.</summary>
    public bool FusedAttention
    {
        get => modules().OfType<SdAttention>().All(a => a.FusedAttention);
        set { foreach (var a in modules().OfType<SdAttention>()) a.FusedAttention = value; }
    }

    /// <summary>The modules in forward order, for <see cref="SdCost"/>.</summary>
    internal (Conv2d ConvIn, Module TimeEmbedding, IReadOnlyList<SdDownBlock> Down, SdMidBlock Mid, IReadOnlyList<SdUpBlock> Up, Conv2d ConvOut) Parts =>
        (conv_in, time_embedding, down_blocks.ToList(), mid_block, up_blocks.ToList(), conv_out);

    /// <summary>
    /// The predicted noise (or v) for latents <paramref name="sample"/> [B, C, H, W] at <paramref name="timesteps"/>
    /// (a scalar, [1] or [B]; integer or float) with text conditioning <paramref name="encoderHiddenStates"/>
    /// [B, S, cross_attention_dim]. With a fork (<see cref="PerturbationPlan.ForkSource"/>) the output has
    /// B + ForkSource.Length entries.
    /// </summary>
    /// <remarks>
    /// <paramref name="control"/> holds ControlNet residuals (diffusers' <c>down_block_additional_residuals</c> and
    /// <c>mid_block_additional_residual</c>): down residual i is added to the i-th skip connection after the down
    /// blocks, the mid residual to the mid-block output. Their batch is the input batch; with a shared-prefix fork
    /// the forked entries get the residuals of their source entries.
    /// </remarks>
    /// <remarks>
    /// SDXL U-Nets (<c>addition_embed_type: text_time</c>) need <paramref name="added"/>: diffusers'
    /// <c>added_cond_kwargs</c>, the pooled text embedding [B, P] and the micro-conditioning time ids [B, n]; each time
    /// id gets a sinusoidal embedding of width addition_time_embed_dim, [text_embeds, time embeddings] goes through
    /// <c>add_embedding</c> and is added to the time embedding.
    /// </remarks>
    public Tensor Forward(Tensor sample, Tensor timesteps, Tensor encoderHiddenStates, PerturbationPlan? plan = null,
                          ControlNetResiduals? control = null, SdAddedConditioning? added = null)
    {
        long b = sample.shape[0];
        if (sample.dim() != 4 || sample.shape[1] != Config.InChannels)
            throw new PagSharpException($"UNet input has shape [{string.Join(",", sample.shape)}]; expected [B,{Config.InChannels},H,W]");
        long crossDim = Config.CrossAttentionDim[0];
        if (encoderHiddenStates.dim() != 3 || encoderHiddenStates.shape[0] != b || encoderHiddenStates.shape[2] != crossDim)
            throw new PagSharpException($"encoder hidden states have shape [{string.Join(",", encoderHiddenStates.shape)}]; expected [{b},S,{crossDim}] (batch of the latents, cross_attention_dim {crossDim})");
        var t = timesteps.dim() == 0 ? timesteps.unsqueeze(0) : timesteps.reshape(-1);
        if (t.shape[0] != 1 && t.shape[0] != b)
            throw new PagSharpException($"{t.shape[0]} timesteps for a batch of {b}; give one or one per entry");
        t = t.expand(b);

        int factor = Config.DownFactor;
        bool forwardUpsampleSize = sample.shape[2] % factor != 0 || sample.shape[3] % factor != 0;
        if (Config.CenterInputSample) sample = 2 * sample - 1.0;

        var tEmb = SdTimesteps.Embedding(t, Config.BlockOutChannels[0], Config.FlipSinToCos, Config.FreqShift).to_type(sample.dtype);
        var emb = time_embedding.forward(tEmb);
        if (add_embedding is not null)
            emb = emb + add_embedding.forward(SdAddedConditioning.EmbeddingInput(added, b, Config.AdditionTimeEmbedDim!.Value,
                Config.ProjectionClassEmbeddingsInputDim!.Value, Config.FlipSinToCos, Config.FreqShift).to_type(emb.dtype));
        else if (added is not null)
            throw new PagSharpException("text_embeds and time_ids were given, but this UNet has no added conditioning (addition_embed_type is not text_time)");
        using var state = new SdForwardState(emb, encoderHiddenStates, plan, ForkPoint(plan), SplitSkips);

        var h = conv_in.forward(sample);
        var skips = new List<Tensor> { h };
        foreach (var block in down_blocks) h = block.Forward(h, state, skips);
        if (control is not null)
        {
            if (control.Down.Count != skips.Count)
                throw new PagSharpException($"{control.Down.Count} ControlNet down residuals for a UNet with {skips.Count} skip connections");
            for (int i = 0; i < skips.Count; i++)
                skips[i] = skips[i] + state.WidenResidual(control.Down[i], skips[i], $"ControlNet down residual {i}");
        }
        h = mid_block.Forward(h, state);
        if (control is not null) h = h + state.WidenResidual(control.Mid, h, "ControlNet mid residual");
        for (int i = 0; i < up_blocks.Count; i++)
        {
            var block = up_blocks[i];
            bool final = i == up_blocks.Count - 1;
            long[]? size = null;
            if (!final && forwardUpsampleSize)
            {
                var next = skips[skips.Count - block.Layers - 1];
                size = new[] { next.shape[2], next.shape[3] };
            }
            h = block.Forward(h, skips, state, size);
        }
        h = SdNn.Activation(Config.ActFn, conv_norm_out.forward(h));
        return conv_out.forward(h);
    }

    /// <summary>The Transformer2D holding the first perturbed layer in forward order (where a shared-prefix fork happens).</summary>
    private string? ForkPoint(PerturbationPlan? plan)
    {
        if (plan?.ForkSource is null) return null;
        foreach (var l in AttentionLayers)
            if (plan.TryGet(l.Name, out _)) return _transformerOf[l.Name];
        throw new PagSharpException("a shared-prefix fork needs at least one perturbed layer");
    }
}

/// <summary>
/// SDXL's added conditioning (diffusers' <c>added_cond_kwargs</c>): the pooled prompt embedding <c>text_embeds</c>
/// [B, P] and the micro-conditioning <c>time_ids</c> [B, n] (base: original size, crop top-left, target size, each
/// (height, width); refiner: original size, crop, aesthetic score).
/// </summary>
public sealed record SdAddedConditioning(Tensor TextEmbeds, Tensor TimeIds)
{
    /// <summary>
    /// [text_embeds, flattened sinusoidal embeddings of the time ids] [B, projection_class_embeddings_input_dim], the
    /// input of <c>add_embedding</c> (UNet and ControlNet alike), checked.
    /// </summary>
    public static Tensor EmbeddingInput(SdAddedConditioning? added, long b, int timeEmbedDim, int inputDim, bool flipSinToCos, double freqShift)
    {
        if (added is null)
            throw new PagSharpException("this is an SDXL network (addition_embed_type text_time): it needs text_embeds (the pooled prompt embedding) and time_ids");
        var (text, ids) = (added.TextEmbeds, added.TimeIds);
        if (text.dim() != 2 || text.shape[0] != b || ids.dim() != 2 || ids.shape[0] != b)
            throw new PagSharpException($"text_embeds have shape [{string.Join(",", text.shape)}] and time_ids [{string.Join(",", ids.shape)}]; expected [{b},P] and [{b},n] (one row per latent)");
        long width = text.shape[1] + ids.shape[1] * timeEmbedDim;
        if (width != inputDim)
            throw new PagSharpException($"text_embeds of width {text.shape[1]} and {ids.shape[1]} time ids give an added embedding of width {text.shape[1]} + {ids.shape[1]}·{timeEmbedDim} = {width}, " +
                $"but this network expects {inputDim} (projection_class_embeddings_input_dim); the base model takes 6 time ids, the refiner 5 (with the aesthetic score)");
        using var flat = ids.reshape(-1);
        using var timeEmb = SdTimesteps.Embedding(flat, timeEmbedDim, flipSinToCos, freqShift);
        return cat(new[] { text.to_type(timeEmb.dtype), timeEmb.reshape(b, -1) }, -1);
    }
}
