using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Models.Sd;
using static TorchSharp.torch;

namespace PagSharp.Denoisers;

/// <summary>
/// A diffusers <c>UNet2DConditionModel</c> on the denoiser contract (k-diffusion's <c>CompVisDenoiser</c> idea): the
/// output in the model's prediction space (ε or v, as the scheduler config says), the prompt embeddings as the
/// condition and the negative prompt embeddings as the unconditional branch, the timestep as a float32 scalar as
/// diffusers' pipelines pass it. With a ControlNet (diffusers' <c>StableDiffusionControlNetPAGPipeline</c>) the
/// ControlNet runs each step, with normal attention, on the fed batch with the control image in every block and the
/// same text conditioning, and its residuals go to the U-Net; with a shared prefix the forked entries get the cond
/// block's residuals, which are what a full pass computes for them. Outside [GuidanceStart, GuidanceEnd] it is not run
/// (diffusers runs it with scale 0, which adds zeros). In guess mode it runs on the conditional blocks only and the
/// unconditional ones get no residual, as diffusers' ControlNet pipelines.
/// </summary>
public sealed class UNetDenoiser : IDenoiserModel, IDisposable
{
    private readonly Tensor _prompt;
    private readonly Tensor? _negative;
    private readonly SdControl? _control;
    private readonly Tensor? _controlImage;
    private readonly Dictionary<string, Tensor> _embeddings = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SdAddedConditioning> _added = new(StringComparer.Ordinal);
    private readonly SdXlConditioning? _xl;
    private readonly Tensor? _extra;
    private readonly ScalarType _dtype;
    private readonly Device _device;

