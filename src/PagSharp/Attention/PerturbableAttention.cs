using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// The dispatch every self-attention layer goes through: normal attention for unperturbed batch entries, the plan's
/// policy for perturbed ones, and optional capture of the attention map. Entries that skip the ResBlock before the
/// layer (<see cref="SkipTarget.ResBlock"/>) get normal attention: they are no attention perturbation.
/// </summary>
public static class PerturbableAttention
{

    public static Tensor Attend(string layer, Tensor q, Tensor k, Tensor v, int height, int width, PerturbationPlan? plan, bool fused)
    {
        Tensor normal(Tensor q, Tensor k, Tensor v, bool wantMap, out Tensor? map) => AttentionMath.Attend(q, k, v, fused, wantMap, out map);
        if (plan is null || plan.IsEmpty)
            return normal(q, k, v, false, out _);

        bool capture = plan.WantsCapture(layer);
        // ResBlock skips (skip-layer guidance on the ResBlock before this layer) leave the attention itself alone.
        var entries = plan.AttentionEntriesOf(layer);
        if (entries.Count > 1) return AttendGathered(layer, q, k, v, height, width, plan, entries, capture, normal);
        if (entries.Count == 0)
        {
            var a = normal(q, k, v, capture, out var map);
            if (capture) plan.Store(layer, map!);
            return a;
        }
        var entry = entries[0];

        var ctx = new AttentionContext(layer, height, width, plan.Generator);
        long batch = q.shape[0];
        long[]? pert = entry.BatchIndices;
        if (pert is null || pert.Length == batch)
            return entry.Policy.Attend(q, k, v, ctx);

        // Mixed batch: the unperturbed entries get exactly the normal attention, the perturbed ones the policy.
        long n = pert.Length, start = batch - n;
        bool isTail = true;
        for (int i = 0; i < n && isTail; i++) isTail = pert[i] == start + i;
        if (isTail)
        {
            // The layout the guidance wrappers use: perturbed entries last. Views, no gathers.
            var an = normal(q.narrow(0, 0, start), k.narrow(0, 0, start), v.narrow(0, 0, start), capture, out var tailMap);
            var ap = entry.Policy.Attend(q.narrow(0, start, n), k.narrow(0, start, n), v.narrow(0, start, n), ctx);
            if (capture) plan.Store(layer, tailMap!);
            return cat(new[] { an, ap }, 0);
        }
        return AttendGathered(layer, q, k, v, height, width, plan, [entry], capture, normal);
    }

    /// <summary>
    /// Perturbations of one layer on disjoint, named entries (one per guidance branch: PAG, SEG, SLG, …) gathered out of
    /// the batch; normal attention on the entries none of them names.
    /// </summary>
    private static Tensor AttendGathered(string layer, Tensor q, Tensor k, Tensor v, int height, int width, PerturbationPlan plan,
                                        IReadOnlyList<PerturbationPlan.Entry> entries, bool capture, NormalFn normal)
    {
        long batch = q.shape[0];
        var ctx = new AttentionContext(layer, height, width, plan.Generator);
        var result = empty_like(v);
        var covered = new HashSet<long>();
        foreach (var e in entries)
        {
            var idx = e.BatchIndices ?? throw new PagSharpException($"layer '{layer}' has several perturbations; each must name its batch entries");
            foreach (var i in idx)
                if (i < 0 || i >= batch) throw new PagSharpException($"perturbation batch index {i} is outside the batch of {batch} at layer '{layer}'");
            covered.UnionWith(idx);
            using var pi = tensor(idx, device: q.device);
            var outp = e.Policy.Attend(q.index_select(0, pi), k.index_select(0, pi), v.index_select(0, pi), ctx);
            result.index_copy_(0, pi, outp);
        }
        long[] keep = Enumerable.Range(0, (int)batch).Select(i => (long)i).Where(i => !covered.Contains(i)).ToArray();
        if (keep.Length > 0)
        {
            using var ki = tensor(keep, device: q.device);
            var an = normal(q.index_select(0, ki), k.index_select(0, ki), v.index_select(0, ki), capture, out var map);
            result.index_copy_(0, ki, an);
            if (capture) plan.Store(layer, map!);
        }
        return result;
    }

    private delegate Tensor NormalFn(Tensor q, Tensor k, Tensor v, bool wantMap, out Tensor? map);
}
