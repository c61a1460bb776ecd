using System.Text.RegularExpressions;

namespace PagSharp.Attention;

/// <summary>
/// Resolves a layer specification to attention layer names. A spec is a comma-separated list of items; each item is
/// an exact name (<c>middle_block.1</c>), a group (<c>input</c>, <c>middle</c>, <c>output</c>, <c>all</c>), a glob
/// (<c>output_blocks.*</c>, <c>*</c> and <c>?</c>), optionally followed by a resolution filter (<c>output@16</c>,
/// <c>all@8</c>); a bare <c>@16</c> means every layer at 16×16. The result keeps the network's layer order.
/// </summary>
public static class LayerSpec
{
    public static readonly string[] Groups = { "input", "middle", "output", "all" };

    public static IReadOnlyList<string> Resolve(string spec, IReadOnlyList<AttentionLayerInfo> layers)
    {
        if (string.IsNullOrWhiteSpace(spec))
            throw new PagSharpException($"empty layer specification; valid: {Describe(layers)}");
        var chosen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var raw in spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            string item = raw;
            int? res = null;
            int at = item.IndexOf('@');
            if (at >= 0)
            {
                if (!int.TryParse(item[(at + 1)..], out int r) || r < 1)
                    throw new PagSharpException($"layer spec '{raw}': '@' must be followed by a resolution such as @16; resolutions here: {string.Join(", ", layers.Select(l => l.Resolution).Distinct())}");
                res = r;
                item = item[..at];
                if (item.Length == 0) item = "all";
            }
            var matched = layers.Where(l => Matches(item, l) && (res is null || l.Resolution == res)).ToList();
            if (matched.Count == 0)
                throw new PagSharpException($"layer spec '{raw}' matches no attention layer; valid: {Describe(layers)}");
            foreach (var l in matched) chosen.Add(l.Name);
        }
        return layers.Where(l => chosen.Contains(l.Name)).Select(l => l.Name).ToArray();
    }

    private static bool Matches(string item, AttentionLayerInfo l)
    {
        if (item == "all") return true;
        if (item is "input" or "middle" or "output") return l.Group == item;
        if (item.Contains('*') || item.Contains('?'))
            return Regex.IsMatch(l.Name, "^" + Regex.Escape(item).Replace("\\*", ".*").Replace("\\?", ".") + "$");
        return l.Name == item;
    }

    public static string Describe(IReadOnlyList<AttentionLayerInfo> layers) =>
        $"groups {string.Join(", ", Groups)}, resolution filters like @{layers.FirstOrDefault()?.Resolution ?? 16}, globs like output_blocks.*, or names {string.Join(", ", layers.Select(l => $"{l.Name} ({l.Resolution}×{l.Resolution})"))}";
}
