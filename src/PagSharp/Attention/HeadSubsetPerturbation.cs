using static TorchSharp.torch;

namespace PagSharp.Attention;

/// <summary>
/// Per-head perturbation (<c>--pag-layers middle_block.1:h0,h3</c>): the inner policy on the chosen heads only, normal
/// attention softmax((q·s)(k·s)ᵀ)·v on the others. Heads are numbered from 0 in the layer's head order.
/// </summary>
public sealed class HeadSubsetPerturbation : IAttentionPerturbation
{
    public HeadSubsetPerturbation(IAttentionPerturbation inner, IReadOnlyList<int> heads)
    {
        if (heads.Count == 0) throw new PagSharpException("a per-head perturbation needs at least one head");
        if (heads.Any(h => h < 0)) throw new PagSharpException($"head indices must be ≥ 0 (got {string.Join(",", heads)})");
        if (inner is SkipPerturbation { PerturbsAttention: false })
            throw new PagSharpException($"'{inner.Spec}' skips a ResBlock, not attention heads: it cannot be limited to heads");
        Inner = inner;
        Heads = heads.Distinct().Order().ToArray();
    }

    public IAttentionPerturbation Inner { get; }
    public IReadOnlyList<int> Heads { get; }

    public string Spec => Inner.Spec + "@h" + string.Join(",h", Heads);

    public Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionContext context)
    {
        long heads = q.shape[1];
        if (Heads[^1] >= heads)
            throw new PagSharpException($"layer '{context.Layer}' has {heads} heads (0..{heads - 1}); head {Heads[^1]} does not exist");
        using var idx = tensor(Heads.Select(h => (long)h).ToArray(), device: q.device);
        var result = AttentionMath.Normal(q, k, v);
        var perturbed = Inner.Attend(q.index_select(1, idx), k.index_select(1, idx), v.index_select(1, idx), context);
        return result.index_copy(1, idx, perturbed);
    }
}

/// <summary>Splits a layer spec with per-head items (<c>middle_block.1:h0,h3,output@16</c>) into the plain spec and the heads per item.</summary>
public static class HeadSpec
{
    /// <summary>
    /// The spec without head suffixes, and for each item that had them its heads: <c>a:h0,h3,b</c> → (<c>a,b</c>,
    /// {a: [0, 3]}). A token <c>hN</c> right after a <c>layer:hM</c> item adds head N to that item.
    /// </summary>
    public static (string Spec, IReadOnlyDictionary<string, int[]> Heads) Split(string spec)
    {
        var items = new List<string>();
        var heads = new Dictionary<string, List<int>>(StringComparer.Ordinal);
        string? current = null;
        foreach (var raw in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (current is not null && IsHead(raw, out int more)) { heads[current].Add(more); continue; }
            int colon = raw.IndexOf(':');
            if (colon > 0 && IsHead(raw[(colon + 1)..], out int h))
            {
                current = raw[..colon];
                items.Add(current);
                if (!heads.TryGetValue(current, out var list)) heads[current] = list = new List<int>();
                list.Add(h);
                continue;
            }
            if (colon >= 0) throw new PagSharpException($"layer spec item '{raw}': heads are written layer:h0,h3 (h and a head index)");
            current = null;
            items.Add(raw);
        }
        return (string.Join(",", items), heads.ToDictionary(kv => kv.Key, kv => kv.Value.ToArray()));
    }

    private static bool IsHead(string token, out int head)
    {
        head = -1;
        return token.Length > 1 && token[0] == 'h' && int.TryParse(token[1..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out head);
    }
}
