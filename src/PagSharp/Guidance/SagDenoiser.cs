using PagSharp.Denoisers;
using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Imaging;
using PagSharp.Models;
using PagSharp.Models.Adm;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Guidance;

/// <summary>
/// Self-Attention Guidance (Hong et al., "Improving Sample Quality of Diffusion Models Using Self-Attention
/// Guidance", ICCV 2023) as a denoiser wrapper; optionally combined with CFG. Per step, at model timestep t:
/// <list type="number">
/// <item>One unperturbed forward pass (batched [uncond, cond] with CFG) captures the attention map A [B, heads, T, T]
/// of one self-attention layer (<see cref="SagSettings.Layer"/>, default <see cref="DefaultLayer"/>) through
/// <see cref="PerturbationPlan.Capture"/>; the network itself is unchanged.</item>
/// <item>Mask (<see cref="AttentionMask"/>): A averaged over heads and summed over queries gives the attention each
/// key position receives; M = 1 where that exceeds 1 (the mean), else 0; M is upsampled (nearest) from the layer's
/// token grid to the image and applies to every channel.</item>
/// <item>x̂0 = √(1/ᾱ_t)·x_t − √(1/ᾱ_t − 1)·ε, clipped to [−1, 1] when the sampler clips (the official code blurs
/// its processed <c>pred_xstart</c>); x̄0 = blur(x̂0)·M + x̂0·(1 − M) (<see cref="GaussianBlur"/>, kernel
/// <see cref="SagSettings.KernelSize"/>, σ <see cref="SagSettings.BlurSigma"/>).</item>
/// <item>Re-noise with the <b>same</b> predicted ε: x̄_t = √ᾱ_t·x̄0 + √(1 − ᾱ_t)·ε, with ᾱ_t = alphas_cumprod[t] of
/// the original (non-respaced) process — respacing keeps the original timesteps and their ᾱ, so this equals the
/// official code's q_sample on the respaced process.</item>
/// <item>ε̄ = ε_θ(x̄_t) and the guided prediction (ε̄ is the prediction on the degraded input):
/// <list type="bullet">
/// <item>paper / diffusers (<see cref="SagFormula.Paper"/>, scale s): ε̃ = ε + s·(ε − ε̄) = ε̄ + (1 + s)·(ε − ε̄);</item>
/// <item>official ADM code (<see cref="SagFormula.Official"/>, its <c>--guide_scale g</c> = 1 + s): ε̃ = ε̄ + g·(ε − ε̄);</item>
/// <item>with CFG (as diffusers' SAG pipeline): the map, x̂0, the re-noising ε and ε̄'s condition all come from the
/// <b>unconditional</b> branch, and ε̃ = ε(∅) + w·(ε(c) − ε(∅)) + s·(ε(∅) − ε̄(∅)).</item>
/// </list></item>
/// </list>
/// Learned variance comes from the unperturbed conditional branch. Steps where SAG is off (scale 0 or outside its
/// interval) are plain / CFG steps. Differences from the official ADM code: it computes the map with the model's
/// <c>num_heads</c> argument even when <c>num_head_channels</c> sets a different head count, and hard-codes the
/// map resolution per <c>sel_attn_depth</c> and 3 image channels; here the layer's real heads and grid are used.
/// </summary>
public sealed class SagDenoiser : IGuidedDenoiser, IDisposable
{
    private readonly IDenoiserModel _model;
    private readonly GuidanceSettings _g;
    private readonly SagSettings _sag;
    private readonly GuidedDenoiser _plain;
    private readonly double[] _sqrtRecipAc, _sqrtRecipM1Ac, _sqrtAc, _sqrtOneMinusAc;

