using System.Text.Json.Nodes;
using PagSharp.Attention;
using PagSharp.Guidance;

namespace PagSharp.Runs;

/// <summary>
/// Guidance settings as manifest entries with plain JSON values: scales as numbers, schedules as objects
/// (<c>{"type": "linear", "at_start": 3, "at_end": 1}</c>), intervals as [hi, lo], layers as name lists.
/// </summary>
public static class RunManifest
{
    public static IEnumerable<(string Key, JsonNode? Value)> Guidance(GuidanceSettings g, IReadOnlyList<AttentionLayerInfo> layers)
    {
        yield return ("guidance_scale", g.GuidanceScale);
        if (g.GuidanceSchedule is not null) yield return ("guidance_schedule", Schedule(g.GuidanceSchedule));
        if (g.GuidanceInterval is { } gi) yield return ("guidance_interval", new JsonArray(gi.Hi, gi.Lo));
        if (g.GuidanceSteps is { } gs) yield return ("guidance_steps", new JsonArray(gs.Start, gs.Stop));
        if (g.PagSteps is { } ps) yield return ("pag_steps", new JsonArray(ps.Start, ps.Stop));
        if (g.AutoguidanceSteps is { } aws) yield return ("autoguidance_steps", new JsonArray(aws.Start, aws.Stop));
        if (g.GuidanceRescale != 0) yield return ("guidance_rescale", g.GuidanceRescale);
        yield return ("pag_scale", g.PagScale is ScaleSchedule.Constant c ? c.Scale : g.PagScale is null ? 0 : null);
        if (g.PagScale is not null and not ScaleSchedule.Constant) yield return ("pag_schedule", Schedule(g.PagScale));
        if (g.UsesPag)
        {
            yield return ("pag_formula", g.Formula == PagFormula.Official ? "official" : "paper");
            yield return ("pag_layers", new JsonArray(g.PagLayers.Select(l => (JsonNode)l!).ToArray()));
            yield return ("perturbation", g.Perturbation.Spec);
            if (g.PagHeads.Count > 0)
                yield return ("pag_heads", new JsonObject(g.PagHeads.OrderBy(kv => kv.Key, StringComparer.Ordinal)
                    .Select(kv => new KeyValuePair<string, JsonNode?>(kv.Key, new JsonArray(kv.Value.Select(h => (JsonNode)h!).ToArray())))));
            if (g.PagInterval is { } pi) yield return ("pag_interval", new JsonArray(pi.Hi, pi.Lo));
            if (g.PagCacheInterval != 1) yield return ("pag_cache_interval", g.PagCacheInterval);
        }
        yield return ("split_batch", g.SplitBatch);
        if (g.Apg is { } apg)
            yield return ("apg", new JsonObject { ["eta"] = apg.Eta, ["norm_threshold"] = apg.NormThreshold, ["momentum"] = apg.Momentum });
        if (g.AutoguidanceScale is { } auto) yield return ("autoguidance_scale", Schedule(auto));
        foreach (var p in g.Perturbed)
        {
            var branch = new JsonObject
            {
                ["scale"] = Schedule(p.Scale),
                ["layers"] = new JsonArray(p.Layers.Select(l => (JsonNode)l!).ToArray()),
                ["perturbation"] = p.Policy.Spec,
            };
            if (p.Steps is { } w) branch["steps"] = new JsonArray(w.Start, w.Stop);
            yield return (p.Name, branch);
        }
        if (g.CfgZeroStar) yield return ("cfg_zero_star", new JsonObject { ["zero_init_steps"] = g.ZeroInitSteps });
        if (g.Sag is { } sag)
            yield return ("sag", new JsonObject
            {
                ["scale"] = Schedule(sag.Scale),
                ["formula"] = sag.Formula == SagFormula.Official ? "official" : "paper",
                ["layer"] = sag.Layer ?? SagDenoiser.DefaultLayer(layers),
                ["blur_sigma"] = sag.BlurSigma,
                ["kernel_size"] = sag.KernelSize,
                ["interval"] = sag.Interval is { } si ? new JsonArray(si.Hi, si.Lo) : null,
            });
    }

    /// <summary>A scale schedule as a JSON object of numbers.</summary>
    public static JsonObject Schedule(ScaleSchedule s) => s switch
    {
        ScaleSchedule.Constant c => new JsonObject { ["type"] = "constant", ["scale"] = c.Scale },
        ScaleSchedule.Linear l => new JsonObject { ["type"] = "linear", ["at_start"] = l.AtStart, ["at_end"] = l.AtEnd },
        ScaleSchedule.Adaptive a => new JsonObject { ["type"] = "adaptive", ["scale"] = a.Scale, ["rate"] = a.Rate },
        _ => throw new PagSharpException($"unknown scale schedule {s.GetType().Name}"),
    };
}
