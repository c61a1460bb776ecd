using System.Text;
using PagSharp.IO;

namespace PagSharp.Tests.IO;

public class SafeTensorsValidationTests
{
    /// <summary>Writes an 8-byte length (the header's own unless overridden), the header text, then <paramref name="dataBytes"/> zero bytes.</summary>
    private static string Write(TempDir dir, string header, int dataBytes, ulong? declaredLength = null)
    {
        string path = dir.File("bad.safetensors");
        byte[] h = Encoding.UTF8.GetBytes(header);
        using var fs = new FileStream(path, FileMode.Create);
        fs.Write(BitConverter.GetBytes(declaredLength ?? (ulong)h.Length));
        fs.Write(h);
        fs.Write(new byte[dataBytes]);
        return path;
    }

    private static PagSharpException Reject(string path)
    {
        var e = Assert.Throws<PagSharpException>(() => SafeTensors.Load(path));
        Assert.Contains(path, e.Message);
        return e;
    }

    public static TheoryData<string, int, string, string> BadEntries => new()
    {
        // header, data bytes, tensor named in the message, words the message must contain
        { """{"w":{"shape":[2],"data_offsets":[0,8]}}""", 8, "'w'", "dtype" },
        { """{"w":{"dtype":5,"shape":[2],"data_offsets":[0,8]}}""", 8, "'w'", "dtype" },
        { """{"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}}""", 2, "'w'", "supported dtypes are F32, F16, BF16, F64, I64, I32" },
        { """{"w":{"dtype":"F32","data_offsets":[0,8]}}""", 8, "'w'", "\"shape\"" },
        { """{"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}}""", 8, "'w'", "\"shape\"" },
        { """{"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}}""", 8, "'w'", "not an integer" },
        { """{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}""", 8, "'w'", "negative" },
        { """{"w":{"dtype":"F32","shape":[2]}}""", 8, "'w'", "data_offsets" },
        { """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}}""", 8, "'w'", "data_offsets" },
        { """{"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}}""", 8, "'w'", "non-negative" },
        { """{"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}}""", 8, "'w'", "end before they begin" },
        { """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}""", 8, "'w'", "past the end of the data area" },
        { """{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,99999999999999999999]}}""", 8, "'w'", "non-negative integer" },
        { """{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}""", 8, "'w'", "needs 12 bytes" },
        { """{"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,8]}}""", 8, "'w'", "too large" },
        { """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", 16, "'b'", "overlaps tensor 'a'" },
        { """{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}""", 16, "'a'", "twice" },
        { """{"w":[1,2]}""", 8, "'w'", "JSON object" },
        { """{"__metadata__":{"k":1},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8, "'k'", "string value" },
        { """{"__metadata__":[],"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}""", 8, "__metadata__", "JSON object" },
    };

    [Theory]
    [MemberData(nameof(BadEntries))]
    public void BadHeaderEntry_IsRejectedWithFileTensorAndProblem(string header, int dataBytes, string tensor, string problem)
    {
        using var dir = new TempDir();
        var e = Reject(Write(dir, header, dataBytes));
        Assert.Contains(tensor, e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Theory]
    [InlineData("not json at all", "well-formed JSON")]
    [InlineData("{\"w\": {", "well-formed JSON")]
    [InlineData("[1, 2, 3]", "JSON object")]
    [InlineData("\"text\"", "JSON object")]
    public void MalformedJson_IsRejected(string header, string problem)
    {
        using var dir = new TempDir();
        Assert.Contains(problem, Reject(Write(dir, header, 0)).Message);
    }

    [Fact]
    public void FileShorterThanEightBytes_IsRejected()
    {
        using var dir = new TempDir();
        string path = dir.File("short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);
        Assert.Contains("8-byte header length", Reject(path).Message);
    }

    [Fact]
    public void HeaderLengthPastEndOfFile_IsRejected()
    {
        using var dir = new TempDir();
        string path = Write(dir, "{}", 0, declaredLength: 1000);
        Assert.Contains("1000", Reject(path).Message);
        path = Write(dir, "{}", 0, declaredLength: ulong.MaxValue);
        Assert.Contains("truncated", Reject(path).Message);
    }

    [Fact]
    public void HeaderLengthOverCap_IsRejectedWithoutReadingIt()
    {
        using var dir = new TempDir();
        string path = dir.File("huge.safetensors");
        using (var fs = new FileStream(path, FileMode.Create))
        {
            fs.Write(BitConverter.GetBytes((ulong)SafeTensorsHeader.MaxHeaderBytes + 8));
            fs.SetLength(SafeTensorsHeader.MaxHeaderBytes + 64); // sparse: costs no disk
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        Assert.Contains("allowed", Reject(path).Message);
        Assert.True(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20);
    }

    [Fact]
    public void EmptyHeaderObject_LoadsNothing_AndGapsAndZeroSizedTensorsAreAccepted()
    {
        using var dir = new TempDir();
        Assert.Empty(SafeTensors.Load(Write(dir, "{}      ", 0)));
        var loaded = SafeTensors.Load(Write(dir,
            """{"e":{"dtype":"F32","shape":[0,4],"data_offsets":[4,4]},"w":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}}""", 8));
        Assert.Equal(["e", "w"], loaded.Keys);
        Assert.Equal([0L, 4L], loaded["e"].shape);
        TensorAssert.DisposeAll(loaded);
    }

    [Fact]
    public void BoolBytesOtherThanZeroAndOne_BecomeTrue()
    {
        using var dir = new TempDir();
        string path = Write(dir, """{"b":{"dtype":"BOOL","shape":[3],"data_offsets":[0,3]}}""", 0);
        using (var fs = new FileStream(path, FileMode.Append)) fs.Write([0, 1, 7]);
        var loaded = SafeTensors.Load(path);
        Assert.Equal([false, true, true], loaded["b"].data<bool>().ToArray());
        TensorAssert.DisposeAll(loaded);
    }
}
