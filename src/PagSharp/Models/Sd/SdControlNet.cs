using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>
/// The residuals a ControlNet adds to a U-Net: one per down-block skip connection (in the U-Net's order) and one for
/// the mid-block output. Owns its tensors.
/// </summary>
public sealed class ControlNetResiduals : IDisposable
{
    public ControlNetResiduals(IReadOnlyList<Tensor> down, Tensor mid)
    {
        Down = down;
        Mid = mid;
    }

    public IReadOnlyList<Tensor> Down { get; }
    public Tensor Mid { get; }

    public void Dispose()
    {
        foreach (var d in Down) d.Dispose();
        Mid.Dispose();
    }
}

/// <summary>
/// diffusers' <c>ControlNetConditioningEmbedding</c>: conv_in (3×3) → act, then per step a 3×3 conv and a 3×3
/// stride-2 conv, each followed by SiLU, then conv_out (3×3) to the U-Net's first block width.
/// </summary>
internal sealed class ControlNetConditioningEmbedding : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Conv2d conv_in;
    private readonly ModuleList<Conv2d> blocks;
    private readonly Conv2d conv_out;
#pragma warning restore IDE1006

    public ControlNetConditioningEmbedding(long embeddingChannels, int[] channels, long conditioningChannels) : base(nameof(ControlNetConditioningEmbedding))
    {
        conv_in = SdNn.Conv(conditioningChannels, channels[0]);
        var list = new List<Conv2d>();
        for (int i = 0; i < channels.Length - 1; i++)
        {
            list.Add(SdNn.Conv(channels[i], channels[i]));
            list.Add(SdNn.Conv(channels[i], channels[i + 1], stride: 2));
        }
        blocks = SdModuleList.Of(list);
        conv_out = SdNn.Conv(channels[^1], embeddingChannels);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = functional.silu(conv_in.forward(x));
        foreach (var b in blocks) h = functional.silu(b.forward(h));
        return conv_out.forward(h);
    }
}

/// <summary>
/// Port of diffusers' <c>ControlNetModel</c> (Stable Diffusion 1.x / 2.x): its own time embedding, a conditioning
/// embedding of the control image added after conv_in, down blocks and a mid block built as the U-Net's, and a 1×1
/// "zero convolution" on every down residual (<c>controlnet_down_blocks.i</c>) and on the mid output
/// (<c>controlnet_mid_block</c>). Parameter names equal the diffusers state-dict keys. It always runs with normal
/// attention (PAG perturbs only the U-Net).
/// </summary>
public sealed class SdControlNet : Module
{
#pragma warning disable IDE1006 // field names are checkpoint keys
    private readonly Conv2d conv_in;
    private readonly SdTimeMlp time_embedding;
    private readonly SdTimeMlp? add_embedding;
    private readonly ControlNetConditioningEmbedding controlnet_cond_embedding;
    private readonly ModuleList<SdDownBlock> down_blocks;
    private readonly ModuleList<Conv2d> controlnet_down_blocks;
    private readonly SdMidBlock mid_block;
    private readonly Conv2d controlnet_mid_block;
#pragma warning restore IDE1006

    public ControlNetConfig Config { get; }

    public SdControlNet(ControlNetConfig config) : base(nameof(SdControlNet))
    {
        config.Validate("controlnet config");
        Config = config;
        var boc = config.BlockOutChannels;
        int n = boc.Length;
        var s = new SdBlockSettings(config.TimeEmbedDim, config.NormNumGroups, config.NormEps, config.ActFn, 0.0,
                                    config.ResnetTimeScaleShift, 1.0, config.UseLinearProjection);
        conv_in = SdNn.Conv(config.InChannels, boc[0]);
        time_embedding = new SdTimeMlp(boc[0], config.TimeEmbedDim, config.ActFn);
        if (config.UsesTextTime) add_embedding = new SdTimeMlp(config.ProjectionClassEmbeddingsInputDim!.Value, config.TimeEmbedDim, "silu");
        controlnet_cond_embedding = new ControlNetConditioningEmbedding(boc[0], config.ConditioningEmbeddingOutChannels, config.ConditioningChannels);
        var downs = SdDownBlock.Encoder(config.BlockOutChannels, config.DownBlockTypes, config.LayersPerBlock, config.AttentionHeads,
            config.TransformerLayersPerBlock, config.CrossAttentionDim, config.DownsamplePadding, s);
        down_blocks = SdModuleList.Of(downs);
        controlnet_down_blocks = SdModuleList.Of(config.ResidualChannels.Select(ch => SdNn.Conv(ch, ch, 1)));
        mid_block = new SdMidBlock(boc[^1], config.AttentionHeads[^1], config.TransformerLayersPerBlock[^1], config.CrossAttentionDim[^1],
            config.MidBlockScaleFactor, s);
        controlnet_mid_block = SdNn.Conv(boc[^1], boc[^1], 1);
        RegisterComponents();
    }

