using System.Globalization;
using System.Text.Json;

namespace PagSharp.IO;

/// <summary>
/// Typed reads from a diffusers / transformers <c>config.json</c> object with that library's defaults for absent or
/// null keys, and errors that name the file and the key.
/// </summary>
internal sealed class JsonConfig
{
    private readonly JsonElement _root;

    public JsonConfig(JsonElement root, string source)
    {
        if (root.ValueKind != JsonValueKind.Object)
            throw new PagSharpException($"{source}: expected a JSON object, got {root.ValueKind}");
        _root = root;
        Source = source;
    }

    public string Source { get; }

    /// <summary>Parses <paramref name="json"/>; a syntax error becomes a <see cref="PagSharpException"/> naming the file.</summary>
    public static JsonConfig Parse(string json, string source)
    {
        // Python's json module writes Infinity / -Infinity / NaN bare (e.g. lambda_min_clipped); read them as strings.
        json = System.Text.RegularExpressions.Regex.Replace(json, @"(:\s*)(-?Infinity|NaN)(\s*[,}\]])", "$1\"$2\"$3");
        try
        {
            using var doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            return new JsonConfig(doc.RootElement.Clone(), source);
        }
        catch (JsonException e)
        {
            throw new PagSharpException($"{source}: not valid JSON: {e.Message}", e);
        }
    }

    public static JsonConfig Load(string path)
    {
        if (!File.Exists(path)) throw new PagSharpException($"{path} does not exist");
        return Parse(File.ReadAllText(path), path);
    }

    public bool Has(string key) => _root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null;

    public JsonElement? Get(string key) => _root.TryGetProperty(key, out var v) && v.ValueKind != JsonValueKind.Null ? v : null;

    public PagSharpException Error(string key, string expected, JsonElement? got = null) =>
        new($"{Source}: '{key}' must be {expected}" + (got is { } g ? $" (got {g.GetRawText()})" : ""));

    public int Int(string key, int fallback) => Get(key) is { } v ? AsInt(key, v) : fallback;

    public int? IntOrNull(string key) => Get(key) is { } v ? AsInt(key, v) : null;

    public double Double(string key, double fallback) => Get(key) is { } v ? v.ValueKind switch
    {
        JsonValueKind.Number => v.GetDouble(),
        JsonValueKind.String when v.GetString() == "Infinity" => double.PositiveInfinity,
        JsonValueKind.String when v.GetString() == "-Infinity" => double.NegativeInfinity,
        JsonValueKind.String when v.GetString() == "NaN" => double.NaN,
        _ => throw Error(key, "a number", v),
    } : fallback;

    public double? DoubleOrNull(string key) => Has(key) ? Double(key, 0) : null;

    public bool Bool(string key, bool fallback) =>
        Get(key) is { } v ? v.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Error(key, "true or false", v),
        } : fallback;

    public string String(string key, string fallback) => StringOrNull(key) ?? fallback;

    public string? StringOrNull(string key) =>
        Get(key) is { } v ? v.ValueKind == JsonValueKind.String ? v.GetString()! : throw Error(key, "a string", v) : null;

    public string[] Strings(string key, string[] fallback)
    {
        if (Get(key) is not { } v) return fallback;
        if (v.ValueKind != JsonValueKind.Array) throw Error(key, "a list of strings", v);
        return v.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.String ? e.GetString()! : throw Error(key, "a list of strings", v)).ToArray();
    }

    /// <summary>An int list, or one int repeated <paramref name="count"/> times (diffusers' "int or tuple" options).</summary>
    public int[] IntOrList(string key, int count, int[] fallback)
    {
        if (Get(key) is not { } v) return fallback.Length == 1 ? Enumerable.Repeat(fallback[0], count).ToArray() : fallback;
        if (v.ValueKind == JsonValueKind.Number) return Enumerable.Repeat(AsInt(key, v), count).ToArray();
        if (v.ValueKind != JsonValueKind.Array) throw Error(key, $"an integer or a list of {count} integers", v);
        var list = v.EnumerateArray().Select(e => AsInt(key, e)).ToArray();
        if (list.Length != count) throw Error(key, $"an integer or a list of {count} integers (one per block)", v);
        return list;
    }

    public int[] Ints(string key, int[] fallback)
    {
        if (Get(key) is not { } v) return fallback;
        if (v.ValueKind != JsonValueKind.Array) throw Error(key, "a list of integers", v);
        return v.EnumerateArray().Select(e => AsInt(key, e)).ToArray();
    }

    private int AsInt(string key, JsonElement v)
    {
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) < int.MaxValue) return (int)d;
        throw Error(key, "an integer", v);
    }

    /// <summary>Rejects a key whose value differs from the only one this port implements.</summary>
    public void RequireDefault(string key, object? supported, string? why = null)
    {
        var v = Get(key);
        bool ok = supported switch
        {
            null => v is null,
            bool b => v is null || (v.Value.ValueKind is JsonValueKind.True or JsonValueKind.False && v.Value.GetBoolean() == b),
            string s => v is null || (v.Value.ValueKind == JsonValueKind.String && v.Value.GetString() == s),
            double d => v is null || (v.Value.ValueKind == JsonValueKind.Number && v.Value.GetDouble() == d),
            int i => v is null || (v.Value.ValueKind == JsonValueKind.Number && v.Value.GetDouble() == i),
            _ => throw new ArgumentException(nameof(supported)),
        };
        if (!ok)
            throw new PagSharpException($"{Source}: '{key}' = {v!.Value.GetRawText()} is not supported by this port (only {Describe(supported)})" + (why is null ? "" : $"; {why}"));
    }

    private static string Describe(object? v) => v switch
    {
        null => "null",
        bool b => b ? "true" : "false",
        string s => $"\"{s}\"",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };
}
