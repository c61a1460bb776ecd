namespace PagSharp.Runtime;

/// <summary>
/// The CPU's name and the instruction-set features that decide how fast libtorch's CPU kernels can multiply
/// (AVX2/FMA, AVX-512, VNNI, AVX512-BF16, AMX), read from Linux's <c>/proc/cpuinfo</c>; "?" and none elsewhere.
/// </summary>
public sealed record CpuInfo(string ModelName, IReadOnlyList<string> MatrixFeatures)
{
    /// <summary>The features reported, in this order, where the CPU has them.</summary>
    public static readonly string[] KnownFeatures =
        { "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16" };

    /// <summary>This machine's CPU (from /proc/cpuinfo where it exists).</summary>
    public static CpuInfo Current() => File.Exists("/proc/cpuinfo") ? Parse(File.ReadLines("/proc/cpuinfo")) : new CpuInfo("?", []);

    /// <summary>The first processor's <c>model name</c> and those of <see cref="KnownFeatures"/> in its <c>flags</c>.</summary>
    public static CpuInfo Parse(IEnumerable<string> cpuinfo)
    {
        string? name = null;
        HashSet<string>? flags = null;
        foreach (var line in cpuinfo)
        {
            int colon = line.IndexOf(':');
            if (colon < 0) continue;
            string key = line[..colon].Trim();
            if (name is null && key == "model name") name = line[(colon + 1)..].Trim();
            else if (flags is null && key is "flags" or "Features")
                flags = line[(colon + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries).ToHashSet(StringComparer.Ordinal);
            if (name is not null && flags is not null) break;
        }
        return new CpuInfo(string.IsNullOrEmpty(name) ? "?" : name, KnownFeatures.Where(f => flags?.Contains(f) == true).ToArray());
    }

    /// <summary>"AMD EPYC (avx2, fma, avx512f, avx512_vnni, avx512_bf16; no AMX)".</summary>
    public override string ToString() =>
        $"{ModelName} ({(MatrixFeatures.Count == 0 ? "none of the listed matrix features" : string.Join(", ", MatrixFeatures))}" +
        $"{(MatrixFeatures.Any(f => f.StartsWith("amx", StringComparison.Ordinal)) ? "" : "; no AMX")})";
}
