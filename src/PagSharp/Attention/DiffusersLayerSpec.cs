using System.Text.RegularExpressions;

namespace PagSharp.Attention;

/// <summary>
/// Resolves <c>--pag-layers</c> for a diffusers U-Net (self-attention layers named like
/// <c>mid_block.attentions.0.transformer_blocks.0.attn1</c>). A spec is a comma-separated list; each item is, in this
/// order of precedence:
/// <list type="number">
/// <item>an exact layer name;</item>
/// <item>a PagSharp group — <c>input</c>, <c>middle</c>, <c>output</c>, <c>all</c> — optionally with a resolution
/// filter (<c>output@16</c>, <c>@8</c>);</item>
/// <item>a glob with <c>*</c> / <c>?</c> matched against the whole name (when it matches something);</item>
/// <item>a diffusers <c>pag_applied_layers</c> entry: a regular expression found anywhere in the name
/// (<c>re.search</c>), e.g. <c>mid</c>, <c>down_blocks.1</c>, <c>up_blocks.0.attentions.1</c>,
/// <c>down_blocks\.2\.attentions\.0</c>. As in diffusers, <c>.</c> is a wildcard and <c>blocks.1</c> also matches
/// <c>blocks.10</c>; only self-attention (attn1) layers are candidates.</item>
/// </list>
/// An item that matches nothing is an error that lists the self-attention layers. The result keeps the network's
/// layer order.
/// </summary>
public static class DiffusersLayerSpec
{
    /// <summary>
    /// How a diffusers identifier matches (step 4 above): <see cref="LayerMatch.Diffusers"/> searches it as a regular
    /// expression, as diffusers does (<c>blocks.1</c> also matches <c>blocks.10</c>, which diffusers' issue tracker
    /// reports as a bug; kept for parity); <see cref="LayerMatch.Exact"/> takes it literally as a whole dotted prefix of
    /// the name (<c>down_blocks.1</c> matches <c>down_blocks.1.…</c> only), with <c>mid</c>, <c>down</c>, <c>up</c>
    /// standing for <c>mid_block</c>, <c>down_blocks</c>, <c>up_blocks</c>.
    /// </summary>
    public static IReadOnlyList<string> Resolve(string spec, IReadOnlyList<AttentionLayerInfo> layers, LayerMatch match)
    {
        if (match == LayerMatch.Diffusers) return Resolve(spec, layers);
        if (string.IsNullOrWhiteSpace(spec))
            throw new PagSharpException($"empty layer specification; {Describe(layers)}");
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var item in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            string prefix = item switch { "mid" => "mid_block", "down" => "down_blocks", "up" => "up_blocks", _ => item };
            bool special = item is "all" or "input" or "middle" or "output" || item.Contains('@') || item.Contains('*') || item.Contains('?');
            var matched = special ? Match(item, layers)
                : layers.Where(l => l.Name == prefix || l.Name.StartsWith(prefix + ".", StringComparison.Ordinal)).Select(l => l.Name).ToList();
            if (matched.Count == 0)
                throw new PagSharpException($"PAG layer '{item}' matches no self-attention layer as an exact dotted prefix (regular expressions need the diffusers matching mode); {Describe(layers)}");
            chosen.UnionWith(matched);
        }
        return layers.Where(l => chosen.Contains(l.Name)).Select(l => l.Name).ToArray();
    }

    public static IReadOnlyList<string> Resolve(string spec, IReadOnlyList<AttentionLayerInfo> layers)
    {
        if (string.IsNullOrWhiteSpace(spec))
            throw new PagSharpException($"empty layer specification; {Describe(layers)}");
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var item in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            var matched = Match(item, layers);
            if (matched.Count == 0)
                throw new PagSharpException($"PAG layer '{item}' matches no self-attention layer; {Describe(layers)}");
            chosen.UnionWith(matched);
        }
        return layers.Where(l => chosen.Contains(l.Name)).Select(l => l.Name).ToArray();
    }

    private static List<string> Match(string item, IReadOnlyList<AttentionLayerInfo> layers)
    {
        if (layers.Any(l => l.Name == item)) return new List<string> { item };

        string group = item;
        int? res = null;
        int at = item.IndexOf('@');
        if (at >= 0 && int.TryParse(item[(at + 1)..], out int r) && r > 0)
        {
            res = r;
            group = at == 0 ? "all" : item[..at];
        }
        if (group is "all" or "input" or "middle" or "output")
            return layers.Where(l => (group == "all" || l.Group == group) && (res is null || l.Resolution == res)).Select(l => l.Name).ToList();

        if (item.Contains('*') || item.Contains('?'))
        {
            var glob = new Regex("^" + Regex.Escape(item).Replace("\\*", ".*").Replace("\\?", ".") + "$", RegexOptions.CultureInvariant);
            var g = layers.Where(l => glob.IsMatch(l.Name)).Select(l => l.Name).ToList();
            if (g.Count > 0) return g;
        }

        Regex re;
        try
        {
            re = new Regex(item, RegexOptions.CultureInvariant, TimeSpan.FromSeconds(1));
        }
        catch (ArgumentException e)
        {
            throw new PagSharpException($"PAG layer '{item}' is neither a layer name, a group, a glob nor a valid regular expression ({e.Message}); {Describe(layers)}", e);
        }
        return layers.Where(l => re.IsMatch(l.Name)).Select(l => l.Name).ToList();
    }

    public static string Describe(IReadOnlyList<AttentionLayerInfo> layers) =>
        "give diffusers identifiers (mid, down_blocks.1, up_blocks.0.attentions.1, or any regular expression searched in the names), " +
        "groups input, middle, output, all (optionally @RES), globs, or exact names; the self-attention layers are: " +
        string.Join(", ", layers.Select(l => l.Name));
}

/// <summary>How diffusers-style layer identifiers match layer names (<see cref="DiffusersLayerSpec.Resolve(string, IReadOnlyList{AttentionLayerInfo}, LayerMatch)"/>).</summary>
public enum LayerMatch
{
    /// <summary>Literal whole dotted prefixes (the CLI's default).</summary>
    Exact,
    /// <summary>Regular expressions searched in the names, as diffusers' <c>pag_applied_layers</c> (parity).</summary>
    Diffusers,
}
