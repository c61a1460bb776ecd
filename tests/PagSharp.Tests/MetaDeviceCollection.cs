namespace PagSharp.Tests;

/// <summary>
/// Tests that build models on the meta device run alone: TorchSharp's default device is process-wide, so tensors of
/// tests running in parallel would land on the meta device too.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MetaDeviceCollection
{
    public const string Name = "models on the meta device";
}
