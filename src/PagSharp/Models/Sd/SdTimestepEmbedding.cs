using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>diffusers' <c>get_timestep_embedding</c> (the UNet's <c>time_proj</c>), float32 as the reference.</summary>
public static class SdTimesteps
{
    /// <summary>
    /// exponent = −ln(10000)·i / (half − freq_shift), i = 0..half−1; args = t·exp(exponent); [sin, cos] of args,
    /// swapped to [cos, sin] with <paramref name="flipSinToCos"/>; zero-padded when <paramref name="dim"/> is odd.
    /// <paramref name="timesteps"/> [B] may be integer or float (Euler schedulers pass fractional timesteps).
    /// </summary>
    public static Tensor Embedding(Tensor timesteps, int dim, bool flipSinToCos, double freqShift, double maxPeriod = 10000)
    {
        using var scope = NewDisposeScope();
        int half = dim / 2;
        var exponent = arange(0, half, dtype: ScalarType.Float32, device: timesteps.device) * (-Math.Log(maxPeriod));
        exponent = exponent / (half - freqShift);
        var args = timesteps.to_type(ScalarType.Float32).unsqueeze(1) * exp(exponent).unsqueeze(0);
        var emb = flipSinToCos ? cat(new[] { cos(args), sin(args) }, -1) : cat(new[] { sin(args), cos(args) }, -1);
        if (dim % 2 == 1) emb = functional.pad(emb, new long[] { 0, 1, 0, 0 });
        return emb.MoveToOuterDisposeScope();
    }
}

/// <summary>diffusers' <c>TimestepEmbedding</c>: linear_1 → act → linear_2.</summary>
internal sealed class SdTimeMlp : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear linear_1;
    private readonly Linear linear_2;
#pragma warning restore IDE1006
    private readonly string _act;

    public SdTimeMlp(long inDim, long embDim, string act) : base(nameof(SdTimeMlp))
    {
        linear_1 = Linear(inDim, embDim);
        linear_2 = Linear(embDim, embDim);
        _act = act;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => linear_2.forward(SdNn.Activation(_act, linear_1.forward(x)));
}
