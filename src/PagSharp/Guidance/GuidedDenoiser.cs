using PagSharp.Attention;
using PagSharp.Denoisers;
using PagSharp.Diffusion;
using static TorchSharp.torch;

namespace PagSharp.Guidance;

/// <summary>
/// The guidance engine for every model family: none / CFG / PAG / CFG+PAG (any perturbation policy) over one
/// <see cref="IDenoiserModel"/>. The branches of a step — [uncond], cond, [perturbed cond] — run as one batched
/// forward call whose plan perturbs only the perturbed entries (or as separate calls with
/// <see cref="GuidanceSettings.SplitBatch"/>). With <see cref="GuidanceSettings.SharedPrefix"/> the perturbed block is
/// not fed in: the network forks it from the cond block at the first perturbed layer (same result, less work).
/// Formulas (in the model's output space, float32, in this order):
/// <list type="bullet">
/// <item>CFG: ε(∅) + w·(ε(c) − ε(∅))</item>
/// <item>PAG: ε + s·(ε − ε̂) (paper/diffusers), or ε̂ + g·(ε − ε̂) (official ADM code)</item>
/// <item>CFG+PAG: ε(∅) + w·(ε(c) − ε(∅)) + s·(ε(c) − ε̂(c))</item>
/// <item>then, at steps with CFG and <see cref="GuidanceSettings.GuidanceRescale"/> φ &gt; 0, diffusers'
/// <c>rescale_noise_cfg</c>.</item>
/// </list>
/// Learned variance always comes from the unperturbed conditional branch. w and s are evaluated per step from their
/// schedules and intervals at the step's model timestep; a step where CFG is off skips the unconditional branch, a
/// step where the PAG scale is 0 the perturbed one. With <see cref="GuidanceSettings.PagCacheInterval"/> N &gt; 1 the
/// perturbed branch runs only at the first of every N PAG steps of a trajectory (<see cref="PagDirectionCache"/>);
/// the others add s·Δ with the last computed Δ = ε(c) − ε̂(c) (official formula: (g − 1)·Δ, its equal).
/// </summary>
public sealed class GuidedDenoiser : IGuidedDenoiser, IDisposable
{
    private readonly IDenoiserModel _model;
    private readonly IDenoiserModel? _guide;
    private readonly GuidanceSettings _g;
    private readonly int _totalSteps;
    private readonly Generator? _policyGenerator;
    private readonly PagDirectionCache _pagCache;
    private readonly Dictionary<(bool Cfg, bool Pag), BatchLayout> _layouts = new();

    /// <param name="model">The network with its conditioning, on the denoiser contract.</param>
    /// <param name="settings">Guidance settings (validated here against the model).</param>
    /// <param name="totalSteps">Length T of the model's training process (for scale ramps).</param>
    /// <param name="policyGenerator">Random source for stochastic perturbation policies.</param>
    /// <param name="guide">The weaker model of autoguidance (same conditioning), needed when <see cref="GuidanceSettings.AutoguidanceScale"/> is set.</param>
    public GuidedDenoiser(IDenoiserModel model, GuidanceSettings settings, int totalSteps, Generator? policyGenerator = null, IDenoiserModel? guide = null)
    {
        settings.Validate();
        if (settings.UsesSag)
            throw new PagSharpException("these guidance settings use SAG: sample with a SagDenoiser (Guidance.Denoisers.Create chooses the right denoiser)");
        if (settings.UsesCfg && model.WhyNoUnconditional is { } why)
            throw new PagSharpException($"CFG (guidance scale > 1) needs an unconditional branch, but {why}. Use PAG alone, or a guidance scale ≤ 1.");
        CheckLayers(model, settings.PagLayers);
        foreach (var (layer, heads) in settings.PagHeads)
        {
            var info = model.AttentionLayers.FirstOrDefault(l => l.Name == layer)
                ?? throw new PagSharpException($"PagHeads names '{layer}', which is not a self-attention layer of this model");
            if (heads.Any(h => h < 0 || h >= info.Heads))
                throw new PagSharpException($"layer '{layer}' has {info.Heads} heads (0..{info.Heads - 1}); PagHeads asks for {string.Join(",", heads)}");
        }
        if (settings.UsesAutoguidance && guide is null)
            throw new PagSharpException("autoguidance (AutoguidanceScale) needs a guide model: a weaker version of the same model");
        if (guide is not null && guide.BatchSize != model.BatchSize)
            throw new PagSharpException($"the guide model was given {guide.BatchSize} samples' conditioning, the model {model.BatchSize}");
        _guide = guide;
        _model = model;
        _g = settings;
        _totalSteps = totalSteps;
        _policyGenerator = policyGenerator;
        _pagCache = new PagDirectionCache(settings.PagCacheInterval);
    }

