using static TorchSharp.torch;

namespace PagSharp.Training;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter 2019) with decoupled weight decay, written out so that its state (step count and
/// both moment estimates) is plain named tensors that checkpoints save and restore exactly. Same update as
/// torch.optim.AdamW: p ← p·(1 − lr·wd); m, v moments; p ← p − (lr/bc1)·m / (√v/√bc2 + ε).
/// </summary>
public sealed class AdamW
{
    private readonly (string Name, Tensor Param)[] _params;
    public Dictionary<string, Tensor> ExpAvg { get; } = new();
    public Dictionary<string, Tensor> ExpAvgSq { get; } = new();
    public double Lr { get; set; }
    public double Beta1 { get; init; } = 0.9;
    public double Beta2 { get; init; } = 0.999;
    public double Eps { get; init; } = 1e-8;
    public double WeightDecay { get; init; }
    public long Step { get; set; }

    public AdamW(IEnumerable<(string Name, Tensor Param)> parameters, double lr)
    {
        _params = parameters.ToArray();
        Lr = lr;
        foreach (var (n, p) in _params)
        {
            ExpAvg[n] = zeros_like(p).DetachFromDisposeScope();
            ExpAvgSq[n] = zeros_like(p).DetachFromDisposeScope();
        }
    }

    public void ZeroGrad()
    {
        foreach (var (_, p) in _params) p.grad?.zero_();
    }

    public void StepUpdate()
    {
        using var _ = no_grad();
        Step++;
        double bc1 = 1 - Math.Pow(Beta1, Step), bc2 = 1 - Math.Pow(Beta2, Step);
        foreach (var (n, p) in _params)
        {
            var g = p.grad;
            if (g is null) continue;
            using var scope = NewDisposeScope();
            if (WeightDecay != 0) p.mul_(1 - Lr * WeightDecay);
            ExpAvg[n].mul_(Beta1).add_(g, alpha: 1 - Beta1);
            ExpAvgSq[n].mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);
            var denom = (ExpAvgSq[n].sqrt() / Math.Sqrt(bc2)).add_(Eps);
            p.addcdiv_(ExpAvg[n], denom, value: -Lr / bc1);
        }
    }

    /// <summary>Scales gradients so their global L2 norm is at most <paramref name="maxNorm"/>; returns the norm before.</summary>
    public double ClipGradNorm(double maxNorm)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var norms = _params.Where(p => p.Param.grad is not null).Select(p => p.Param.grad!.square().sum()).ToArray();
        double total = Math.Sqrt(stack(norms).sum().item<float>());
        if (maxNorm > 0 && total > maxNorm)
        {
            double c = maxNorm / (total + 1e-6);
            foreach (var (_, p) in _params) p.grad?.mul_(c);
        }
        return total;
    }
}
