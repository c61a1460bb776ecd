using static TorchSharp.torch;

namespace PagSharp.Models.Adm;

/// <summary>Sinusoidal timestep embedding as guided-diffusion's <c>timestep_embedding</c> (cos first, then sin).</summary>
public static class TimestepEmbedding
{
    /// <summary>
    /// freqs = exp(−ln(maxPeriod)·i/half), i = 0..half−1; args = t·freqs; emb = [cos(args), sin(args)] (zero-padded
    /// when <paramref name="dim"/> is odd). Computed in float32 like the reference.
    /// </summary>
    public static Tensor Sinusoidal(Tensor timesteps, int dim, double maxPeriod = 10000)
    {
        using var scope = NewDisposeScope();
        int half = dim / 2;
        var freqs = exp(arange(0, half, dtype: ScalarType.Float32, device: timesteps.device) * (float)(-Math.Log(maxPeriod)) / half);
        var args = timesteps.to_type(ScalarType.Float32).unsqueeze(1) * freqs.unsqueeze(0);
        var emb = cat(new[] { cos(args), sin(args) }, -1);
        if (dim % 2 == 1) emb = cat(new[] { emb, zeros_like(emb[.., ..1]) }, -1);
        return emb.MoveToOuterDisposeScope();
    }
}
