using PagSharp.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.IO;

public class TorchZipTests
{
    private static float[] Floats(Tensor t) => t.data<float>().ToArray();

    [Fact]
    public void OffsetsStridesAndSharedStorages_AreHonoured()
    {
        using var dir = new TempDir();
        string path = dir.File("strided.pt");
        float[] values = Enumerable.Range(0, 12).Select(i => (float)i).ToArray();
        byte[] pickle = PtWriter.StateDict(
            ("slice", w => w.Tensor("FloatStorage", "0", 12, 2, [3], [1])),                // [2, 3, 4]
            ("matrix", w => w.Tensor("FloatStorage", "0", 12, 0, [3, 4], [4, 1])),         // arange(12).reshape(3, 4)
            ("transposed", w => w.Tensor("FloatStorage", "0", 12, 0, [4, 3], [1, 4])),     // its transpose
            ("every_other", w => w.Tensor("FloatStorage", "0", 12, 1, [2, 3], [6, 2])),    // [[1,3,5],[7,9,11]]
            ("broadcast", w => w.Tensor("FloatStorage", "0", 12, 5, [2, 2], [0, 1])),      // [[5,6],[5,6]]
            ("scalar", w => w.Tensor("FloatStorage", "0", 12, 11, [], [])),                 // 11
            ("empty", w => w.Tensor("FloatStorage", "0", 12, 0, [0, 5], [5, 1])),
            ("longs", w => w.Tensor("LongStorage", "1", 3, 1, [2], [1])),
            ("flags", w => w.Tensor("BoolStorage", "2", 3, 0, [3], [1])),
            ("halves", w => w.Tensor("HalfStorage", "3", 2, 0, [2], [1])));
        PtWriter.Write(path, pickle,
        [
            ("0", PtWriter.Floats(values)),
            ("1", new long[] { 10, -20, long.MaxValue }.SelectMany(BitConverter.GetBytes).ToArray()),
            ("2", [1, 0, 1]),
            ("3", BitConverter.GetBytes((Half)1.5f).Concat(BitConverter.GetBytes((Half)(-2f))).ToArray()),
        ]);

        var d = TorchZip.Load(path);
        try
        {
            Assert.Equal(["slice", "matrix", "transposed", "every_other", "broadcast", "scalar", "empty", "longs", "flags", "halves"], d.Keys);
            Assert.Equal([2f, 3f, 4f], Floats(d["slice"]));
            using Tensor m = arange(12, ScalarType.Float32).reshape(3, 4);
            TensorAssert.BitwiseEqual(m, d["matrix"]);
            using Tensor mt = m.t().contiguous();
            TensorAssert.BitwiseEqual(mt, d["transposed"]);
            Assert.True(d["transposed"].is_contiguous());
            Assert.Equal([1f, 3f, 5f, 7f, 9f, 11f], Floats(d["every_other"]));
            Assert.Equal([5f, 6f, 5f, 6f], Floats(d["broadcast"]));
            Assert.Empty(d["scalar"].shape);
            Assert.Equal(11f, d["scalar"].item<float>());
            Assert.Equal([0L, 5L], d["empty"].shape);
            Assert.Equal([-20L, long.MaxValue], d["longs"].data<long>().ToArray());
            Assert.Equal([true, false, true], d["flags"].data<bool>().ToArray());
            Assert.Equal(ScalarType.Float16, d["halves"].dtype);
            using Tensor h = d["halves"].to_type(ScalarType.Float32);
            Assert.Equal([1.5f, -2f], Floats(h));

            // Each result owns its memory: changing one does not change another that shared the storage.
            d["matrix"].fill_(-1);
            Assert.Equal([2f, 3f, 4f], Floats(d["slice"]));
        }
        finally
        {
            TensorAssert.DisposeAll(d);
        }
    }

    [Fact]
    public void RebuildParameter_StackGlobal_Memo_AndProtocol4Frame_AreUnderstood()
    {
        using var dir = new TempDir();
        string path = dir.File("param.pt");
        var w = new PickleWriter().Proto(4).Op(0x95).Op(new byte[8]).EmptyDict().Op(0x94).Mark();
        w.Str("p");
        w.StackGlobal("torch._utils", "_rebuild_parameter").Op(0x94);
        w.Tensor("FloatStorage", "0", 2, 0, [2], [1]).Op(0x94).Op(0x88).OrderedDict().Op(0x87).Reduce();
        w.Str("again").Op((byte)'h', 2); // BINGET memo 2: the tensor (memo 0 is the dict, 1 the global)
        byte[] pickle = w.SetItems().Stop().ToArray();
        PtWriter.Write(path, pickle, [("0", PtWriter.Floats(1f, 2f))]);
        var d = TorchZip.Load(path);
        try
        {
            Assert.Equal(["p", "again"], d.Keys);
            Assert.Equal([1f, 2f], Floats(d["p"]));
        }
        finally
        {
            TensorAssert.DisposeAll(d);
        }
    }

