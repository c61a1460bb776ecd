using System.Text.Json;

namespace PagSharp.IO;

/// <summary>One tensor entry of a safetensors header, already validated.</summary>
internal sealed record SafeTensorsEntry(string Name, TensorDType DType, long[] Shape, long Begin, long End);

/// <summary>The parsed and validated header of a safetensors file.</summary>
internal sealed class SafeTensorsHeader
{
    /// <summary>Largest JSON header accepted; real headers are a few hundred kilobytes at most.</summary>
    public const long MaxHeaderBytes = 100L << 20;

    private const string MetadataKey = "__metadata__";

    /// <summary>Tensor entries in header order.</summary>
    public required IReadOnlyList<SafeTensorsEntry> Entries { get; init; }

    /// <summary>The <c>__metadata__</c> map, empty when absent.</summary>
    public required IReadOnlyDictionary<string, string> Metadata { get; init; }

    /// <summary>File offset where the data area begins (8 + header length).</summary>
    public required long DataStart { get; init; }

    /// <summary>Reads and validates the header of the open file <paramref name="stream"/>; <paramref name="file"/> names it in errors.</summary>
    public static SafeTensorsHeader Read(Stream stream, string file)
    {
        long fileLength = stream.Length;
        if (fileLength < 8)
            throw Error(file, $"the file is {fileLength} bytes long, but a safetensors file starts with an 8-byte header length");
        Span<byte> lenBytes = stackalloc byte[8];
        stream.Position = 0;
        stream.ReadExactly(lenBytes);
        ulong declared = BitConverter.ToUInt64(lenBytes);
        if (declared > (ulong)(fileLength - 8))
            throw Error(file, $"the header length field says {declared} bytes, but only {fileLength - 8} bytes follow it (truncated or not a safetensors file)");
        if (declared > MaxHeaderBytes)
            throw Error(file, $"the header length field says {declared} bytes, more than the {MaxHeaderBytes} bytes allowed");
        if (declared < 2)
            throw Error(file, $"the header length field says {declared} bytes, too short for a JSON object");
        var json = new byte[(int)declared];
        stream.ReadExactly(json);
        long dataStart = 8 + (long)declared;
        return Parse(json, file, dataStart, fileLength - dataStart);
    }

