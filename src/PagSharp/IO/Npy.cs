using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>
/// Reads and writes single arrays in numpy's .npy format (versions 1.0, 2.0 and 3.0), little-endian only:
/// <c>&lt;f4 &lt;f8 &lt;f2 &lt;i8 &lt;i4 &lt;i2 |i1 |u1 |b1</c>. Fortran-ordered arrays are read and returned in C order.
/// </summary>
public static class Npy
{
    /// <summary>Largest header accepted; numpy itself writes a few hundred bytes.</summary>
    public const int MaxHeaderBytes = 1 << 20;

    /// <summary>The six bytes every .npy file starts with: 0x93 then "NUMPY".</summary>
    internal static ReadOnlySpan<byte> Magic => [0x93, (byte)'N', (byte)'U', (byte)'M', (byte)'P', (byte)'Y'];

    /// <summary>Loads the array as a contiguous CPU tensor of the matching dtype and shape.</summary>
    /// <exception cref="PagSharpException">The file is malformed, truncated, big-endian or of an unsupported dtype.</exception>
    public static Tensor Load(string path)
    {
        using FileStream fs = FileOpen.Read(path, ".npy file");
        try
        {
            (TensorDType dtype, bool fortran, long[] shape, long dataStart) = ReadHeader(fs, path);
            long bytes = TensorBytes.ByteSize(shape, dtype.Size)
                ?? throw Error(path, $"shape {TensorBytes.Format(shape)} is too large to address");
            long have = fs.Length - dataStart;
            if (have != bytes)
                throw Error(path, $"shape {TensorBytes.Format(shape)} of '{dtype.NpyDescr}' needs {bytes} data bytes, but the file has {have} after the header{(have < bytes ? " (truncated?)" : "")}");
            fs.Position = dataStart;
            if (!fortran || shape.Length < 2) return TensorBytes.Read(fs, shape, dtype);
            // Fortran order is C order of the reversed shape; transpose back and make it contiguous.
            long[] reversed = shape.Reverse().ToArray();
            using Tensor raw = TensorBytes.Read(fs, reversed, dtype);
            using Tensor perm = raw.permute(Enumerable.Range(0, shape.Length).Reverse().Select(i => (long)i).ToArray());
            return perm.contiguous();
        }
        catch (IOException e)
        {
            throw Error(path, $"reading failed: {e.Message}");
        }
    }

    /// <summary>Saves the tensor as a version 1.0 .npy file (2.0 if the header is too long), C order, atomically.</summary>
    /// <exception cref="PagSharpException">The tensor's dtype has no .npy equivalent here (e.g. BFloat16).</exception>
    public static void Save(string path, Tensor t)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(t);
        TensorBytes.RequireLittleEndian();
        TensorDType dtype = TensorDTypes.FromScalarType(t.dtype) is { NpyDescr: not null } d
            ? d
            : throw new PagSharpException($"Cannot save '{path}' as .npy: dtype {t.dtype} has no .npy equivalent; supported dtypes are {string.Join(", ", TensorDTypes.All.Where(x => x.NpyDescr != null).Select(x => x.ScalarType))}.");
        string shape = t.shape.Length == 1 ? $"({t.shape[0]},)" : "(" + string.Join(", ", t.shape) + ")";
        string dict = $"{{'descr': '{dtype.NpyDescr}', 'fortran_order': False, 'shape': {shape}, }}";
        byte[] header = BuildHeader(dict);
        AtomicFile.WriteStream(path, s =>
        {
            s.Write(header);
            TensorBytes.Write(s, t);
        });
    }

    private static byte[] BuildHeader(string dict)
    {
        // magic(6) + version(2) + length(2 or 4) + dict padded with spaces and ended by '\n' to a multiple of 64.
        foreach ((byte major, int lenSize) in new[] { ((byte)1, 2), ((byte)2, 4) })
        {
            int prefix = 6 + 2 + lenSize;
            int total = (prefix + dict.Length + 1 + 63) / 64 * 64;
            int hlen = total - prefix;
            if (lenSize == 2 && hlen > ushort.MaxValue) continue;
            var b = new byte[total];
            Magic.CopyTo(b);
            b[6] = major;
            b[7] = 0;
            if (lenSize == 2) BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(8), (ushort)hlen);
            else BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), (uint)hlen);
            Encoding.ASCII.GetBytes(dict).CopyTo(b, prefix);
            b.AsSpan(prefix + dict.Length, hlen - dict.Length - 1).Fill((byte)' ');
            b[^1] = (byte)'\n';
            return b;
        }
        throw new UnreachableException();
    }

    private static (TensorDType, bool, long[], long) ReadHeader(FileStream fs, string path)
    {
        Span<byte> pre = stackalloc byte[12];
        int n = fs.ReadAtLeast(pre, 10, throwOnEndOfStream: false);
        if (n < 10 || !pre.StartsWith(Magic))
            throw Error(path, "it does not start with the .npy magic \\x93NUMPY");
        byte major = pre[6], minor = pre[7];
        long hlen, prefix;
        switch (major)
        {
            case 1:
                hlen = BinaryPrimitives.ReadUInt16LittleEndian(pre[8..]);
                prefix = 10;
                break;
            case 2 or 3:
                if (n < 12) throw Error(path, "the file ends inside the header length");
                hlen = BinaryPrimitives.ReadUInt32LittleEndian(pre[8..]);
                prefix = 12;
                break;
            default:
                throw Error(path, $"format version {major}.{minor} is not supported (1.0, 2.0 and 3.0 are)");
        }
        if (hlen > fs.Length - prefix)
            throw Error(path, $"the header length field says {hlen} bytes, but only {fs.Length - prefix} bytes follow (truncated?)");
        if (hlen > MaxHeaderBytes)
            throw Error(path, $"the header length field says {hlen} bytes, more than the {MaxHeaderBytes} allowed");
        var hbytes = new byte[hlen];
        fs.Position = prefix;
        fs.ReadExactly(hbytes);
        string text;
        try
        {
            text = (major == 3 ? new UTF8Encoding(false, true) : Encoding.Latin1).GetString(hbytes);
        }
        catch (DecoderFallbackException)
        {
            throw Error(path, "the header is not valid UTF-8");
        }
        Dictionary<string, object> dict = NpyHeaderParser.Parse(text, msg => Error(path, msg));
        if (!dict.TryGetValue("descr", out object? descrObj) || descrObj is not string descr)
            throw Error(path, "the header has no 'descr' string");
        if (!dict.TryGetValue("fortran_order", out object? fo) || fo is not bool fortran)
            throw Error(path, "the header has no 'fortran_order' True/False");
        if (!dict.TryGetValue("shape", out object? shapeObj) || shapeObj is not long[] shape)
            throw Error(path, "the header has no 'shape' tuple of integers");
        TensorDType dtype = TensorDTypes.FromNpy(descr)
            ?? throw Error(path, descr.StartsWith('>')
                ? $"dtype '{descr}' is big-endian; only little-endian arrays are supported ({TensorDTypes.NpyNames})"
                : $"dtype '{descr}' is not supported; supported dtypes are {TensorDTypes.NpyNames}");
        return (dtype, fortran, shape, prefix + hlen);
    }

    internal static PagSharpException Error(string path, string problem) => new($"Invalid .npy file '{path}': {problem}.");
}