    [Fact]
    public void NestedStateDicts_LoadByKeyOrAutomatically()
    {
        using var dir = new TempDir();
        string path = dir.File("nested.pt");
        var w = new PickleWriter().Proto().EmptyDict().Mark();
        w.Str("epoch").Int(7);
        w.Str("ema").OrderedDict().Mark().Str("w").Tensor("FloatStorage", "0", 2, 0, [2], [1]).SetItems();
        w.Str("state_dict").OrderedDict().Mark().Str("w").Tensor("FloatStorage", "1", 2, 0, [2], [1]).SetItems();
        PtWriter.Write(path, w.SetItems().Stop().ToArray(), [("0", PtWriter.Floats(1f, 2f)), ("1", PtWriter.Floats(3f, 4f))]);

        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("'state_dict'", e.Message);
        Assert.Contains("'ema'", e.Message);

        var auto = TorchZip.LoadStateDict(path);
        Assert.Equal([3f, 4f], Floats(auto["w"]));
        var ema = TorchZip.LoadStateDict(path, "ema");
        Assert.Equal([1f, 2f], Floats(ema["w"]));
        var viaDispatch = StateDicts.Load(path);
        Assert.Equal([3f, 4f], Floats(viaDispatch["w"]));

        var missing = Assert.Throws<PagSharpException>(() => TorchZip.LoadStateDict(path, "model"));
        Assert.Contains("'model'", missing.Message);
        Assert.Contains("'epoch'", missing.Message);
        var notDict = Assert.Throws<PagSharpException>(() => TorchZip.LoadStateDict(path, "epoch"));
        Assert.Contains("not a dict", notDict.Message);
        TensorAssert.DisposeAll(auto);
        TensorAssert.DisposeAll(ema);
        TensorAssert.DisposeAll(viaDispatch);
    }

    [Theory]
    [InlineData("os", "system")]
    [InlineData("builtins", "eval")]
    [InlineData("posix", "system")]
    [InlineData("subprocess", "Popen")]
    [InlineData("torch", "load")]
    [InlineData("torch._utils", "_rebuild_tensor")]
    public void MaliciousGlobal_IsRefusedAndNothingRuns(string module, string name)
    {
        using var dir = new TempDir();
        string marker = dir.File("pwned");
        string path = dir.File("evil.pt");
        // OrderedDict{'w': <module.name>('touch marker')} — the call would run on a real unpickler.
        var w = new PickleWriter().Proto().OrderedDict().Mark().Str("w");
        w.Global(module, name).Str($"touch {marker}").Op(0x85).Reduce();
        PtWriter.Write(path, w.SetItems().Stop().ToArray(), []);

        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(path));
        Assert.Contains($"Refusing to load {module}.{name} from '{path}'", e.Message);
        Assert.Contains("only tensor state dicts are supported", e.Message);
        Assert.False(File.Exists(marker));

