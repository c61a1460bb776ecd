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
    private readonly ScalarType _dtype;

    /// <param name="unet">The U-Net.</param>
    /// <param name="promptEmbeds">Text conditioning [B, S, D].</param>
    /// <param name="negativeEmbeds">Unconditional embeddings [B, S, D] (needed for CFG).</param>
    /// <param name="latentShape">[B, C, h, w] of the latents (checks the control image).</param>
    /// <param name="control">Optional ControlNet with its image and settings.</param>
    public UNetDenoiser(SdUNet unet, Tensor promptEmbeds, Tensor? negativeEmbeds, long[] latentShape, SdControl? control = null)
    {
        Unet = unet;
        var cfg = unet.Config;
        if (latentShape.Length != 4 || latentShape[1] != cfg.InChannels)
            throw new PagSharpException($"initial latents have shape [{string.Join(",", latentShape)}]; this UNet expects [N,{cfg.InChannels},H,W]");
        long d = cfg.CrossAttentionDim[0];
        if (promptEmbeds.dim() != 3 || promptEmbeds.shape[2] != d)
            throw new PagSharpException($"prompt embeddings have shape [{string.Join(",", promptEmbeds.shape)}]; this UNet expects [N,S,{d}] (cross_attention_dim {d})");
        if (promptEmbeds.shape[0] != latentShape[0])
            throw new PagSharpException($"{promptEmbeds.shape[0]} prompt embeddings for {latentShape[0]} latents; give one per sample");
        if (negativeEmbeds is not null && !negativeEmbeds.shape.SequenceEqual(promptEmbeds.shape))
            throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", negativeEmbeds.shape)}] but the prompt embeddings [{string.Join(",", promptEmbeds.shape)}]; they must match (as diffusers requires)");
        _prompt = promptEmbeds;
        _dtype = unet.parameters().First().dtype;
        _negative = negativeEmbeds;
        _control = control;
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
        using var tt = tensor((float)step.Timestep);
        ControlNetResiduals? residuals = null;
        try
        {
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
                        Repeat(_controlImage!, (int)(rest / b)), scale, true);
                    residuals = new ControlNetResiduals(
                        part.Down.Select(dn => cat(new[] { zeros(Shape(dn, skip), dtype: dn.dtype, device: dn.device), dn }, 0)).ToList(),
                        cat(new[] { zeros(Shape(part.Mid, skip), dtype: part.Mid.dtype, device: part.Mid.device), part.Mid }, 0));
                }
                else
                    residuals = _control.Net.Forward(xIn, tt, emb, Repeat(_controlImage!, blocks.Count), scale, _control.EffectiveGuessMode);
            }
            var o = Unet.Forward(xIn, tt, emb, plan, residuals);
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
        return _embeddings[key] = joined.DetachFromDisposeScope();
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
        img = img.to_type(control.Net.parameters().First().dtype);
        return img.shape[0] == b ? img.alias() : img.expand(b, -1, -1, -1).contiguous();
    }

    public void Dispose()
    {
        foreach (var e in _embeddings.Values) e.Dispose();
        _embeddings.Clear();
        _controlImage?.Dispose();
    }
}