    /// <param name="model">The network.</param>
    /// <param name="settings">Guidance settings with <see cref="GuidanceSettings.Sag"/> set (validated here).</param>
    /// <param name="alphasCumprod">ᾱ of the original process, indexed by model timestep (length T).</param>
    /// <param name="clipXstart">Clip x̂0 to [−1, 1] before blurring (the sampler's clip setting).</param>
    /// <param name="predictionType">What the network outputs: epsilon, or v_prediction (converted to x̂0 and ε for the degradation).</param>
    public SagDenoiser(IDenoiserModel model, GuidanceSettings settings, IReadOnlyList<double> alphasCumprod, bool clipXstart = true,
                       string predictionType = "epsilon")
    {
        if (predictionType is not ("epsilon" or "v_prediction"))
            throw new PagSharpException($"SAG supports epsilon and v_prediction models (prediction type '{predictionType}')");
        PredictionType = predictionType;
        settings.Validate();
        _sag = settings.Sag ?? throw new PagSharpException("these guidance settings have no SAG settings; use GuidedDenoiser (Sampler.CreateDenoiser chooses)");
        if (alphasCumprod.Count == 0 || alphasCumprod.Any(a => !(a > 0 && a <= 1)))
            throw new PagSharpException("SAG needs the original process's alphas_cumprod, all in (0, 1]");
        // Validates the unconditional branch and the layers exactly as for the other methods.
        _plain = new GuidedDenoiser(model, settings with { Sag = null }, alphasCumprod.Count);
        Layer = _sag.Layer ?? DefaultLayer(model.AttentionLayers);
        if (!model.AttentionLayers.Any(l => l.Name == Layer))
            throw new PagSharpException($"SAG layer '{Layer}' is not an attention layer of this model; valid: {string.Join(", ", model.AttentionLayers.Select(l => l.Name))}");
        _model = model;
        _g = settings;
        TotalSteps = alphasCumprod.Count;
        ClipXstart = clipXstart;
        _sqrtRecipAc = alphasCumprod.Select(a => Math.Sqrt(1 / a)).ToArray();
        _sqrtRecipM1Ac = alphasCumprod.Select(a => Math.Sqrt(1 / a - 1)).ToArray();
        _sqrtAc = alphasCumprod.Select(Math.Sqrt).ToArray();
        _sqrtOneMinusAc = alphasCumprod.Select(a => Math.Sqrt(1 - a)).ToArray();
    }

    /// <param name="model">The network.</param>
    /// <param name="settings">Guidance settings with <see cref="GuidanceSettings.Sag"/> set.</param>
    /// <param name="originalProcess">The model's original, non-respaced process (its ᾱ is indexed by model timestep).</param>
    /// <param name="clipXstart">Clip x̂0 before blurring.</param>
    public SagDenoiser(IDenoiserModel model, GuidanceSettings settings, GaussianDiffusion originalProcess, bool clipXstart = true)
        : this(model, settings, OriginalAlphas(originalProcess), clipXstart, "epsilon")
    {
    }

    private static double[] OriginalAlphas(GaussianDiffusion p)
    {
        if (p.NumSteps != p.OriginalSteps || p.TimestepMap.Where((t, i) => t != i).Any())
            throw new PagSharpException($"SAG needs the original, non-respaced process (ᾱ indexed by the model timestep); this one is respaced to {p.NumSteps} of {p.OriginalSteps} steps. Create it with respacing \"\".");
        return p.AlphasCumprod;
    }

    /// <summary>The layer whose attention map gives the mask.</summary>
    public string Layer { get; }
    /// <summary>What the network predicts: epsilon (ADM, most SD) or v_prediction (SD 2.x 768).</summary>
    public string PredictionType { get; }
    /// <summary>Length T of the original process.</summary>
    public int TotalSteps { get; }
    public bool ClipXstart { get; }

    /// <summary>
    /// The default SAG layer, following the official ADM code (<c>sel_attn_block="output"</c>, <c>sel_attn_depth=2</c>,
    /// i.e. <c>output_blocks[2]</c>'s attention): <c>output_blocks.2.1</c> when that layer exists and lies at the
    /// smallest output resolution — true for every released ADM model with attention at its lowest resolution
    /// (num_res_blocks 2 or 3) — otherwise the first output-block attention layer at the smallest resolution (the
    /// middle block's when there is none in the output blocks).
    /// </summary>
    public static string DefaultLayer(IReadOnlyList<AttentionLayerInfo> layers)
    {
        var outputs = layers.Where(l => l.Group == "output").ToList();
        if (outputs.Count == 0) outputs = layers.Where(l => l.Group == "middle").ToList();
        if (outputs.Count == 0)
            throw new PagSharpException($"SAG needs a self-attention layer in the output or middle blocks for its default layer; this model has: {(layers.Count == 0 ? "none" : string.Join(", ", layers.Select(l => l.Name)))}");
        int minRes = outputs.Min(l => l.Resolution);
        var official = outputs.FirstOrDefault(l => l.Name == "output_blocks.2.1" && l.Resolution == minRes);
        return (official ?? outputs.First(l => l.Resolution == minRes)).Name;
    }