    /// <summary>Throws unless every name in <paramref name="layers"/> is a perturbable layer of <paramref name="model"/>.</summary>
    public static void CheckLayers(IDenoiserModel model, IEnumerable<string> layers)
    {
        var valid = model.AttentionLayers.Select(l => l.Name).ToHashSet();
        foreach (var l in layers)
            if (!valid.Contains(l))
                throw new PagSharpException($"'{l}' is not a self-attention layer of this model; valid layers: {string.Join(", ", model.AttentionLayers.Select(a => a.Name))}");
    }

    /// <summary>
    /// One batched call's layout: the fed blocks' conditioning, how many blocks come out, and the perturbation plan.
    /// Built on first use and kept, so steps allocate none of it.
    /// </summary>
    private sealed record BatchLayout(Branch[] Fed, int Blocks, PerturbationPlan? Plan);

    private BatchLayout LayoutFor(bool cfg, bool pag)
    {
        if (_layouts.TryGetValue((cfg, pag), out var layout)) return layout;
        long b = _model.BatchSize;
        var blocks = new List<Branch>();
        if (cfg) blocks.Add(Branch.Unconditional);
        blocks.Add(Branch.Conditional);
        int nb = blocks.Count + (pag ? 1 : 0), condIdx = cfg ? 1 : 0;
        // Shared prefix: the perturbed branch equals the conditional one up to the first perturbed layer, so it is not
        // fed in; the network forks the conditional entries there (see PerturbationPlan.ForkSource).
        if (pag && !_g.SharedPrefix) blocks.Add(Branch.Conditional);
        PerturbationPlan? plan = pag ? PlanFor(Range(b * (nb - 1), b), _g.SharedPrefix ? Range(b * condIdx, b) : null) : null;
        return _layouts[(cfg, pag)] = new BatchLayout(blocks.ToArray(), nb, plan);
    }

    /// <summary>The PAG plan on the given entries: the policy at every PAG layer, on the chosen heads where <see cref="GuidanceSettings.PagHeads"/> says so.</summary>
    private PerturbationPlan PlanFor(long[]? entries, long[]? forkSource)
    {
        var plan = new PerturbationPlan { Generator = _policyGenerator, ForkSource = forkSource };
        foreach (var layer in _g.PagLayers)
            plan.Add(layer, _g.PagHeads.TryGetValue(layer, out var heads) ? new HeadSubsetPerturbation(_g.Perturbation, heads) : _g.Perturbation, entries);
        return plan;
    }

    private static long[] Range(long start, long count) => Enumerable.Range(0, (int)count).Select(i => start + i).ToArray();

    /// <summary>PAG scale at model timestep <paramref name="t"/>, or 0 when PAG is off there.</summary>
    public double PagScaleAt(double t) => _g.PagScaleAt(t, _totalSteps);

    /// <summary>CFG scale at model timestep <paramref name="t"/>, or 1 when CFG is off there.</summary>
    public double CfgScaleAt(double t) => _g.CfgScaleAt(t, _totalSteps);

    public ModelOutput Predict(Tensor x, StepContext step)
    {
        double s = GuidanceSettings.InSteps(_g.PagSteps, step.Index, step.Count) ? PagScaleAt(step.Timestep) : 0;
        double w = GuidanceSettings.InSteps(_g.GuidanceSteps, step.Index, step.Count) ? CfgScaleAt(step.Timestep) : 1;
        double sAuto = GuidanceSettings.InSteps(_g.AutoguidanceSteps, step.Index, step.Count) ? _g.AutoguidanceScale?.At(step.Timestep, _totalSteps) ?? 0 : 0;
        bool pag = s != 0, cfg = w > 1;
        bool reuse = pag && !_pagCache.ComputesAt(step.Timestep, x.shape);
        if (reuse) pag = false; // this step's perturbed branch is replaced by the cached direction
        if (!pag && !cfg && !reuse && sAuto == 0) return _model.Forward(x, step, [Branch.Conditional], null);

        long b = x.shape[0];
        // Branch order: [uncond], cond, [perturbed].
        int nb = (cfg ? 1 : 0) + 1 + (pag ? 1 : 0), condIdx = cfg ? 1 : 0;
        var outs = new Tensor[nb];
        Tensor? varValues;
        if (_g.SplitBatch)
        {
            varValues = null;
            for (int i = 0; i < nb; i++)
            {
                bool perturbed = pag && i == nb - 1;
                var plan = perturbed ? PlanFor(null, null) : null;
                var o = _model.Forward(x, step, [cfg && i == 0 ? Branch.Unconditional : Branch.Conditional], plan);
                outs[i] = o.Output;
                if (i == condIdx) varValues = o.VarValues;
            }
        }
        else
        {
            var layout = LayoutFor(cfg, pag);
            var input = layout.Fed.Length == 1 ? x : cat(Enumerable.Repeat(x, layout.Fed.Length).ToArray(), 0);
            var o = _model.Forward(input, step, layout.Fed, layout.Plan);
            var chunks = o.Output.chunk(nb, 0);
            for (int i = 0; i < nb; i++) outs[i] = chunks[i];
            varValues = o.VarValues?.chunk(nb, 0)[condIdx];
        }
        _ = b;

        var c = outs[condIdx];
        Tensor guided = !cfg ? c
            : _g.Apg is { } apg ? Apg(c, outs[0], w, apg, step)
            : _g.CfgZeroStar ? ZeroStar(c, outs[0], w)
            : outs[0] + w * (c - outs[0]);
        if (pag || reuse)
        {
            // Δ = ε(c) − ε̂(c): computed this step, or (cache interval) the last one computed.
            var direction = reuse ? _pagCache.Direction : c - outs[nb - 1];
            if (!reuse) _pagCache.Store(direction);
            if (!cfg && _g.Formula == PagFormula.Official)
                guided = reuse ? c + (s - 1) * direction : outs[nb - 1] + s * direction; // ε̂ + g·Δ = ε + (g − 1)·Δ
            else
                guided = guided + s * direction;
        }
        if (sAuto != 0)
        {
            // Autoguidance: the weaker model's conditional prediction, as its own forward call.
            var bad = _guide!.Forward(x, step, [Branch.Conditional], null).Output;
            guided = guided + sAuto * (c - bad);
        }
        if (cfg && _g.GuidanceRescale > 0) guided = RescaleNoiseCfg(guided, c, _g.GuidanceRescale);
        if (_g.CfgZeroStar && step.Index < _g.ZeroInitSteps) guided = zeros_like(guided);
        return new ModelOutput(guided, varValues);
    }

