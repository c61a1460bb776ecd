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
/// <item>each further perturbed branch j (<see cref="GuidanceSettings.Perturbed"/>: SEG, SLG): + s_j·(ε(c) − ε̃_j(c)),
/// as its own block of the batch</item>
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
    private readonly Dictionary<(bool Cfg, bool Pag, int Extras), BatchLayout> _layouts = new();

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
        foreach (var p in settings.Perturbed) CheckLayers(model, p.Layers);
        if (settings.Perturbed.Count > 30) throw new PagSharpException("at most 30 SEG/SLG branches are supported");
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

    /// <summary>
    /// Blocks, in order: [uncond], cond, [PAG], then one block per active extra branch (bit j of
    /// <paramref name="extras"/> = <see cref="GuidanceSettings.Perturbed"/>[j]). Each perturbed block gets its own
    /// plan entries; with a shared prefix none of them is fed in and the network forks one copy of the conditional
    /// block per perturbed block at the first perturbed layer.
    /// </summary>
    private BatchLayout LayoutFor(bool cfg, bool pag, int extras)
    {
        if (_layouts.TryGetValue((cfg, pag, extras), out var layout)) return layout;
        long b = _model.BatchSize;
        var blocks = new List<Branch>();
        if (cfg) blocks.Add(Branch.Unconditional);
        blocks.Add(Branch.Conditional);
        int condIdx = cfg ? 1 : 0, fed = blocks.Count;
        var active = ActiveExtras(extras);
        int perturbed = (pag ? 1 : 0) + active.Count, nb = fed + perturbed;
        if (!_g.SharedPrefix)
            for (int i = 0; i < perturbed; i++) blocks.Add(Branch.Conditional);
        PerturbationPlan? plan = null;
        if (perturbed > 0)
        {
            long[]? fork = _g.SharedPrefix ? Enumerable.Repeat(Range(b * condIdx, b), perturbed).SelectMany(r => r).ToArray() : null;
            plan = new PerturbationPlan { Generator = _policyGenerator, ForkSource = fork };
            int block = fed;
            if (pag) AddPag(plan, Range(b * block++, b));
            foreach (var p in active) AddExtra(plan, p, Range(b * block++, b));
        }
        return _layouts[(cfg, pag, extras)] = new BatchLayout(blocks.ToArray(), nb, plan);
    }

    private List<PerturbedGuidance> ActiveExtras(int mask) =>
        _g.Perturbed.Where((_, j) => (mask & (1 << j)) != 0).ToList();

    private static void AddExtra(PerturbationPlan plan, PerturbedGuidance p, long[]? entries)
    {
        foreach (var layer in p.Layers) plan.Add(layer, p.Policy, entries);
    }

    /// <summary>The PAG plan on the given entries: the policy at every PAG layer, on the chosen heads where <see cref="GuidanceSettings.PagHeads"/> says so.</summary>
    private PerturbationPlan PlanFor(long[]? entries, long[]? forkSource)
    {
        var plan = new PerturbationPlan { Generator = _policyGenerator, ForkSource = forkSource };
        AddPag(plan, entries);
        return plan;
    }

    private void AddPag(PerturbationPlan plan, long[]? entries)
    {
        foreach (var layer in _g.PagLayers)
            plan.Add(layer, _g.PagHeads.TryGetValue(layer, out var heads) ? new HeadSubsetPerturbation(_g.Perturbation, heads) : _g.Perturbation, entries);
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
        // Extra perturbed branches (SEG, SLG): their scales this step and the mask of those that run.
        var extraScales = new double[_g.Perturbed.Count];
        int extras = 0;
        for (int j = 0; j < extraScales.Length; j++)
        {
            var p = _g.Perturbed[j];
            extraScales[j] = GuidanceSettings.InSteps(p.Steps, step.Index, step.Count) ? p.Scale.At(step.Timestep, _totalSteps) : 0;
            if (extraScales[j] != 0) extras |= 1 << j;
        }
        if (!pag && !cfg && !reuse && sAuto == 0 && extras == 0) return _model.Forward(x, step, [Branch.Conditional], null);

        // Branch order: [uncond], cond, [PAG], [extra branches in settings order].
        var activeExtras = ActiveExtras(extras);
        int pagIdx = (cfg ? 1 : 0) + 1, nb = pagIdx + (pag ? 1 : 0) + activeExtras.Count, condIdx = cfg ? 1 : 0;
        var outs = new Tensor[nb];
        Tensor? varValues;
        if (_g.SplitBatch)
        {
            varValues = null;
            for (int i = 0; i < nb; i++)
            {
                PerturbationPlan? plan = null;
                if (pag && i == pagIdx) plan = PlanFor(null, null);
                else if (i >= pagIdx)
                {
                    plan = new PerturbationPlan { Generator = _policyGenerator };
                    AddExtra(plan, activeExtras[i - pagIdx - (pag ? 1 : 0)], null);
                }
                var o = _model.Forward(x, step, [cfg && i == 0 ? Branch.Unconditional : Branch.Conditional], plan);
                outs[i] = o.Output;
                if (i == condIdx) varValues = o.VarValues;
            }
        }
        else
        {
            var layout = LayoutFor(cfg, pag, extras);
            var input = layout.Fed.Length == 1 ? x : cat(Enumerable.Repeat(x, layout.Fed.Length).ToArray(), 0);
            var o = _model.Forward(input, step, layout.Fed, layout.Plan);
            var chunks = o.Output.chunk(nb, 0);
            for (int i = 0; i < nb; i++) outs[i] = chunks[i];
            varValues = o.VarValues?.chunk(nb, 0)[condIdx];
        }

        var c = outs[condIdx];
        Tensor guided = !cfg ? c
            : _g.Apg is { } apg ? Apg(c, outs[0], w, apg, step)
            : _g.CfgZeroStar ? ZeroStar(c, outs[0], w)
            : outs[0] + w * (c - outs[0]);
        if (pag || reuse)
        {
            // Δ = ε(c) − ε̂(c): computed this step, or (cache interval) the last one computed.
            var direction = reuse ? _pagCache.Direction : c - outs[pagIdx];
            if (!reuse) _pagCache.Store(direction);
            if (!cfg && _g.Formula == PagFormula.Official)
                guided = reuse ? c + (s - 1) * direction : outs[pagIdx] + s * direction; // ε̂ + g·Δ = ε + (g − 1)·Δ
            else
                guided = guided + s * direction;
        }
        // SEG / SLG: + s_j·(ε(c) − ε̃_j(c)) for each extra branch that ran.
        for (int j = 0, k = pagIdx + (pag ? 1 : 0); j < extraScales.Length; j++)
            if ((extras & (1 << j)) != 0)
                guided = guided + extraScales[j] * (c - outs[k++]);
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
