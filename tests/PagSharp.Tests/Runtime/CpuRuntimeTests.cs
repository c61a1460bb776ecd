using System.Runtime.InteropServices;
using PagSharp.Runtime;
using TorchSharp;

namespace PagSharp.Tests.Runtime;

public class CpuRuntimeTests
{
    /// <summary>On Linux with glibc the allocator is tuned (mallopt found and accepted), and asking again gives the same answer.</summary>
    [Fact]
    public void AllocatorIsTunedOnGlibc()
    {
        bool glibc = OperatingSystem.IsLinux() && NativeLibrary.TryLoad("libc.so.6", out _)
            && Environment.GetEnvironmentVariable("MALLOC_MMAP_MAX_") is null && Environment.GetEnvironmentVariable("MALLOC_TRIM_THRESHOLD_") is null;
        bool tuned = CpuRuntime.RetainFreedMemory();
        Assert.Equal(glibc, tuned);
        Assert.Equal(tuned, CpuRuntime.RetainFreedMemory());
    }

    [Fact]
    public void ConfigureSetsTheThreadCount()
    {
        CpuRuntime.Configure(1); // the test run's setting (TorchThreads), so other tests are unaffected
        Assert.Equal(1, torch.get_num_threads());
    }
}
