using System.Text;
using System.Text.Json;
using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.IO;

public class SafeTensorsTests
{
    private static Dictionary<string, Tensor> OneOfEachDtype()
    {
        var g = new Generator(1234);
        using Tensor f = randn([3, 5], generator: g);
        return new Dictionary<string, Tensor>
        {
            ["f32"] = f.clone(),
            ["f16"] = f.to_type(ScalarType.Float16),
            ["bf16"] = f.to_type(ScalarType.BFloat16),
            ["f64"] = randn([2, 2, 2], ScalarType.Float64, generator: g),
            ["i64"] = randint(-1_000_000_000_000, 1_000_000_000_000, [7], ScalarType.Int64, generator: g),
            ["i32"] = randint(int.MinValue, int.MaxValue, [4, 1], ScalarType.Int32, generator: g),
            ["i16"] = randint(short.MinValue, short.MaxValue, [3], ScalarType.Int16, generator: g),
            ["i8"] = randint(-128, 127, [3], ScalarType.Int8, generator: g),
            ["u8"] = randint(0, 255, [2, 3], ScalarType.Byte, generator: g),
            ["bool"] = f.gt(0),
            ["scalar"] = tensor(3.5f),
            ["empty"] = zeros([0, 3]),
        };
    }

    [Fact]
    public void RoundTrip_EveryDtype_PreservesValuesShapesOrderAndMetadata()
    {
        using var dir = new TempDir();
        string path = dir.File("all.safetensors");
        var tensors = OneOfEachDtype();
        var meta = new Dictionary<string, string> { ["format"] = "pt", ["note"] = "ünïcödé \"quoted\"" };
        SafeTensors.Save(path, tensors, meta);

        var loaded = SafeTensors.Load(path);
        Assert.Equal(tensors.Keys, loaded.Keys);
        foreach (var (k, t) in tensors) TensorAssert.BitwiseEqual(t, loaded[k], k);
        Assert.Equal(meta, SafeTensors.ReadMetadata(path));
        Assert.Equal(tensors.Keys, SafeTensors.ReadKeys(path));
        using (Tensor one = SafeTensors.LoadTensor(path, "i32")) TensorAssert.BitwiseEqual(tensors["i32"], one);

        // Header: 8-byte length, padded with spaces to a multiple of 8; data contiguous in the given order.
        byte[] file = File.ReadAllBytes(path);
        ulong n = BitConverter.ToUInt64(file);
        Assert.Equal(0UL, n % 8);
        string header = Encoding.UTF8.GetString(file, 8, (int)n);
        Assert.EndsWith("}", header.TrimEnd(' '));
        using var doc = JsonDocument.Parse(header);
        long expected = 0;
        foreach (JsonProperty p in doc.RootElement.EnumerateObject().Where(p => p.Name != "__metadata__"))
        {
            long begin = p.Value.GetProperty("data_offsets")[0].GetInt64();
            Assert.Equal(expected, begin);
            expected = p.Value.GetProperty("data_offsets")[1].GetInt64();
        }
        Assert.Equal(file.Length - 8 - (long)n, expected);

        TensorAssert.DisposeAll(tensors);
        TensorAssert.DisposeAll(loaded);
    }

    [Fact]
    public void Save_WithoutMetadata_IsAtomicAndReplacesTheFile()
    {
        using var dir = new TempDir();
        string path = dir.File("x.safetensors");
        File.WriteAllText(path, "old contents");
        using Tensor t = arange(10, ScalarType.Float32);
        SafeTensors.Save(path, [new("t", t)]);
        Assert.Empty(SafeTensors.ReadMetadata(path));
        Assert.Equal([Path.GetFileName(path)], Directory.GetFiles(dir.Path).Select(Path.GetFileName));
        var loaded = SafeTensors.Load(path);
        TensorAssert.BitwiseEqual(t, loaded["t"]);
        TensorAssert.DisposeAll(loaded);
    }

    [Fact]
    public void Save_NonContiguousTensor_WritesRowMajorValues()
    {
        using var dir = new TempDir();
        string path = dir.File("t.safetensors");
        using Tensor m = arange(6, ScalarType.Float32).reshape(2, 3);
        using Tensor mt = m.t();
        SafeTensors.Save(path, [new("mt", mt)]);
        var loaded = SafeTensors.Load(path);
        using Tensor expected = mt.contiguous();
        TensorAssert.BitwiseEqual(expected, loaded["mt"]);
        TensorAssert.DisposeAll(loaded);
    }

    [Fact]
    public void Save_RejectsDuplicateReservedAndUnsupported()
    {
        using var dir = new TempDir();
        string path = dir.File("bad.safetensors");
        using Tensor t = zeros(2);
        using Tensor c = zeros(2, ScalarType.ComplexFloat32);
        var dup = Assert.Throws<PagSharpException>(() => SafeTensors.Save(path, [new("a", t), new("a", t)]));
        Assert.Contains("'a'", dup.Message);
        var reserved = Assert.Throws<PagSharpException>(() => SafeTensors.Save(path, [new("__metadata__", t)]));
        Assert.Contains("reserved", reserved.Message);
        var nullMeta = Assert.Throws<PagSharpException>(() => SafeTensors.Save(path, [new("t", t)], new Dictionary<string, string> { ["k"] = null! }));
        Assert.Contains("'k'", nullMeta.Message);
        var unsupported = Assert.Throws<PagSharpException>(() => SafeTensors.Save(path, [new("c", c)]));
        Assert.Contains("'c'", unsupported.Message);
        Assert.Contains("Float32", unsupported.Message);
        Assert.False(File.Exists(path));
    }

    [Fact]
    public void LoadTensor_MissingKey_ListsKeys()
    {
        string path = Fixtures.Path("adm_a_uncond", "weights.safetensors");
        var e = Assert.Throws<PagSharpException>(() => SafeTensors.LoadTensor(path, "nope"));
        Assert.Contains("'nope'", e.Message);
        Assert.Contains("216 tensors", e.Message);
        Assert.Contains("'time_embed.0.weight'", e.Message);
        Assert.Contains("196 more", e.Message);
    }

    [Fact]
    public void MissingFile_IsPagSharpException()
    {
        var e = Assert.Throws<PagSharpException>(() => SafeTensors.Load("/nonexistent/x.safetensors"));
        Assert.Contains("/nonexistent/x.safetensors", e.Message);
    }
}