    /// <param name="unet">The U-Net.</param>
    /// <param name="promptEmbeds">Text conditioning [B, S, D].</param>
    /// <param name="negativeEmbeds">Unconditional embeddings [B, S, D] (needed for CFG).</param>
    /// <param name="latentShape">[B, C, h, w] of the latents (checks the control image).</param>
    /// <param name="control">Optional ControlNet with its image and settings.</param>
    /// <param name="xl">SDXL's pooled embeddings and time ids (required by SDXL U-Nets, refused by others).</param>
    /// <param name="extraInput">
    /// Channels appended to every model input after the latents ([B, k, h, w]; in_channels = latent channels + k):
    /// the mask and masked-image latents of a 9-channel inpainting U-Net, as diffusers'
    /// <c>torch.cat([latent_model_input, mask, masked_image_latents], dim=1)</c>.
    /// </param>
    public UNetDenoiser(SdUNet unet, Tensor promptEmbeds, Tensor? negativeEmbeds, long[] latentShape, SdControl? control = null,
                        SdXlConditioning? xl = null, Tensor? extraInput = null)
    {
        Unet = unet;
        var cfg = unet.Config;
        long extraCh = extraInput?.shape[1] ?? 0;
        if (latentShape.Length != 4 || latentShape[1] + extraCh != cfg.InChannels)
            throw new PagSharpException(extraInput is null
                ? $"initial latents have shape [{string.Join(",", latentShape)}]; this UNet expects [N,{cfg.InChannels},H,W]" + (cfg.InChannels == 9 ? " (a 9-channel inpainting UNet: use it for inpainting, with an image and a mask)" : "")
                : $"latents [{string.Join(",", latentShape)}] with {extraCh} extra input channels make {latentShape[1] + extraCh}; this UNet takes in_channels {cfg.InChannels}");
        if (extraInput is not null && (extraInput.dim() != 4 || extraInput.shape[0] != latentShape[0] || extraInput.shape[2] != latentShape[2] || extraInput.shape[3] != latentShape[3]))
            throw new PagSharpException($"the extra input channels have shape [{string.Join(",", extraInput.shape)}]; expected [{latentShape[0]},k,{latentShape[2]},{latentShape[3]}] (the latents' batch and size)");
        if (cfg.UsesTextTime != xl is not null)
            throw new PagSharpException(cfg.UsesTextTime
                ? "this is an SDXL UNet: it needs pooled prompt embeddings and time ids (SdXlConditioning)"
                : "pooled prompt embeddings and time ids were given, but this UNet is not an SDXL UNet (addition_embed_type is not text_time)");
        long d = cfg.CrossAttentionDim[0];
        if (promptEmbeds.dim() != 3 || promptEmbeds.shape[2] != d)
            throw new PagSharpException($"prompt embeddings have shape [{string.Join(",", promptEmbeds.shape)}]; this UNet expects [N,S,{d}] (cross_attention_dim {d})");
        if (promptEmbeds.shape[0] != latentShape[0])
            throw new PagSharpException($"{promptEmbeds.shape[0]} prompt embeddings for {latentShape[0]} latents; give one per sample");
        if (negativeEmbeds is not null && !negativeEmbeds.shape.SequenceEqual(promptEmbeds.shape))
            throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", negativeEmbeds.shape)}] but the prompt embeddings [{string.Join(",", promptEmbeds.shape)}]; they must match (as diffusers requires)");
        _prompt = promptEmbeds;
        _dtype = unet.parameters().First().dtype;
        _device = unet.parameters().First().device;
        _negative = negativeEmbeds;
        _control = control;
        _xl = xl;
        _extra = extraInput is null ? null : (extraInput.device == _device ? extraInput.alias() : extraInput.to(_device)).DetachFromDisposeScope();
        if (xl is not null) CheckXl(xl, latentShape[0]);
        if (control is not null) _controlImage = PrepareControl(unet, control, latentShape).DetachFromDisposeScope();
        BatchSize = latentShape[0];
    }

    public SdUNet Unet { get; }
    public IReadOnlyList<AttentionLayerInfo> AttentionLayers => Unet.AttentionLayers;
    public long BatchSize { get; }
    public string? WhyNoUnconditional => _negative is null ? "no negative prompt embeddings were given" : null;

    public ModelOutput Forward(Tensor x, StepContext step, IReadOnlyList<Branch> blocks, PerturbationPlan? plan)
    {
        long b = BatchSize;
        var emb = EmbeddingsFor(blocks);
        var dtype = _dtype;
        var xIn = x.dtype == dtype ? x : x.to_type(dtype);
        using var tt = tensor((float)step.Timestep, device: _device);
        ControlNetResiduals? residuals = null;
        try
        {
            var added = AddedFor(blocks);
            float keep = _control?.Keep(step.Index, step.Count) ?? 0f;
            if (_control is not null && keep > 0)
            {
                double scale = _control.ConditioningScale * keep;
                int uncond = blocks.TakeWhile(k => k == Branch.Unconditional).Count();
                if (_control.EffectiveGuessMode && uncond > 0)
                {
                    // Only the conditional (and fed perturbed) entries; the unconditional entries get zero residuals.
                    long skip = uncond * b, rest = x.shape[0] - skip;
                    using var part = _control.Net.Forward(xIn.narrow(0, skip, rest), tt, emb.narrow(0, skip, rest),
                        Repeat(_controlImage!, (int)(rest / b)), scale, true,
                        added is null ? null : new SdAddedConditioning(added.TextEmbeds.narrow(0, skip, rest), added.TimeIds.narrow(0, skip, rest)));
                    residuals = new ControlNetResiduals(
                        part.Down.Select(dn => cat(new[] { zeros(Shape(dn, skip), dtype: dn.dtype, device: dn.device), dn }, 0)).ToList(),
                        cat(new[] { zeros(Shape(part.Mid, skip), dtype: part.Mid.dtype, device: part.Mid.device), part.Mid }, 0));
                }
                else
                    residuals = _control.Net.Forward(xIn, tt, emb, Repeat(_controlImage!, blocks.Count), scale, _control.EffectiveGuessMode, added);
            }
            if (_extra is not null)
                xIn = cat(new[] { xIn, Repeat(_extra.to_type(dtype), (int)(xIn.shape[0] / b)) }, 1);
            var o = Unet.Forward(xIn, tt, emb, plan, residuals, added);
            return new ModelOutput(o.dtype == x.dtype ? o : o.to_type(x.dtype), null);
        }
        finally
        {
            residuals?.Dispose();
        }
    }

    private static long[] Shape(Tensor t, long batch) => t.shape.Select((v, i) => i == 0 ? batch : v).ToArray();

    /// <summary>The text conditioning of a block layout, concatenated once and kept.</summary>
    private Tensor EmbeddingsFor(IReadOnlyList<Branch> blocks)
    {
        string key = string.Concat(blocks.Select(k => k == Branch.Conditional ? 'c' : 'u'));
        if (_embeddings.TryGetValue(key, out var e)) return e;
        if (blocks.Contains(Branch.Unconditional) && _negative is null)
            throw new PagSharpException("CFG (guidance scale > 1) needs negative prompt embeddings");
        var parts = blocks.Select(k => k == Branch.Conditional ? _prompt : _negative!).ToArray();
        var joined = parts.Length == 1 ? parts[0].alias() : cat(parts, 0);
        if (joined.dtype != _dtype) joined = joined.to_type(_dtype);
        if (joined.device != _device) joined = joined.to(_device);
        return _embeddings[key] = joined.DetachFromDisposeScope();
    }

    /// <summary>SDXL's text_embeds and time_ids for a block layout (concatenated once and kept), or null for other U-Nets.</summary>
    private SdAddedConditioning? AddedFor(IReadOnlyList<Branch> blocks)
    {
        if (_xl is null) return null;
        string key = string.Concat(blocks.Select(k => k == Branch.Conditional ? 'c' : 'u'));
        if (_added.TryGetValue(key, out var a)) return a;
        long b = BatchSize;
        Tensor Rows(Tensor t) => t.shape[0] == b ? t : t.expand(b, -1);
        Tensor Join(Func<Branch, Tensor> pick)
        {
            var parts = blocks.Select(k => Rows(pick(k)).to_type(_dtype).to(_device)).ToArray();
            return (parts.Length == 1 ? parts[0].clone() : cat(parts, 0)).DetachFromDisposeScope();
        }
        var text = Join(k => k == Branch.Conditional ? _xl.PooledEmbeds : _xl.NegativePooledEmbeds
            ?? throw new PagSharpException("CFG (guidance scale > 1) on SDXL needs negative pooled prompt embeddings"));
        var ids = Join(k => k == Branch.Conditional ? _xl.TimeIds : _xl.NegativeTimeIds ?? _xl.TimeIds);
        return _added[key] = new SdAddedConditioning(text, ids);
    }

    private void CheckXl(SdXlConditioning xl, long b)
    {
        var cfg = Unet.Config;
        long idsWidth = xl.TimeIds.dim() == 2 ? xl.TimeIds.shape[1] : -1;
        foreach (var (t, name) in new[] { (xl.PooledEmbeds, "pooled prompt embeddings"), (xl.NegativePooledEmbeds, "negative pooled prompt embeddings"),
                                          (xl.TimeIds, "time ids"), (xl.NegativeTimeIds, "negative time ids") })
        {
            if (t is null) continue;
            if (t.dim() != 2 || (t.shape[0] != 1 && t.shape[0] != b))
                throw new PagSharpException($"the {name} have shape [{string.Join(",", t.shape)}]; expected [1 or {b},width] (one row, or one per latent)");
        }
        if (xl.NegativePooledEmbeds is not null && xl.NegativePooledEmbeds.shape[1] != xl.PooledEmbeds.shape[1])
            throw new PagSharpException($"negative pooled prompt embeddings have width {xl.NegativePooledEmbeds.shape[1]} but the pooled prompt embeddings {xl.PooledEmbeds.shape[1]}; they must match");
        if (xl.NegativeTimeIds is not null && xl.NegativeTimeIds.shape[1] != idsWidth)
            throw new PagSharpException($"negative time ids have {xl.NegativeTimeIds.shape[1]} entries but the time ids {idsWidth}; they must match");
        long width = xl.PooledEmbeds.shape[1] + idsWidth * cfg.AdditionTimeEmbedDim!.Value;
        if (width != cfg.ProjectionClassEmbeddingsInputDim)
            throw new PagSharpException($"pooled prompt embeddings of width {xl.PooledEmbeds.shape[1]} and {idsWidth} time ids give an added embedding of width {width}, but this UNet expects {cfg.ProjectionClassEmbeddingsInputDim} (projection_class_embeddings_input_dim; addition_time_embed_dim {cfg.AdditionTimeEmbedDim}): the base model takes 6 time ids, the refiner 5");
    }

    private static Tensor Repeat(Tensor x, int times) => times == 1 ? x : cat(Enumerable.Repeat(x, times).ToArray(), 0);

    /// <summary>The control image at the batch of the latents ([B, C, H, W]), checked against the ControlNet and the UNet.</summary>
    private static Tensor PrepareControl(SdUNet unet, SdControl control, long[] latentShape)
    {
        control.Validate();
        var cn = control.Net.Config;
        cn.CheckFits(unet.Config, "the ControlNet config");
        var img = control.Image;
        long b = latentShape[0], f = cn.ConditioningFactor;
        if (img.dim() == 3) img = img.unsqueeze(0);
        if (img.dim() != 4 || img.shape[1] != cn.ConditioningChannels)
            throw new PagSharpException($"the control image has shape [{string.Join(",", control.Image.shape)}]; this ControlNet expects [1 or {b},{cn.ConditioningChannels},H,W] (conditioning_channels {cn.ConditioningChannels})");
        if (img.shape[0] != 1 && img.shape[0] != b)
            throw new PagSharpException($"{img.shape[0]} control images for {b} latents; give one, or one per sample");
        if (img.shape[2] != latentShape[2] * f || img.shape[3] != latentShape[3] * f)
            throw new PagSharpException($"the control image is {img.shape[3]}×{img.shape[2]} but latents of {latentShape[3]}×{latentShape[2]} need a {latentShape[3] * f}×{latentShape[2] * f} control image (width×height; this ControlNet downsamples by {f}); resize it to the generation size");
        if (!img.is_floating_point())
            throw new PagSharpException($"the control image holds {img.dtype} values; expected floating-point values (0..1 for the standard SD ControlNets)");
        img = img.to_type(control.Net.parameters().First().dtype).to(control.Net.parameters().First().device);
        return img.shape[0] == b ? img.alias() : img.expand(b, -1, -1, -1).contiguous();
    }

    public void Dispose()
    {
        foreach (var e in _embeddings.Values) e.Dispose();
        _embeddings.Clear();
        foreach (var a in _added.Values) { a.TextEmbeds.Dispose(); a.TimeIds.Dispose(); }
        _added.Clear();
        _extra?.Dispose();
        _controlImage?.Dispose();
    }
}
