using PagSharp.Attention;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Adm;

/// <summary>A perturbable self-attention layer of a network: its name (module path), resolution, channels, heads.</summary>
public sealed record AttentionLayerInfo(string Name, string Group, int Resolution, int Channels, int Heads);

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

    /// <summary>
    /// The timestep embedding time_embed(timestep_embedding(t, model_channels)), [B, 4·model_channels], before any
    /// class embedding is added.
    /// </summary>
    public Tensor TimeEmbedding(Tensor timesteps) => time_embed.forward(TimestepEmbedding.Sinusoidal(timesteps, Config.ModelChannels));

    /// <summary>
    /// ε-model output for x [B,C,H,W] at integer timesteps [B] (and class labels [B] for class-conditional models).
    /// The plan, if any, perturbs or observes attention layers for this call only.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor timesteps, Tensor? y = null, PerturbationPlan? plan = null)
    {
        if (IsClassConditional != (y is not null))
            throw new PagSharpException(IsClassConditional
                ? $"this model is class-conditional ({Config.ResolvedNumClasses} classes): labels are required"
                : "this model is unconditional: it takes no class labels");
        var emb = TimeEmbedding(timesteps);
        if (label_emb is not null) emb = emb + label_emb.forward(y!);

        var hs = new List<Tensor>(input_blocks.Count);
        var h = x;
        foreach (var block in input_blocks)
        {
            h = block.Forward(h, emb, plan);
            hs.Add(h);
        }
        h = middle_block.Forward(h, emb, plan);
        foreach (var block in output_blocks)
        {
            h = block.Forward(cat(new[] { h, hs[^1] }, 1), emb, plan);
            hs.RemoveAt(hs.Count - 1);
        }
        return @out.forward(h);
    }
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

    public Tensor Forward(Tensor x, Tensor emb, PerturbationPlan? plan)
    {
        foreach (var layer in _layers)
            x = layer switch
            {
                ResBlock r => r.Forward(x, emb),
                AttentionBlock a => a.Forward(x, plan),
                Module<Tensor, Tensor> m => m.call(x),
                _ => throw new InvalidOperationException($"unexpected layer {layer.GetType().Name}"),
            };
        return x;
    }
}
