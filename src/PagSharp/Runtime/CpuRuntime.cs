using System.Runtime.InteropServices;
using TorchSharp;

namespace PagSharp.Runtime;

/// <summary>
/// Process-wide settings for CPU inference: torch threads, and glibc's allocator told to keep freed memory for reuse.
/// libtorch's CPU allocator is plain malloc/free. glibc serves large blocks (activations are megabytes) with a fresh
/// mmap and returns them with munmap, so every layer of every step page-faults its output in again (measured on this
/// project's 2-core VM: built-in model, batch 64, CFG+PAG 1.99 → 0.63 s/step; ADM-256 PAG 17.0 → 9.8 s/step).
/// With mmap off (M_MMAP_MAX = 0) and trimming off (M_TRIM_THRESHOLD huge) freed blocks stay in the heap and the
/// next step reuses them: the same effect as the jemalloc/tcmalloc that PyTorch's CPU performance guides recommend.
/// The price is peak RSS: freed blocks stay in the process and the heap fragments (measured +40–75%, README
/// Performance); the memory is returned when the process ends.
/// </summary>
public static class CpuRuntime
{
    private const int M_TRIM_THRESHOLD = -1, M_MMAP_MAX = -4;
    private static readonly object Gate = new();
    private static bool? _allocatorTuned;

    /// <summary>
    /// Sets torch's intra-op threads to <paramref name="threads"/> (default: OMP_NUM_THREADS when it is a positive
    /// integer, else one per processor) and tunes the allocator (<see cref="RetainFreedMemory"/>). Call once at start-up.
    /// </summary>
    public static void Configure(int? threads = null)
    {
        PassiveThreadWaits(); // before libtorch (and its OpenMP runtime) is loaded by the first torch call
        torch.set_num_threads(threads ?? DefaultThreads());
        RetainFreedMemory();
    }

    /// <summary>
    /// Sets OMP_WAIT_POLICY=PASSIVE in the process environment unless OMP_WAIT_POLICY or GOMP_SPINCOUNT is set, so
    /// idle OpenMP threads sleep instead of spinning. Measured on this project's 2-core machine (docs/performance.md):
    /// with another busy process on the machine a 5-step built-in run took 8.7–9.9 s with spinning threads and
    /// 1.8–1.9 s with passive ones; alone, passive costs 2–4% (1.31–1.35 s against 1.29–1.30 s). Takes effect only when
    /// called before the first torch call (libgomp reads its environment when it is loaded). Returns whether it set it.
    /// </summary>
    public static bool PassiveThreadWaits()
    {
        if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is not null || Environment.GetEnvironmentVariable("GOMP_SPINCOUNT") is not null)
            return false;
        Environment.SetEnvironmentVariable("OMP_WAIT_POLICY", "PASSIVE");
        // .NET keeps its own environment block on Unix: the native one, which libgomp reads, needs setenv.
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return true;
        if (!NativeLibrary.TryLoad(OperatingSystem.IsLinux() ? "libc.so.6" : "libc.dylib", out var libc) || !NativeLibrary.TryGetExport(libc, "setenv", out var setenv))
            return false;
        unsafe
        {
            var f = (delegate* unmanaged<byte*, byte*, int, int>)setenv;
            fixed (byte* name = "OMP_WAIT_POLICY\0"u8, value = "PASSIVE\0"u8)
                return f(name, value, 0) == 0;
        }
    }

    /// <summary>OMP_NUM_THREADS when it is a positive integer (libtorch's own knob), else one per processor.</summary>
    public static int DefaultThreads() =>
        int.TryParse(Environment.GetEnvironmentVariable("OMP_NUM_THREADS"), out int n) && n > 0 ? n : Math.Max(1, Environment.ProcessorCount);

    /// <summary>
    /// On Linux with glibc: keep freed memory in the heap for reuse instead of unmapping it (see the class summary).
    /// Returns whether the allocator was tuned (false elsewhere: other platforms and C libraries keep their defaults).
    /// Honours an explicit MALLOC_MMAP_MAX_ / MALLOC_TRIM_THRESHOLD_ in the environment by leaving the allocator alone.
    /// </summary>
    public static bool RetainFreedMemory()
    {
        lock (Gate)
        {
            if (_allocatorTuned is { } done) return done;
            _allocatorTuned = false;
            if (!OperatingSystem.IsLinux()
                || Environment.GetEnvironmentVariable("MALLOC_MMAP_MAX_") is not null
                || Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is not null
                || !NativeLibrary.TryLoad("libc.so.6", out var libc)
                || !NativeLibrary.TryGetExport(libc, "mallopt", out var address))
                return false;
            unsafe
            {
                var mallopt = (delegate* unmanaged<int, int, int>)address;
                // mallopt returns 1 on success. Trimming off first, then no new mmaps.
                _allocatorTuned = mallopt(M_TRIM_THRESHOLD, int.MaxValue) == 1 && mallopt(M_MMAP_MAX, 0) == 1;
            }
            return _allocatorTuned.Value;
        }
    }
}