        // STACK_GLOBAL is refused the same way.
        var w2 = new PickleWriter().Proto(4).StackGlobal(module, name).Str($"touch {marker}").Op(0x85).Reduce().Stop();
        PtWriter.Write(path, w2.ToArray(), []);
        Assert.Contains($"Refusing to load {module}.{name}", Assert.Throws<PagSharpException>(() => StateDicts.Load(path)).Message);
        Assert.False(File.Exists(marker));
    }

    [Theory]
    [InlineData(new byte[] { (byte)'i' }, "0x69")] // INST
    [InlineData(new byte[] { (byte)'o' }, "0x6f")] // OBJ
    [InlineData(new byte[] { (byte)'P' }, "0x50")] // PERSID (text form)
    [InlineData(new byte[] { 0x92 }, "0x92")]      // NEWOBJ_EX
    public void UnsupportedOpcodes_AreRejected(byte[] op, string hex)
    {
        using var dir = new TempDir();
        string path = dir.File("op.pt");
        PtWriter.Write(path, new PickleWriter().Proto().Op(op).Stop().ToArray(), []);
        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(path));
        Assert.Contains(hex, e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void StorageShorterThanClaimed_IsRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("short.pt");
        PtWriter.Write(path, PtWriter.StateDict(("w", w => w.Tensor("FloatStorage", "0", 1_000_000_000_000, 0, [4], [1]))),
            [("0", PtWriter.Floats(1, 2, 3, 4))]);
        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(path));
        Assert.Contains("'w'", e.Message);
        Assert.Contains("storage '0'", e.Message);
        Assert.Contains("holds only 16 bytes", e.Message);
    }

    [Theory]
    [InlineData(10L, new long[] { 3 }, new long[] { 1 }, "reach element 12")]
    [InlineData(0L, new long[] { 2, 2 }, new long[] { 1, 4 }, "reach element 5")]
    [InlineData(0L, new long[] { 3, 2 }, new long[] { long.MaxValue, 4 }, "overflow")]
    [InlineData(0L, new long[] { 1L << 40 }, new long[] { 0 }, "repeats storage '0'")]
    [InlineData(0L, new long[] { 1L << 20, 1L << 20, 1L << 20, 1L << 20 }, new long[] { 0, 0, 0, 0 }, "too large to address")]
    public void ViewOutsideStorage_IsRejected(long offset, long[] size, long[] stride, string problem)
    {
        using var dir = new TempDir();
        string path = dir.File("view.pt");
        PtWriter.Write(path, PtWriter.StateDict(("w", w => w.Tensor("FloatStorage", "0", 4, offset, size, stride))),
            [("0", PtWriter.Floats(1, 2, 3, 4))]);
        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(path));
        Assert.Contains("'w'", e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Fact]
    public void MissingStorageEntry_BigEndian_AndNoDataPkl_AreRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("x.pt");
        PtWriter.Write(path, PtWriter.StateDict(("w", w => w.Tensor("FloatStorage", "7", 1, 0, [1], [1]))), []);
        Assert.Contains("'archive/data/7' is missing", Assert.Throws<PagSharpException>(() => TorchZip.Load(path)).Message);

        PtWriter.Write(path, PtWriter.StateDict(("w", w => w.Tensor("FloatStorage", "0", 1, 0, [1], [1]))),
            [("0", PtWriter.Floats(1))], byteorder: "big");
        Assert.Contains("little-endian", Assert.Throws<PagSharpException>(() => TorchZip.Load(path)).Message);

        using (var fs = new FileStream(path, FileMode.Create))
        using (var zip = new System.IO.Compression.ZipArchive(fs, System.IO.Compression.ZipArchiveMode.Create))
            zip.CreateEntry("hello.txt");
        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(path));
        Assert.Contains("data.pkl", e.Message);
        Assert.Contains("hello.txt", e.Message);
    }

    [Fact]
    public void LegacyFormat_IsRejectedWithConversionAdvice()
    {
        using var dir = new TempDir();
        string path = dir.File("legacy.pt");
        byte[] magic = [0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
        byte[] protocol2 = [0x80, 0x02, .. magic, .. new PickleWriter().Proto().Int(1001).Stop().ToArray()];
        byte[] protocol4 = [0x80, 0x04, 0x95, 13, 0, 0, 0, 0, 0, 0, 0, .. magic];
        foreach ((byte[] bytes, Action load) in new (byte[], Action)[]
        {
            (protocol2, () => TorchZip.Load(path)), (protocol2, () => StateDicts.Load(path)), (protocol4, () => StateDicts.Load(path)),
        })
        {
            File.WriteAllBytes(path, bytes);
            var e = Assert.Throws<PagSharpException>(load);
            Assert.Contains("legacy", e.Message);
            Assert.Contains("_use_new_zipfile_serialization=True", e.Message);
            Assert.Contains("safetensors", e.Message);
            Assert.Contains(path, e.Message);
        }
    }

    [Fact]
    public void NotAZip_IsRejectedWithSupportedFormats()
    {
        var e = Assert.Throws<PagSharpException>(() => TorchZip.Load(Fixtures.Path("adm_a_uncond", "weights.safetensors")));
        Assert.Contains("not a PyTorch zip checkpoint", e.Message);
        Assert.Contains("safetensors", e.Message);
    }

    [Fact]
    public void TopLevelNotADict_IsRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("list.pt");
        PtWriter.Write(path, new PickleWriter().Proto().Op((byte)']').Stop().ToArray(), []);
        Assert.Contains("not a state dict", Assert.Throws<PagSharpException>(() => TorchZip.Load(path)).Message);
    }
}