    private static SafeTensorsHeader Parse(byte[] json, string file, long dataStart, long dataLength)
    {
        if (!System.Text.Unicode.Utf8.IsValid(json))
            throw Error(file, "the header is not valid UTF-8");
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(json, new JsonDocumentOptions { MaxDepth = 16 });
        }
        catch (JsonException e)
        {
            throw Error(file, $"the header is not well-formed JSON: {e.Message}");
        }
        using (doc)
        {
            JsonElement root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw Error(file, $"the header must be a JSON object mapping tensor names to entries, but it is a JSON {root.ValueKind}");

            var entries = new List<SafeTensorsEntry>();
            var seen = new HashSet<string>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            bool sawMetadata = false;
            foreach (JsonProperty prop in root.EnumerateObject())
            {
                if (prop.Name == MetadataKey)
                {
                    if (sawMetadata) throw Error(file, $"the header has two \"{MetadataKey}\" entries");
                    sawMetadata = true;
                    ReadMetadata(prop.Value, file, metadata);
                    continue;
                }
                if (!seen.Add(prop.Name))
                    throw Error(file, $"tensor '{prop.Name}' appears twice in the header");
                entries.Add(ReadEntry(prop.Name, prop.Value, file, dataLength));
            }
            CheckOverlaps(entries, file);
            return new SafeTensorsHeader { Entries = entries, Metadata = metadata, DataStart = dataStart };
        }
    }

    private static void ReadMetadata(JsonElement value, string file, Dictionary<string, string> metadata)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw Error(file, $"\"{MetadataKey}\" must be a JSON object of string values, but it is a JSON {value.ValueKind}");
        foreach (JsonProperty m in value.EnumerateObject())
        {
            if (m.Value.ValueKind != JsonValueKind.String)
                throw Error(file, $"metadata key '{m.Name}' must have a string value, but it is a JSON {m.Value.ValueKind}");
            if (!metadata.TryAdd(m.Name, m.Value.GetString()!))
                throw Error(file, $"metadata key '{m.Name}' appears twice");
        }
    }

    private static SafeTensorsEntry ReadEntry(string name, JsonElement value, string file, long dataLength)
    {
        if (value.ValueKind != JsonValueKind.Object)
            throw TensorError(file, name, $"the entry must be a JSON object with \"dtype\", \"shape\" and \"data_offsets\", but it is a JSON {value.ValueKind}");

        if (!value.TryGetProperty("dtype", out JsonElement dtypeEl) || dtypeEl.ValueKind != JsonValueKind.String)
            throw TensorError(file, name, "\"dtype\" is missing or is not a string");
        string dtypeName = dtypeEl.GetString()!;
        TensorDType dtype = TensorDTypes.FromSafeTensors(dtypeName)
            ?? throw TensorError(file, name, $"dtype '{dtypeName}' is not supported; supported dtypes are {TensorDTypes.SafeTensorsNames}");

        if (!value.TryGetProperty("shape", out JsonElement shapeEl) || shapeEl.ValueKind != JsonValueKind.Array)
            throw TensorError(file, name, "\"shape\" is missing or is not a JSON array");
        var shape = new long[shapeEl.GetArrayLength()];
        int i = 0;
        foreach (JsonElement d in shapeEl.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long dim))
                throw TensorError(file, name, $"shape dimension {i} is not an integer: {d.GetRawText()}");
            if (dim < 0)
                throw TensorError(file, name, $"shape dimension {i} is negative ({dim}); dimensions must be 0 or more");
            shape[i++] = dim;
        }

        if (!value.TryGetProperty("data_offsets", out JsonElement offEl) || offEl.ValueKind != JsonValueKind.Array || offEl.GetArrayLength() != 2)
            throw TensorError(file, name, "\"data_offsets\" is missing or is not a JSON array [begin, end]");
        long begin = ReadOffset(offEl[0], "begin", name, file);
        long end = ReadOffset(offEl[1], "end", name, file);
        if (end < begin)
            throw TensorError(file, name, $"data_offsets [{begin}, {end}] end before they begin");
        if (end > dataLength)
            throw TensorError(file, name, $"data_offsets [{begin}, {end}] reach past the end of the data area, which is {dataLength} bytes (truncated file?)");

        long? bytes = TensorBytes.ByteSize(shape, dtype.Size);
        if (bytes is null)
            throw TensorError(file, name, $"shape {TensorBytes.Format(shape)} of {dtype.SafeTensorsName} is too large to address");
        if (bytes.Value != end - begin)
            throw TensorError(file, name, $"shape {TensorBytes.Format(shape)} of {dtype.SafeTensorsName} needs {bytes.Value} bytes, but data_offsets [{begin}, {end}] span {end - begin}");
        return new SafeTensorsEntry(name, dtype, shape, begin, end);
    }

    private static long ReadOffset(JsonElement el, string which, string name, string file)
    {
        if (el.ValueKind != JsonValueKind.Number || !el.TryGetInt64(out long v) || v < 0)
            throw TensorError(file, name, $"data_offsets {which} must be a non-negative integer, but it is {el.GetRawText()}");
        return v;
    }

    private static void CheckOverlaps(List<SafeTensorsEntry> entries, string file)
    {
        var sorted = entries.Where(e => e.End > e.Begin).OrderBy(e => e.Begin).ToList();
        for (int i = 1; i < sorted.Count; i++)
        {
            SafeTensorsEntry a = sorted[i - 1], b = sorted[i];
            if (b.Begin < a.End)
                throw Error(file, $"tensor '{b.Name}' (data_offsets [{b.Begin}, {b.End}]) overlaps tensor '{a.Name}' (data_offsets [{a.Begin}, {a.End}])");
        }
    }

    internal static PagSharpException Error(string file, string problem) =>
        new($"Invalid safetensors file '{file}': {problem}.");

    internal static PagSharpException TensorError(string file, string tensor, string problem) =>
        new($"Invalid safetensors file '{file}', tensor '{tensor}': {problem}.");
}