    private Tensor? _apgMomentum;

    /// <summary>APG (<see cref="ApgSettings"/>) as diffusers' <c>normalized_guidance</c>; the momentum restarts with each trajectory.</summary>
    private Tensor Apg(Tensor cond, Tensor uncond, double w, ApgSettings apg, StepContext step)
    {
        var diff = cond - uncond;
        var dims = Enumerable.Range(1, (int)diff.dim() - 1).Select(d => (long)d).ToArray();
        if (apg.Momentum is { } beta)
        {
            if (step.Index == 0 || _apgMomentum is null || !_apgMomentum.shape.SequenceEqual(diff.shape))
            {
                _apgMomentum?.Dispose();
                _apgMomentum = diff.detach().clone().DetachFromDisposeScope();
            }
            else
            {
                var avg = (diff + beta * _apgMomentum).detach().DetachFromDisposeScope();
                _apgMomentum.Dispose();
                _apgMomentum = avg;
            }
            diff = _apgMomentum.alias();
        }
        if (apg.NormThreshold > 0)
        {
            var norm = diff.square().sum(dims, keepdim: true).sqrt();
            diff = diff * minimum(ones_like(diff), apg.NormThreshold / norm);
        }
        var v0 = diff.to_type(ScalarType.Float64);
        // torch.nn.functional.normalize over all but the batch axis: x / max(‖x‖, 1e-12).
        var c64 = cond.to_type(ScalarType.Float64);
        var v1 = c64 / c64.square().sum(dims, keepdim: true).sqrt().clamp_min(1e-12);
        var parallel = (v0 * v1).sum(dims, keepdim: true) * v1;
        var orthogonal = v0 - parallel;
        var update = orthogonal.to_type(diff.dtype) + apg.Eta * parallel.to_type(diff.dtype);
        return uncond + w * update;
    }

    /// <summary>CFG-Zero*: ε(∅)·s* + w·(ε(c) − ε(∅)·s*) with s* = ⟨ε(c), ε(∅)⟩ / (‖ε(∅)‖² + 1e−8) per sample (float32).</summary>
    public static Tensor ZeroStar(Tensor cond, Tensor uncond, double w)
    {
        var c = cond.flatten(1).to_type(ScalarType.Float32);
        var u = uncond.flatten(1).to_type(ScalarType.Float32);
        var alpha = (c * u).sum(1, keepdim: true) / ((u * u).sum(1, keepdim: true) + 1e-8);
        var scaled = uncond * alpha.to_type(cond.dtype).view([-1, .. Enumerable.Repeat(1L, (int)cond.dim() - 1)]);
        return scaled + w * (cond - scaled);
    }

    /// <summary>
    /// diffusers' <c>rescale_noise_cfg</c>: x_r = x·(std(c)/std(x)) per sample (unbiased std over all but the batch
    /// axis), then φ·x_r + (1 − φ)·x.
    /// </summary>
    public static Tensor RescaleNoiseCfg(Tensor noiseCfg, Tensor noiseText, double phi)
    {
        var dims = Enumerable.Range(1, (int)noiseText.dim() - 1).Select(d => (long)d).ToArray();
        var stdText = noiseText.std(dims, unbiased: true, keepdim: true);
        var stdCfg = noiseCfg.std(dims, unbiased: true, keepdim: true);
        var rescaled = noiseCfg * (stdText / stdCfg);
        return (float)phi * rescaled + (float)(1 - phi) * noiseCfg;
    }

    public void Dispose()
    {
        _pagCache.Dispose();
        _apgMomentum?.Dispose();
    }
}
