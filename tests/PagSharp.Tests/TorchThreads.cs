using System.Runtime.CompilerServices;
using TorchSharp;

namespace PagSharp.Tests;

/// <summary>
/// One intra-op thread for the whole test run. The test classes already run in parallel, and on a shared machine
/// several OpenMP threads per process spin against each other (a DDIM parity run went from ~10 s to ~1 s).
/// OMP_NUM_THREADS is set too, so in-process <c>pag</c> runs (<see cref="PagSharp.Cli.App.Run"/>) keep the setting.
/// </summary>
internal static class TorchThreads
{
#pragma warning disable CA2255 // module initializers are meant for app code; this is the test assembly's one global setting
    [ModuleInitializer]
#pragma warning restore CA2255
    internal static void SingleThreaded()
    {
        Environment.SetEnvironmentVariable("OMP_NUM_THREADS", "1");
        torch.set_num_threads(1);
    }
}