    /// <summary>
    /// The residuals for latents <paramref name="sample"/> [B, C, h, w] at <paramref name="timesteps"/> (scalar, [1]
    /// or [B]) with text conditioning [B, S, D] and the control image <paramref name="controlImage"/> [B, C_cond,
    /// h·f, w·f] (f = <see cref="ControlNetConfig.ConditioningFactor"/>, values as the pipeline prepares them: [0, 1]
    /// for the standard SD ControlNets). Every residual is multiplied by <paramref name="conditioningScale"/>; in
    /// <paramref name="guessMode"/> the down residuals get 10^linspace(−1, 0, n+1) · scale (the last for the mid).
    /// </summary>
    /// <remarks>SDXL ControlNets (addition_embed_type text_time) take the added conditioning <paramref name="added"/> as the SDXL UNet.</remarks>
    public ControlNetResiduals Forward(Tensor sample, Tensor timesteps, Tensor encoderHiddenStates, Tensor controlImage,
                                       double conditioningScale = 1.0, bool guessMode = false, SdAddedConditioning? added = null)
    {
        CheckInputs(sample, encoderHiddenStates, controlImage);
        long b = sample.shape[0];
        using var scope = NewDisposeScope();
        var t = timesteps.dim() == 0 ? timesteps.unsqueeze(0) : timesteps.reshape(-1);
        if (t.shape[0] != 1 && t.shape[0] != b)
            throw new PagSharpException($"{t.shape[0]} timesteps for a batch of {b}; give one or one per entry");
        t = t.expand(b);
        if (Config.ChannelOrder == "bgr") controlImage = controlImage.flip(1);

        var tEmb = SdTimesteps.Embedding(t, Config.BlockOutChannels[0], Config.FlipSinToCos, Config.FreqShift).to_type(sample.dtype);
        var emb = time_embedding.forward(tEmb);
        if (add_embedding is not null)
            emb = emb + add_embedding.forward(SdAddedConditioning.EmbeddingInput(added, b, Config.AdditionTimeEmbedDim!.Value,
                Config.ProjectionClassEmbeddingsInputDim!.Value, Config.FlipSinToCos, Config.FreqShift).to_type(emb.dtype));
        else if (added is not null)
            throw new PagSharpException("text_embeds and time_ids were given, but this ControlNet has no added conditioning (addition_embed_type is not text_time)");
        using var state = new SdForwardState(emb, encoderHiddenStates, null, null);

        var h = conv_in.forward(sample);
        var cond = controlnet_cond_embedding.forward(controlImage);
        if (!cond.shape.Skip(2).SequenceEqual(h.shape.Skip(2)))
            throw new PagSharpException($"the control image [{string.Join(",", controlImage.shape)}] becomes a {cond.shape[3]}×{cond.shape[2]} feature map but the latents are {h.shape[3]}×{h.shape[2]}; the control image must be {h.shape[3] * Config.ConditioningFactor}×{h.shape[2] * Config.ConditioningFactor} (width×height)");
        h = h + cond;
        var skips = new List<Tensor> { h };
        foreach (var block in down_blocks) h = block.Forward(h, state, skips);
        h = mid_block.Forward(h, state);

        var down = skips.Select((x, i) => controlnet_down_blocks[i].forward(x)).ToList();
        var mid = controlnet_mid_block.forward(h);
        if (guessMode && !Config.GlobalPoolConditions)
        {
            var scales = logspace(-1, 0, down.Count + 1, dtype: ScalarType.Float32, device: sample.device) * (float)conditioningScale;
            for (int i = 0; i < down.Count; i++) down[i] = down[i] * scales[i];
            mid = mid * scales[down.Count];
        }
        else
        {
            for (int i = 0; i < down.Count; i++) down[i] = down[i] * conditioningScale;
            mid = mid * conditioningScale;
        }
        if (Config.GlobalPoolConditions)
        {
            for (int i = 0; i < down.Count; i++) down[i] = down[i].mean(new long[] { 2, 3 }, keepdim: true);
            mid = mid.mean(new long[] { 2, 3 }, keepdim: true);
        }
        foreach (var d in down) d.MoveToOuterDisposeScope();
        mid.MoveToOuterDisposeScope();
        return new ControlNetResiduals(down, mid);
    }

