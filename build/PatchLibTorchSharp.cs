// MSBuild task (compiled by RoslynCodeTaskFactory from Directory.Build.targets).
//
// libLibTorchSharp.so (TorchSharp 0.107.0) lists GLIBCXX_3.4.32 as a required symbol version, but uses it only for
// `_ZSt21ios_base_library_initv`, a symbol without relocations. Systems whose libstdc++ predates GCC 13 (Debian 12,
// Ubuntu 22.04) lack that version and refuse to load the library. Marking that one Vernaux entry VER_FLG_WEAK turns
// the hard failure into a no-op, so the library loads and runs.
//
// Compiled against netstandard2.0 by the task factory, so only older APIs are used.
// The task patches copies in build/publish output folders only (never the NuGet cache), writes through a temp file +
// rename (so a hard link into the cache is never modified), is idempotent, and does nothing when the system
// libstdc++ already provides GLIBCXX_3.4.32 or when not on Linux, unless Always is set (a tool package must carry a
// patched copy whatever machine packed it; a weak version is harmless where libstdc++ has it).
// Shipped in the PagSharp package beside buildTransitive/PagSharp.targets, which patches a consumer's output folders.
using System;
using System.IO;
using System.Text;
using System.Runtime.InteropServices;
using Microsoft.Build.Framework;
using Microsoft.Build.Utilities;

public class PatchLibTorchSharp : Task
{
    [Required] public string Directory { get; set; } = "";

    /// <summary>Patch even when this machine's libstdc++ provides the version, or when this is not Linux.</summary>
    public bool Always { get; set; }

    private const string Version = "GLIBCXX_3.4.32";

    public override bool Execute()
    {
        if (!System.IO.Directory.Exists(Directory)) return true;
        if (!Always && !RuntimeInformation.IsOSPlatform(OSPlatform.Linux)) return true;
        string libstdcxx = Always ? null : FindSystemLibStdCxx();
        if (libstdcxx != null && Contains(File.ReadAllBytes(libstdcxx), Encoding.ASCII.GetBytes(Version + "\0")))
        {
            Log.LogMessage(MessageImportance.Low, $"{libstdcxx} provides {Version}; libLibTorchSharp.so left as is.");
            return true;
        }
        foreach (var path in System.IO.Directory.EnumerateFiles(Directory, "libLibTorchSharp.so", SearchOption.AllDirectories))
        {
            try
            {
                byte[] bytes = File.ReadAllBytes(path);
                switch (MarkWeak(bytes))
                {
                    case Result.Patched:
                        string tmp = path + ".patch-tmp";
                        File.WriteAllBytes(tmp, bytes);
                        File.Delete(path); // unlink first: never write through a hard link into the cache
                        File.Move(tmp, path);
                        Log.LogMessage(MessageImportance.High, $"PagSharp: marked {Version} weak in {path}");
                        break;
                    case Result.AlreadyWeak:
                    case Result.NotReferenced:
                        break;
                }
            }
            catch (Exception e)
            {
                Log.LogWarning($"PagSharp: could not patch {path}: {e.Message}");
            }
        }
        return true;
    }

    private static string FindSystemLibStdCxx()
    {
        string[] dirs = { "/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
                          "/lib/aarch64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib" };
        foreach (var d in dirs)
        {
            var p = Path.Combine(d, "libstdc++.so.6");
            if (File.Exists(p)) return p;
        }
        return null;
    }

    private static bool Contains(byte[] hay, byte[] needle)
    {
        for (int i = 0; i + needle.Length <= hay.Length; i++)
        {
            int j = 0;
            while (j < needle.Length && hay[i + j] == needle[j]) j++;
            if (j == needle.Length) return true;
        }
        return false;
    }

    private enum Result { Patched, AlreadyWeak, NotReferenced }

    private static Result MarkWeak(byte[] b)
    {
        if (b.Length < 64 || b[0] != 0x7f || b[1] != (byte)'E' || b[2] != (byte)'L' || b[3] != (byte)'F' || b[4] != 2 || b[5] != 1)
            throw new InvalidDataException("not a little-endian ELF64 file");
        long shoff = BitConverter.ToInt64(b, 0x28);
        int shentsize = BitConverter.ToUInt16(b, 0x3A);
        int shnum = BitConverter.ToUInt16(b, 0x3C);
        for (int i = 0; i < shnum; i++)
        {
            long sh = shoff + (long)i * shentsize;
            uint type = BitConverter.ToUInt32(b, (int)sh + 4);
            if (type != 0x6ffffffe) continue; // SHT_GNU_verneed
            long off = BitConverter.ToInt64(b, (int)sh + 24);
            uint link = BitConverter.ToUInt32(b, (int)sh + 40);
            uint count = BitConverter.ToUInt32(b, (int)sh + 44);
            long strOff = BitConverter.ToInt64(b, (int)(shoff + (long)link * shentsize) + 24);
            long vn = off;
            for (uint n = 0; n < count; n++)
            {
                ushort cnt = BitConverter.ToUInt16(b, (int)vn + 2);
                long aux = vn + BitConverter.ToUInt32(b, (int)vn + 8);
                for (int a = 0; a < cnt; a++)
                {
                    ushort flags = BitConverter.ToUInt16(b, (int)aux + 4);
                    uint name = BitConverter.ToUInt32(b, (int)aux + 8);
                    if (ReadCString(b, strOff + name) == Version)
                    {
                        if ((flags & 0x2) != 0) return Result.AlreadyWeak;
                        BitConverter.GetBytes((ushort)(flags | 0x2)).CopyTo(b, (int)aux + 4); // VER_FLG_WEAK
                        return Result.Patched;
                    }
                    aux += BitConverter.ToUInt32(b, (int)aux + 12);
                }
                vn += BitConverter.ToUInt32(b, (int)vn + 12);
            }
        }
        return Result.NotReferenced;
    }

    private static string ReadCString(byte[] b, long start)
    {
        long end = start;
        while (end < b.Length && b[end] != 0) end++;
        return Encoding.ASCII.GetString(b, (int)start, (int)(end - start));
    }
}
