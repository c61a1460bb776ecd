namespace PagSharp.IO;

/// <summary>What the first bytes of a file say it is.</summary>
internal enum FileKind { Unknown, Zip, LegacyTorch, Pickle, Npy, SafeTensors }

/// <summary>Recognises tensor file formats by their first bytes.</summary>
internal static class FileSniffer
{
    // torch.save's legacy format starts with a pickle (PROTO n, with protocol 4+ maybe a FRAME) of the magic number
    // 0x1950a86a20f9469cfc6c, written as LONG1 with 10 little-endian bytes.
    private static readonly byte[] LegacyMagic = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

    public static FileKind Sniff(FileStream fs)
    {
        Span<byte> head = stackalloc byte[32];
        fs.Position = 0;
        int n = fs.ReadAtLeast(head, head.Length, throwOnEndOfStream: false);
        fs.Position = 0;
        head = head[..n];
        if (head.StartsWith("PK\x03\x04"u8) || head.StartsWith("PK\x05\x06"u8)) return FileKind.Zip;
        // Before the pickle test: a safetensors header length such as 0x0580 also starts with the bytes 0x80 0x05.
        if (n >= 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head) <= (ulong)fs.Length - 8) return FileKind.SafeTensors;
        if (n >= 2 && head[0] == 0x80 && head[1] <= 5)
        {
            ReadOnlySpan<byte> rest = head[2..];
            if (rest.Length >= 9 && rest[0] == 0x95) rest = rest[9..]; // FRAME and its 8-byte length
            return rest.StartsWith(LegacyMagic) ? FileKind.LegacyTorch : FileKind.Pickle;
        }
        if (head.StartsWith(Npy.Magic)) return FileKind.Npy;
        if (n >= 9 && head[8] == (byte)'{' && BitConverter.ToUInt64(head) <= (ulong)fs.Length - 8) return FileKind.SafeTensors;
        return FileKind.Unknown;
    }

    public static PagSharpException LegacyError(string path) => new(
        $"'{path}' is a PyTorch checkpoint in the legacy (pre-1.6, non-zip) torch.save format, which PagSharp does not read " +
        "because it is an unrestricted pickle. Convert it once in Python with " +
        "`torch.save(torch.load(f), g, _use_new_zipfile_serialization=True)`, or save it as safetensors " +
        "(`safetensors.torch.save_file(state_dict, 'model.safetensors')`).");

    public static PagSharpException PickleError(string path) => new(
        $"'{path}' is a bare Python pickle, not a PyTorch zip checkpoint; PagSharp does not read arbitrary pickles. " +
        "Save the state dict with torch.save (zip format) or as safetensors.");
}
