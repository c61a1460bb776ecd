using System.IO.Compression;
using System.Text;
using PagSharp.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.IO;

internal static class Fixtures
{
    private static readonly Lazy<string> Root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            string candidate = System.IO.Path.Combine(dir.FullName, "tests", "fixtures");
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException("tests/fixtures not found above " + AppContext.BaseDirectory);
    });

    public static string Path(params string[] parts) => System.IO.Path.Combine([Root.Value, .. parts]);
}

internal static class TensorAssert
{
    public static byte[] Bytes(Tensor t)
    {
        using Tensor c = t.contiguous();
        return c.numel() == 0 ? [] : c.bytes.ToArray();
    }

    public static void BitwiseEqual(Tensor expected, Tensor actual, string what = "")
    {
        Assert.True(expected.dtype == actual.dtype, $"{what}: dtype {actual.dtype} != {expected.dtype}");
        Assert.True(expected.shape.SequenceEqual(actual.shape), $"{what}: shape [{string.Join(",", actual.shape)}] != [{string.Join(",", expected.shape)}]");
        Assert.True(Bytes(expected).AsSpan().SequenceEqual(Bytes(actual)), $"{what}: bytes differ");
    }

    public static void DisposeAll(Dictionary<string, Tensor> d)
    {
        foreach (Tensor t in d.Values) t.Dispose();
    }
}

/// <summary>Assembles pickle byte streams opcode by opcode, the way torch.save writes them.</summary>
internal sealed class PickleWriter
{
    private readonly MemoryStream _ms = new();

    public PickleWriter Op(params byte[] bytes) { _ms.Write(bytes); return this; }
    public PickleWriter Proto(byte v = 2) => Op(0x80, v);
    public PickleWriter Mark() => Op((byte)'(');
    public PickleWriter Tuple() => Op((byte)'t');
    public PickleWriter EmptyTuple() => Op((byte)')');
    public PickleWriter EmptyDict() => Op((byte)'}');
    public PickleWriter SetItem() => Op((byte)'s');
    public PickleWriter SetItems() => Op((byte)'u');
    public PickleWriter Reduce() => Op((byte)'R');
    public PickleWriter Build() => Op((byte)'b');
    public PickleWriter BinPersId() => Op((byte)'Q');
    public PickleWriter False() => Op(0x89);
    public PickleWriter None() => Op((byte)'N');
    public PickleWriter Stop() => Op((byte)'.');

    public PickleWriter Global(string module, string name) => Op((byte)'c').Op(Encoding.ASCII.GetBytes(module + "\n" + name + "\n"));

    public PickleWriter StackGlobal(string module, string name) => Str(module).Str(name).Op(0x93);

    public PickleWriter Str(string s)
    {
        byte[] b = Encoding.UTF8.GetBytes(s);
        Op((byte)'X');
        _ms.Write(BitConverter.GetBytes((uint)b.Length));
        return Op(b);
    }

    public PickleWriter Int(long v)
    {
        if (v is >= 0 and < 256) return Op((byte)'K', (byte)v);
        if (v is >= 0 and < 65536) return Op((byte)'M').Op(BitConverter.GetBytes((ushort)v));
        if (v is >= int.MinValue and <= int.MaxValue) return Op((byte)'J').Op(BitConverter.GetBytes((int)v));
        return Op(0x8a, 8).Op(BitConverter.GetBytes(v));
    }

    public PickleWriter IntTuple(long[] values)
    {
        Mark();
        foreach (long v in values) Int(v);
        return Tuple();
    }

    public PickleWriter OrderedDict() => Global("collections", "OrderedDict").EmptyTuple().Reduce();

    /// <summary>Pushes <c>_rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())</c>.</summary>
    public PickleWriter Tensor(string storageClass, string storageKey, long storageNumel, long offset, long[] size, long[] stride)
    {
        Global("torch._utils", "_rebuild_tensor_v2").Mark();
        Mark().Str("storage").Global("torch", storageClass).Str(storageKey).Str("cpu").Int(storageNumel).Tuple().BinPersId();
        Int(offset).IntTuple(size).IntTuple(stride).False().OrderedDict();
        return Tuple().Reduce();
    }

    public byte[] ToArray() => _ms.ToArray();
}

/// <summary>Writes PyTorch-style zip checkpoints: <c>prefix/data.pkl</c>, <c>prefix/data/KEY</c>, optional byteorder.</summary>
internal static class PtWriter
{
    public static void Write(string path, byte[] pickle, IEnumerable<(string Key, byte[] Data)> storages, string prefix = "archive", string? byteorder = "little")
    {
        using var fs = new FileStream(path, FileMode.Create);
        using var zip = new ZipArchive(fs, ZipArchiveMode.Create);
        void Add(string name, byte[] data)
        {
            ZipArchiveEntry e = zip.CreateEntry(prefix + "/" + name, CompressionLevel.NoCompression);
            using Stream s = e.Open();
            s.Write(data);
        }
        Add("data.pkl", pickle);
        if (byteorder != null) Add("byteorder", Encoding.ASCII.GetBytes(byteorder));
        foreach (var (key, data) in storages) Add("data/" + key, data);
        Add("version", "3\n"u8.ToArray());
    }

    public static byte[] Floats(params float[] v) => v.SelectMany(BitConverter.GetBytes).ToArray();

    /// <summary>An OrderedDict state dict of the given (name, tensor-pushing action) pairs.</summary>
    public static byte[] StateDict(params (string Name, Action<PickleWriter> PushTensor)[] entries)
    {
        var w = new PickleWriter().Proto().OrderedDict().Mark();
        foreach (var (name, push) in entries)
        {
            w.Str(name);
            push(w);
        }
        return w.SetItems().Stop().ToArray();
    }
}

/// <summary>Runs a reader on mutated inputs: it must succeed or throw PagSharpException, and not allocate wildly.</summary>
internal static class Fuzz
{
    public const long MaxManagedAllocation = 256L << 20;

    public static void MustLoadOrReject(string caseName, Action load)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        try
        {
            load();
        }
        catch (PagSharpException)
        {
        }
        catch (Exception e)
        {
            throw new Xunit.Sdk.XunitException($"{caseName}: {e.GetType().Name} instead of PagSharpException: {e}");
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < MaxManagedAllocation, $"{caseName}: allocated {allocated} managed bytes");
    }

    public static void LoadAndDispose(Func<Dictionary<string, Tensor>> load) => TensorAssert.DisposeAll(load());
}
