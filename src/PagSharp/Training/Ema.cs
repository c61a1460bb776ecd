using static TorchSharp.torch;

namespace PagSharp.Training;

/// <summary>Exponential moving average of parameters: ema ← rate·ema + (1 − rate)·θ, once per optimiser step.</summary>
public sealed class Ema
{
    public Dictionary<string, Tensor> Shadow { get; } = new();
    public double Rate { get; }

    public Ema(IEnumerable<(string Name, Tensor Param)> parameters, double rate)
    {
        if (!(rate >= 0 && rate < 1)) throw new PagSharpException($"EMA rate must be in [0, 1) (got {rate})");
        Rate = rate;
        using var _ = no_grad();
        foreach (var (n, p) in parameters) Shadow[n] = p.detach().clone().DetachFromDisposeScope();
    }

    public void Update(IEnumerable<(string Name, Tensor Param)> parameters)
    {
        using var _ = no_grad();
        foreach (var (n, p) in parameters) Shadow[n].mul_(Rate).add_(p, alpha: 1 - Rate);
    }
}
