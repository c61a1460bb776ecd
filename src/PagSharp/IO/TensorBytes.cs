using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>Moves raw little-endian element bytes between streams and CPU tensors without per-element loops.</summary>
internal static class TensorBytes
{
    /// <summary>Largest slice copied at once; also keeps every span under the 2 GiB span limit.</summary>
    private const long ChunkBytes = 16L << 20;

    /// <summary>Throws unless the machine is little-endian, which every reader and writer here assumes.</summary>
    public static void RequireLittleEndian()
    {
        if (!BitConverter.IsLittleEndian)
            throw new PagSharpException("PagSharp's tensor file I/O needs a little-endian machine.");
    }

    /// <summary>The product of <paramref name="shape"/>, or null when it does not fit in a long.</summary>
    public static long? CheckedNumel(ReadOnlySpan<long> shape)
    {
        long n = 1;
        foreach (long d in shape)
        {
            if (d < 0) return null;
            try { n = checked(n * d); }
            catch (OverflowException) { return null; }
        }
        return n;
    }

    /// <summary>
    /// Allocates a CPU tensor of <paramref name="shape"/> and <paramref name="dtype"/> and fills it with exactly its
    /// byte size from <paramref name="stream"/>. The caller must have checked that the stream holds that many bytes.
    /// Bool tensors are read as bytes and then compared with zero, so bytes other than 0 and 1 cannot create invalid bools.
    /// </summary>
    public static Tensor Read(Stream stream, long[] shape, TensorDType dtype)
    {
        RequireLittleEndian();
        bool isBool = dtype.ScalarType == ScalarType.Bool;
        Tensor t = empty(shape, isBool ? ScalarType.Byte : dtype.ScalarType, CPU);
        try
        {
            using (Tensor flat = t.reshape(-1)) Fill(stream, flat);
            if (!isBool) return t;
            Tensor b = t.ne(0);
            t.Dispose();
            return b;
        }
        catch
        {
            t.Dispose();
            throw;
        }
    }

    /// <summary>Fills a contiguous one-dimensional CPU tensor from the stream, slice by slice.</summary>
    public static void Fill(Stream stream, Tensor flat)
    {
        long n = flat.numel();
        if (n == 0) return;
        long perChunk = Math.Max(1, ChunkBytes / flat.element_size());
        for (long start = 0; start < n; start += perChunk)
        {
            long count = Math.Min(perChunk, n - start);
            using Tensor part = flat.narrow(0, start, count);
            stream.ReadExactly(part.bytes);
        }
    }

    /// <summary>Writes the tensor's elements, row-major, as raw little-endian bytes; bools become single 0/1 bytes.</summary>
    public static void Write(Stream stream, Tensor tensor)
    {
        RequireLittleEndian();
        long n = tensor.numel();
        if (n == 0) return;
        using Tensor cpuT = tensor.device_type == DeviceType.CPU ? tensor.alias() : tensor.cpu();
        using Tensor c = cpuT.contiguous();
        using Tensor flat = c.reshape(-1);
        long perChunk = Math.Max(1, ChunkBytes / flat.element_size());
        for (long start = 0; start < n; start += perChunk)
        {
            long count = Math.Min(perChunk, n - start);
            using Tensor part = flat.narrow(0, start, count);
            stream.Write(part.bytes);
        }
    }

    /// <summary>The byte size of a tensor's data, or null when it does not fit in a long.</summary>
    public static long? ByteSize(long[] shape, int elementSize)
    {
        long? n = CheckedNumel(shape);
        if (n is null) return null;
        try { return checked(n.Value * elementSize); }
        catch (OverflowException) { return null; }
    }

    /// <summary>Formats a shape the way error messages show it, e.g. [4, 3, 32, 32].</summary>
    public static string Format(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";
}