    private void CheckInputs(Tensor sample, Tensor ehs, Tensor image)
    {
        if (sample.dim() != 4 || sample.shape[1] != Config.InChannels)
            throw new PagSharpException($"ControlNet input has shape [{string.Join(",", sample.shape)}]; expected [B,{Config.InChannels},H,W]");
        long b = sample.shape[0], d = Config.CrossAttentionDim[0];
        if (ehs.dim() != 3 || ehs.shape[0] != b || ehs.shape[2] != d)
            throw new PagSharpException($"ControlNet encoder hidden states have shape [{string.Join(",", ehs.shape)}]; expected [{b},S,{d}] (cross_attention_dim {d})");
        if (image.dim() != 4 || image.shape[0] != b || image.shape[1] != Config.ConditioningChannels)
            throw new PagSharpException($"the control image has shape [{string.Join(",", image.shape)}]; this ControlNet expects [{b},{Config.ConditioningChannels},H,W] (conditioning_channels {Config.ConditioningChannels}, one per latent)");
        long f = Config.ConditioningFactor;
        if (image.shape[2] != sample.shape[2] * f || image.shape[3] != sample.shape[3] * f)
            throw new PagSharpException($"the control image is {image.shape[3]}×{image.shape[2]} but latents of {sample.shape[3]}×{sample.shape[2]} need a {sample.shape[3] * f}×{sample.shape[2] * f} control image (width×height; this ControlNet downsamples it by {f})");
    }

    /// <summary>
    /// Loads a ControlNet strictly: <paramref name="path"/> is a diffusers folder (config.json and
    /// diffusion_pytorch_model[.fp16].safetensors / .bin), a diffusers weight file with config.json beside it, or an
    /// original (lllyasviel/ControlNet, LDM) single file — <c>control_model.*</c> keys, .safetensors or .ckpt/.pth —
    /// with its diffusers config.json beside it or, without one, the shipped SD 1.5 ControlNet config
    /// (<see cref="SdSingleFile.BuiltInControlNetConfig"/>, as diffusers' <c>from_single_file</c> takes
    /// lllyasviel/control_v11p_sd15_canny's). Half-precision weights are up-cast to float32.
    /// </summary>
    public static SdControlNet Load(string path)
    {
        string dir, file;
        if (Directory.Exists(path))
        {
            dir = path;
            string cfg0 = Path.Combine(dir, "config.json");
            if (!File.Exists(cfg0))
                throw new PagSharpException($"{cfg0} does not exist: a ControlNet must be a diffusers ControlNet folder (config.json and diffusion_pytorch_model.safetensors) or a weight file with config.json beside it");
            file = SdLoader.FindWeights(dir);
        }
        else if (File.Exists(path))
        {
            file = path;
            dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        }
        else throw new PagSharpException($"ControlNet '{path}' does not exist; expected a diffusers ControlNet folder (config.json and diffusion_pytorch_model.safetensors), a .safetensors file with config.json beside it, or an original ControlNet single file (control_model.*)");
        using var ldm = SdSingleFile.TryOpenControlNet(file);
        string cfg = Path.Combine(dir, "config.json");
        if (!File.Exists(cfg))
        {
            if (ldm is null)
                throw new PagSharpException($"{cfg} does not exist: the ControlNet weights {file} need the diffusers ControlNetModel config.json beside them");
            cfg = SdSingleFile.BuiltInControlNetConfig()
                  ?? throw new PagSharpException($"{file} is an original ControlNet checkpoint without a config.json beside it, and the shipped SD 1.5 ControlNet config (models/sd-configs/controlnet-sd15/config.json beside the program) is missing; put the ControlNet's diffusers config.json beside the file");
        }
        var config = ControlNetConfig.Load(cfg);
        return ldm is not null ? SdLoader.LoadControlNet(config, ldm, cfg) : SdLoader.LoadControlNet(config, file, cfg);
    }
}