    /// <summary>Throws a <see cref="PagSharpException"/> when the blur kernel does not fit images of this size.</summary>
    public void CheckImageSize(long height, long width)
    {
        long half = _sag.KernelSize / 2;
        if (half >= height || half >= width)
            throw new PagSharpException($"SAG blur kernel size {_sag.KernelSize} is too large for {height}×{width} images (reflect padding needs kernel/2 < the image size); use SagSettings.KernelSize ≤ {2 * (Math.Min(height, width) - 1) + 1}");
    }

    /// <summary>
    /// SAG's mask from attention maps <paramref name="map"/> [B, heads, T, T] (rows = queries, softmax over keys):
    /// mean over heads, sum over queries, &gt; 1, as [B, 1, H, W] float (0/1) upsampled with nearest-neighbour
    /// interpolation to <paramref name="imageHeight"/>×<paramref name="imageWidth"/>. The token grid is the image
    /// downsampled by an integer factor d with (H/d)·(W/d) = T.
    /// </summary>
    public static Tensor AttentionMask(Tensor map, long imageHeight, long imageWidth)
    {
        if (map.dim() != 4 || map.shape[2] != map.shape[3])
            throw new PagSharpException($"SAG expects attention maps [B, heads, T, T] (got [{string.Join(",", map.shape)}])");
        long b = map.shape[0], t = map.shape[2];
        var (gh, gw) = TokenGrid(t, imageHeight, imageWidth);
        var received = map.mean(new long[] { 1 }).sum(1); // [B, T]: attention each key receives, summed over queries
        var mask = (received > 1.0).to_type(ScalarType.Float32).reshape(b, 1, gh, gw);
        return nn.functional.interpolate(mask, size: new[] { imageHeight, imageWidth }, mode: InterpolationMode.Nearest);
    }

    /// <summary>The token grid (H/d, W/d) of a layer with <paramref name="tokens"/> tokens for H×W images.</summary>
    public static (long Height, long Width) TokenGrid(long tokens, long imageHeight, long imageWidth)
    {
        long d = (long)Math.Round(Math.Sqrt((double)imageHeight * imageWidth / tokens));
        if (d < 1 || imageHeight % d != 0 || imageWidth % d != 0 || (imageHeight / d) * (imageWidth / d) != tokens)
            throw new PagSharpException($"cannot place {tokens} attention tokens on a grid that downsamples {imageHeight}×{imageWidth} images by an integer factor");
        return (imageHeight / d, imageWidth / d);
    }

    /// <summary>x̄0 = blur(x0)·M + x0·(1 − M) with SAG's Gaussian blur; <paramref name="mask"/> broadcasts over channels.</summary>
    public static Tensor BlurMasked(Tensor x0, Tensor mask, int kernelSize, double sigma)
    {
        var blurred = GaussianBlur.Apply(x0, kernelSize, sigma);
        return blurred * mask + x0 * (1 - mask);
    }

