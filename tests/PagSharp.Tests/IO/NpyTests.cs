using System.Text;
using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Tests.IO;

public class NpyTests
{
    public static TheoryData<ScalarType, string> Dtypes => new()
    {
        { ScalarType.Float32, "<f4" }, { ScalarType.Float64, "<f8" }, { ScalarType.Float16, "<f2" },
        { ScalarType.Int64, "<i8" }, { ScalarType.Int32, "<i4" }, { ScalarType.Int16, "<i2" },
        { ScalarType.Int8, "|i1" }, { ScalarType.Byte, "|u1" }, { ScalarType.Bool, "|b1" },
    };

    [Theory]
    [MemberData(nameof(Dtypes))]
    public void RoundTrip(ScalarType dtype, string descr)
    {
        using var dir = new TempDir();
        string path = dir.File("a.npy");
        var g = new Generator(5);
        using Tensor f = randn([2, 3, 4], generator: g).mul(50);
        using Tensor t = dtype == ScalarType.Bool ? f.gt(0) : f.to_type(dtype);
        Npy.Save(path, t);

        byte[] file = File.ReadAllBytes(path);
        Assert.Equal(1, file[6]);
        int total = 10 + BitConverter.ToUInt16(file, 8);
        Assert.Equal(0, total % 64);
        string header = Encoding.ASCII.GetString(file, 10, total - 10);
        Assert.Contains($"'descr': '{descr}'", header);
        Assert.Contains("'shape': (2, 3, 4)", header);
        Assert.EndsWith("\n", header);

        using Tensor back = Npy.Load(path);
        TensorAssert.BitwiseEqual(t, back);
    }

    [Fact]
    public void RoundTrip_ScalarAndOneDimensionalShapes()
    {
        using var dir = new TempDir();
        string path = dir.File("s.npy");
        using Tensor s = tensor(2.5);
        Npy.Save(path, s);
        Assert.Contains("'shape': ()", File.ReadAllText(path, Encoding.Latin1));
        using (Tensor back = Npy.Load(path)) TensorAssert.BitwiseEqual(s, back);
        using Tensor v = arange(5, ScalarType.Int64);
        Npy.Save(path, v);
        Assert.Contains("'shape': (5,)", File.ReadAllText(path, Encoding.Latin1));
        using (Tensor back = Npy.Load(path)) TensorAssert.BitwiseEqual(v, back);
    }

    [Fact]
    public void Save_Bfloat16_IsRejected()
    {
        using var dir = new TempDir();
        using Tensor t = zeros([2], ScalarType.BFloat16);
        var e = Assert.Throws<PagSharpException>(() => Npy.Save(dir.File("b.npy"), t));
        Assert.Contains("BFloat16", e.Message);
        Assert.Contains("Float32", e.Message);
    }

    private static string WriteHand(TempDir dir, byte major, string dict, byte[] data)
    {
        string path = dir.File("hand.npy");
        byte[] h = Encoding.ASCII.GetBytes(dict);
        using var fs = new FileStream(path, FileMode.Create);
        fs.Write(Npy.Magic);
        fs.Write([major, 0]);
        if (major == 1) fs.Write(BitConverter.GetBytes((ushort)h.Length));
        else fs.Write(BitConverter.GetBytes((uint)h.Length));
        fs.Write(h);
        fs.Write(data);
        return path;
    }

    private static byte[] Floats(params float[] v) => v.SelectMany(BitConverter.GetBytes).ToArray();

    [Fact]
    public void HandBuiltHeaders_V1V2AndFortranOrder()
    {
        using var dir = new TempDir();
        // Version 1.0, double-quoted keys, Python 2 'L' suffixes, no trailing comma.
        string p = WriteHand(dir, 1, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2L, 3L)}\n", Floats(0, 1, 2, 3, 4, 5));
        using (Tensor t = Npy.Load(p))
        {
            Assert.Equal([2L, 3L], t.shape);
            Assert.Equal([0f, 1f, 2f, 3f, 4f, 5f], t.data<float>().ToArray());
        }
        // Version 2.0, Fortran order: column-major data [[0,1,2],[3,4,5]] is stored as 0,3,1,4,2,5.
        p = WriteHand(dir, 2, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }          \n", Floats(0, 3, 1, 4, 2, 5));
        using (Tensor t = Npy.Load(p))
        {
            Assert.Equal([2L, 3L], t.shape);
            Assert.True(t.is_contiguous());
            Assert.Equal([0f, 1f, 2f, 3f, 4f, 5f], t.data<float>().ToArray());
        }
        // Three dimensions in Fortran order.
        using (Tensor c = arange(24, ScalarType.Float32).reshape(2, 3, 4))
        {
            using Tensor fortranBytes = c.permute(2, 1, 0).contiguous();
            p = WriteHand(dir, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }", TensorAssert.Bytes(fortranBytes));
            using Tensor t = Npy.Load(p);
            TensorAssert.BitwiseEqual(c, t);
        }
    }

    [Theory]
    [InlineData("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8, "big-endian")]
    [InlineData("{'descr': '<c8', 'fortran_order': False, 'shape': (2,), }", 16, "'<c8' is not supported")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 8, "needs 12 data bytes")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }", 8, "needs 4 data bytes")]
    [InlineData("{'descr': '<f4', 'shape': (2,), }", 8, "fortran_order")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': 2, }", 8, "'shape'")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", 8, "too large")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 8, "too large")]
    [InlineData("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '__import__': os}", 8, "unexpected character")]
    [InlineData("[1, 2]", 8, "expected '{'")]
    public void BadHeaders_AreRejected(string dict, int dataBytes, string problem)
    {
        using var dir = new TempDir();
        string p = WriteHand(dir, 1, dict, new byte[dataBytes]);
        var e = Assert.Throws<PagSharpException>(() => Npy.Load(p));
        Assert.Contains(p, e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Fact]
    public void BadMagicVersionAndLength_AreRejected()
    {
        using var dir = new TempDir();
        string p = dir.File("x.npy");
        File.WriteAllBytes(p, "NOTNUMPY.."u8.ToArray());
        Assert.Contains("magic", Assert.Throws<PagSharpException>(() => Npy.Load(p)).Message);
        p = WriteHand(dir, 9, "{}", []);
        Assert.Contains("version 9.0", Assert.Throws<PagSharpException>(() => Npy.Load(p)).Message);
        File.WriteAllBytes(p, [.. Npy.Magic, 2, 0, 0xff, 0xff, 0xff, 0xff]);
        Assert.Contains("truncated", Assert.Throws<PagSharpException>(() => Npy.Load(p)).Message);
    }
}
