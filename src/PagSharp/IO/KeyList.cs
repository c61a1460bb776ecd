namespace PagSharp.IO;

/// <summary>Formats the keys a file does have, for "no such key" messages.</summary>
internal static class KeyList
{
    public const int Shown = 20;

    /// <summary>"It has N tensors: 'a', 'b', … (and M more)." or "It has no tensors."</summary>
    public static string Describe(IEnumerable<string> keys, string noun = "tensors")
    {
        var all = keys.ToList();
        if (all.Count == 0) return $"It has no {noun}.";
        string shown = string.Join(", ", all.Take(Shown).Select(k => $"'{k}'"));
        string more = all.Count > Shown ? $", ... ({all.Count - Shown} more)" : "";
        return $"It has {all.Count} {noun}: {shown}{more}.";
    }
}
