using System.Runtime.InteropServices;
using System.Text;
using static TorchSharp.torch;

namespace PagSharp.Tests.Build;

/// <summary>TorchSharp's native bridge loads with no manual step, and the build's libstdc++ fix is confined to output folders.</summary>
public class NativeLoadTests
{
    [Fact]
    public void ARealTensorOpRuns()
    {
        using var a = arange(6, dtype: ScalarType.Float32).reshape(2, 3);
        using var b = matmul(a, a.T);
        Assert.Equal(new float[] { 5, 14, 14, 50 }, b.data<float>().ToArray());
    }

    [Fact]
    public void OutputCopyIsPatchedOnlyWhereNeededAndTheNuGetCacheIsUntouched()
    {
        if (!RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return;
        var output = Directory.EnumerateFiles(AppContext.BaseDirectory, "libLibTorchSharp.so", SearchOption.AllDirectories).First();
        string cacheRoot = Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        string cache = Path.Combine(cacheRoot, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        bool systemHasVersion = SystemLibStdCxxHas("GLIBCXX_3.4.32");

        Assert.Equal(!systemHasVersion, VersionIsWeak(File.ReadAllBytes(output), "GLIBCXX_3.4.32"));
        if (File.Exists(cache))
            Assert.False(VersionIsWeak(File.ReadAllBytes(cache), "GLIBCXX_3.4.32"), "the NuGet cache copy must never be modified");
    }

    private static bool SystemLibStdCxxHas(string version)
    {
        foreach (var d in new[] { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib" })
        {
            var p = Path.Combine(d, "libstdc++.so.6");
            if (File.Exists(p)) return File.ReadAllBytes(p).AsSpan().IndexOf(Encoding.ASCII.GetBytes(version + "\0")) >= 0;
        }
        return false;
    }

    /// <summary>Reads the ELF64 .gnu.version_r section and returns whether <paramref name="version"/> carries VER_FLG_WEAK.</summary>
    private static bool VersionIsWeak(byte[] b, string version)
    {
        long shoff = BitConverter.ToInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A), shnum = BitConverter.ToUInt16(b, 0x3C);
        for (int i = 0; i < shnum; i++)
        {
            int sh = (int)(shoff + (long)i * shentsize);
            if (BitConverter.ToUInt32(b, sh + 4) != 0x6ffffffe) continue;
            int off = (int)BitConverter.ToInt64(b, sh + 24);
            int strOff = (int)BitConverter.ToInt64(b, (int)(shoff + BitConverter.ToUInt32(b, sh + 40) * shentsize) + 24);
            uint count = BitConverter.ToUInt32(b, sh + 44);
            for (int vn = off, n = 0; n < count; n++, vn += (int)BitConverter.ToUInt32(b, vn + 12))
                for (int a = 0, aux = vn + (int)BitConverter.ToUInt32(b, vn + 8); a < BitConverter.ToUInt16(b, vn + 2); a++, aux += (int)BitConverter.ToUInt32(b, aux + 12))
                {
                    int name = strOff + (int)BitConverter.ToUInt32(b, aux + 8);
                    int end = Array.IndexOf(b, (byte)0, name);
                    if (Encoding.ASCII.GetString(b, name, end - name) == version)
                        return (BitConverter.ToUInt16(b, aux + 4) & 0x2) != 0;
                }
        }
        throw new InvalidOperationException($"{version} is not referenced");
    }
}
