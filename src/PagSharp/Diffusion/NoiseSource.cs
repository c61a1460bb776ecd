using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Diffusion;

/// <summary>
/// Gaussian noise drawn per sample from that sample's own generator, so a sample's result depends only on its seed,
/// not on which batch or shard it ran in.
/// </summary>
public sealed class NoiseSource : IDisposable
{
    private readonly Generator[] _gens;

    public NoiseSource(IEnumerable<long> seeds)
    {
        _gens = seeds.Select(s => new Generator((ulong)s)).ToArray();
    }

    public int Count => _gens.Length;

    /// <summary>Where drawn noise is placed (drawn on the CPU from the per-sample generators, then moved). Default: CPU.</summary>
    public Device Device { get; set; } = CPU;

    /// <summary>randn of shape [Count, ..sampleShape], each row from its own generator.</summary>
    public Tensor Randn(params long[] sampleShape)
    {
        var rows = new Tensor[_gens.Length];
        var shape = new long[sampleShape.Length + 1];
        shape[0] = 1;
        sampleShape.CopyTo(shape, 1);
        for (int i = 0; i < rows.Length; i++) rows[i] = randn(shape, generator: _gens[i]);
        var result = cat(rows, 0);
        foreach (var r in rows) r.Dispose();
        if (Device.type == DeviceType.CPU) return result;
        var moved = result.to(Device);
        result.Dispose();
        return moved;
    }

    /// <summary>The generator of sample <paramref name="row"/> (for draws of one sample, such as a VAE posterior sample, in the stream's order).</summary>
    public Generator this[int row] => _gens[row];

    public void Dispose()
    {
        foreach (var g in _gens) g.Dispose();
    }
}
