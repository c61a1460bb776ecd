using PagSharp.Attention;
using PagSharp.Models;
using static TorchSharp.torch;

namespace PagSharp.Guidance;

/// <summary>
/// none / CFG / PAG / CFG+PAG as one denoiser wrapper. The branches of a step — [uncond], cond, [perturbed cond] —
/// run as one batched forward call whose plan perturbs only the perturbed entries (or as separate calls with
/// <see cref="GuidanceSettings.SplitBatch"/>). Formulas (float32, in this order):
/// <list type="bullet">
/// <item>CFG: ε(∅) + w·(ε(c) − ε(∅))</item>
/// <item>PAG: ε + s·(ε − ε̂) (paper/diffusers), or ε̂ + g·(ε − ε̂) (official ADM code)</item>
/// <item>CFG+PAG: ε(∅) + w·(ε(c) − ε(∅)) + s·(ε(c) − ε̂(c))</item>
/// </list>
/// Learned variance always comes from the unperturbed conditional branch. w and s are evaluated per step from
/// their schedules and intervals (<see cref="GuidanceSettings.CfgScaleAt"/>, <see cref="GuidanceSettings.PagScaleAt"/>);
/// a step where CFG is off skips the unconditional branch. Settings with SAG belong to <see cref="SagDenoiser"/>.
/// With <see cref="GuidanceSettings.PagCacheInterval"/> N &gt; 1 the perturbed branch runs only at the first of every N
/// PAG steps of a trajectory (<see cref="PagDirectionCache"/>); the others add s·Δ with the last computed
/// Δ = ε(c) − ε̂(c) (official formula: (g − 1)·Δ, its equal).
/// </summary>
public sealed class GuidedDenoiser : IDenoiser
{
    private readonly IDiffusionModel _model;
    private readonly GuidanceSettings _g;
    private readonly Tensor? _labels;
    private readonly int _totalSteps;
    private readonly Generator? _policyGenerator;
    private readonly PagDirectionCache _pagCache;

    /// <param name="model">The network.</param>
    /// <param name="settings">Guidance settings (validated here).</param>
    /// <param name="labels">Class labels [B] for class-conditional models (the null class for unconditional sampling).</param>
    /// <param name="totalSteps">Original diffusion length T (for scale schedules).</param>
    /// <param name="policyGenerator">Random source for stochastic perturbation policies.</param>
    public GuidedDenoiser(IDiffusionModel model, GuidanceSettings settings, Tensor? labels, int totalSteps, Generator? policyGenerator = null)
    {
        settings.Validate();
        if (settings.UsesSag)
            throw new PagSharpException("these guidance settings use SAG: sample with a SagDenoiser (Sampler.CreateDenoiser chooses the right denoiser)");
        if (settings.UsesCfg && model.NullClass is null)
            throw new PagSharpException("CFG (guidance scale > 1) needs a model with a null condition (a class-conditional model trained with label dropout); this model has none. Use --pag-scale alone, or a guidance scale ≤ 1.");
        if (model.IsClassConditional && labels is null)
            throw new PagSharpException($"this model is class-conditional: give labels (0..{model.NumClasses - 1})");
        if (!model.IsClassConditional && labels is not null)
            throw new PagSharpException("this model is unconditional: it takes no labels");
        var valid = model.AttentionLayers.Select(l => l.Name).ToHashSet();
        foreach (var l in settings.PagLayers)
            if (!valid.Contains(l))
                throw new PagSharpException($"unknown attention layer '{l}'; valid layers: {string.Join(", ", valid)}");
        _model = model;
        _g = settings;
        _labels = labels;
        _totalSteps = totalSteps;
        _policyGenerator = policyGenerator;
        _pagCache = new PagDirectionCache(settings.PagCacheInterval);
    }

    /// <summary>
    /// What a batched call feeds besides x and t for one branch layout: how many copies of x, their labels, and the
    /// plan. Built on first use and kept, so steps allocate none of it.
    /// </summary>
    private sealed record BatchLayout(int Fed, Tensor? Labels, PerturbationPlan? Plan);
    private readonly Dictionary<(long B, bool Cfg, bool Pag, bool InferenceMode), BatchLayout> _layouts = new();