    /// <summary>
    /// The degraded input x̄_t for x_t <paramref name="x"/> at model timesteps <paramref name="t"/> [B], given the
    /// branch's ε and attention map (steps 2–4 of the class description).
    /// </summary>
    public Tensor DegradedInput(Tensor x, Tensor t, Tensor eps, Tensor map)
    {
        int r = (int)x.dim();
        Tensor x0;
        if (PredictionType == "v_prediction")
        {
            // The branch output is v: x̂0 = √ᾱ·x − √(1−ᾱ)·v and ε = √ᾱ·v + √(1−ᾱ)·x (diffusers' SAG pipeline).
            var a = GaussianDiffusion.Extract(_sqrtAc, t, r);
            var s = GaussianDiffusion.Extract(_sqrtOneMinusAc, t, r);
            x0 = a * x - s * eps;
            eps = a * eps + s * x;
        }
        else x0 = GaussianDiffusion.Extract(_sqrtRecipAc, t, r) * x - GaussianDiffusion.Extract(_sqrtRecipM1Ac, t, r) * eps;
        if (ClipXstart) x0 = x0.clamp(-1, 1);
        var mask = AttentionMask(map, x.shape[^2], x.shape[^1]);
        var x0Bar = BlurMasked(x0, mask, _sag.KernelSize, _sag.BlurSigma);
        return GaussianDiffusion.Extract(_sqrtAc, t, r) * x0Bar + GaussianDiffusion.Extract(_sqrtOneMinusAc, t, r) * eps;
    }

    /// <summary>SAG scale at model timestep <paramref name="t"/> (in the settings' convention), or 0 when SAG is off there.</summary>
    public double SagScaleAt(double t) => _g.SagScaleAt(t, TotalSteps);

    public ModelOutput Predict(Tensor x, StepContext step)
    {
        double tv = step.Timestep;
        if (tv != Math.Floor(tv) || tv < 0 || tv >= TotalSteps)
            throw new PagSharpException($"SAG needs whole model timesteps in 0..{TotalSteps - 1} (got {tv}); sample with ddpm or ddim");
        double s = SagScaleAt(tv);
        if (s == 0) return _plain.Predict(x, step);
        double w = _g.CfgScaleAt(tv, TotalSteps);
        using var t = full(x.shape[0], (long)tv, dtype: ScalarType.Int64, device: x.device);
        bool cfg = w > 1;
        CheckImageSize(x.shape[^2], x.shape[^1]);

        long b = x.shape[0];
        Tensor epsC, epsGuide, map;
        Tensor? epsU = null, varValues, owned = null;
        Branch guide;
        try
        {
            if (cfg)
            {
                guide = Branch.Unconditional;
                if (_g.SplitBatch)
                {
                    var plan = new PerturbationPlan().Capture(Layer);
                    var oU = _model.Forward(x, step, [Branch.Unconditional], plan);
                    map = owned = plan.TakeCaptured(Layer);
                    var oC = _model.Forward(x, step, [Branch.Conditional], null);
                    epsU = oU.Output; epsC = oC.Output; varValues = oC.VarValues;
                }
                else
                {
                    var plan = new PerturbationPlan().Capture(Layer);
                    var o = _model.Forward(cat(new[] { x, x }, 0), step, [Branch.Unconditional, Branch.Conditional], plan);
                    using var maps = plan.TakeCaptured(Layer);
                    map = maps.narrow(0, 0, b);
                    var chunks = o.Output.chunk(2, 0);
                    epsU = chunks[0]; epsC = chunks[1];
                    varValues = o.VarValues?.chunk(2, 0)[1];
                }
                epsGuide = epsU;
            }
            else
            {
                guide = Branch.Conditional;
                var plan = new PerturbationPlan().Capture(Layer);
                var o = _model.Forward(x, step, [Branch.Conditional], plan);
                map = owned = plan.TakeCaptured(Layer);
                epsC = epsGuide = o.Output;
                varValues = o.VarValues;
            }

            var xBar = DegradedInput(x, t, epsGuide, map);
            var epsBar = _model.Forward(xBar, step, [guide], null).Output;

            Tensor guided;
            if (cfg)
                guided = epsU! + w * (epsC - epsU!) + s * (epsU! - epsBar);
            else if (_sag.Formula == SagFormula.Official)
                guided = epsBar + s * (epsC - epsBar);
            else
                guided = epsC + s * (epsC - epsBar);
            return new ModelOutput(guided, varValues);
        }
        finally
        {
            owned?.Dispose(); // a captured map (ownership passes to the caller of TakeCaptured)
        }
    }

    public void Dispose() => _plain.Dispose();
}
