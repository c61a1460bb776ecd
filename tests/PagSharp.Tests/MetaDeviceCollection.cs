namespace PagSharp.Tests;

/// <summary>
/// Tests that build models on the meta device, or in a half-precision default dtype, run alone: TorchSharp's default
/// device and dtype are process-wide, so tensors of tests running in parallel would land there too.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MetaDeviceCollection
{
    public const string Name = "models on the meta device";
}