    private BatchLayout LayoutFor(long b, bool cfg, bool pag)
    {
        // Keyed on inference mode too: labels made there cannot enter autograd (DPS) later.
        var key = (b, cfg, pag, is_inference_mode_enabled());
        if (_layouts.TryGetValue(key, out var layout)) return layout;
        int nb = (cfg ? 1 : 0) + 1 + (pag ? 1 : 0), condIdx = cfg ? 1 : 0;
        // Shared prefix: the perturbed branch equals the conditional one up to the first perturbed layer, so it is not
        // fed in; the network forks the conditional entries there (see PerturbationPlan.ForkSource).
        int fed = pag && _g.SharedPrefix ? nb - 1 : nb;
        Tensor? labels = null;
        if (_labels is not null)
        {
            using var nullLabels = cfg ? full(b, _model.NullClass!.Value, dtype: ScalarType.Int64, device: _labels.device) : null;
            var parts = Enumerable.Repeat(_labels, fed).ToArray();
            if (nullLabels is not null) parts[0] = nullLabels;
            labels = cat(parts, 0).DetachFromDisposeScope();
        }
        PerturbationPlan? plan = null;
        if (pag)
        {
            static long[] Range(long start, long count) => Enumerable.Range(0, (int)count).Select(i => start + i).ToArray();
            plan = PerturbationPlan.Perturb(_g.PagLayers, _g.Perturbation, Range(b * (nb - 1), b), _policyGenerator,
                _g.SharedPrefix ? Range(b * condIdx, b) : null);
        }
        return _layouts[key] = new BatchLayout(fed, labels, plan);
    }

    /// <summary>PAG scale at model timestep <paramref name="t"/>, or 0 when PAG is off there.</summary>
    public double PagScaleAt(int t) => _g.PagScaleAt(t, _totalSteps);

    /// <summary>CFG scale at model timestep <paramref name="t"/>, or 1 when CFG is off there.</summary>
    public double CfgScaleAt(int t) => _g.CfgScaleAt(t, _totalSteps);

    public EpsOutput Predict(Tensor x, Tensor t)
    {
        int tv = (int)t[0].item<long>();
        double s = PagScaleAt(tv), w = CfgScaleAt(tv);
        bool pag = s != 0, cfg = w > 1;
        bool reuse = pag && !_pagCache.ComputesAt(tv, x.shape);
        if (reuse) pag = false; // this step's perturbed branch is replaced by the cached direction
        if (!pag && !cfg && !reuse) return _model.Forward(x, t, _labels, null);

        long b = x.shape[0];
        // Branch order: [uncond], cond, [perturbed].
        int nb = (cfg ? 1 : 0) + 1 + (pag ? 1 : 0), condIdx = cfg ? 1 : 0;
        var eps = new Tensor[nb];
        Tensor? varValues;
        if (_g.SplitBatch)
        {
            varValues = null;
            for (int i = 0; i < nb; i++)
            {
                bool perturbed = pag && i == nb - 1;
                var plan = perturbed ? PerturbationPlan.Perturb(_g.PagLayers, _g.Perturbation, null, _policyGenerator) : null;
                using var nullLabels = cfg && i == 0 ? full(b, _model.NullClass!.Value, dtype: ScalarType.Int64, device: x.device) : null;
                var o = _model.Forward(x, t, nullLabels ?? _labels, plan);
                eps[i] = o.Eps;
                if (i == condIdx) varValues = o.VarValues;
            }
        }
        else
        {
            var layout = LayoutFor(b, cfg, pag);
            var o = _model.Forward(cat(Enumerable.Repeat(x, layout.Fed).ToArray(), 0), t.repeat(layout.Fed), layout.Labels, layout.Plan);
            var chunks = o.Eps.chunk(nb, 0);
            for (int i = 0; i < nb; i++) eps[i] = chunks[i];
            varValues = o.VarValues?.chunk(nb, 0)[condIdx];
        }

        var epsC = eps[condIdx];
        Tensor guided = cfg ? eps[0] + w * (epsC - eps[0]) : epsC;
        if (!pag && !reuse) return new EpsOutput(guided, varValues);
        // Δ = ε(c) − ε̂(c): computed this step, or (cache interval) the last one computed.
        var direction = reuse ? _pagCache.Direction : epsC - eps[nb - 1];
        if (!reuse) _pagCache.Store(direction);
        if (!cfg && _g.Formula == PagFormula.Official)
            guided = reuse ? epsC + (s - 1) * direction : eps[nb - 1] + s * direction; // ε̂ + g·Δ = ε + (g − 1)·Δ
        else
            guided = guided + s * direction;
        return new EpsOutput(guided, varValues);
    }
}
