using PagSharp.Attention;
using PagSharp.Diffusion;
using static TorchSharp.torch;

namespace PagSharp.Denoisers;

/// <summary>
/// The one contract between networks and guidance (k-diffusion's denoiser-wrapper idea): a network of any family,
/// adapted together with the conditioning of the samples being generated, predicts for a batch laid out in blocks.
/// The guidance engine decides which blocks a step needs; the adapter knows what "conditional" and "unconditional"
/// mean for its family (class labels and the null class, a prompt and the negative prompt, added conditioning) and how
/// the network takes timesteps.
/// </summary>
public interface IDenoiserModel
{
    /// <summary>Every perturbable self-attention layer of the network (names are checkpoint keys).</summary>
    IReadOnlyList<AttentionLayerInfo> AttentionLayers { get; }

    /// <summary>Number of samples B the conditioning was given for.</summary>
    long BatchSize { get; }

    /// <summary>Null when an unconditional branch exists; otherwise why not (for the error a CFG request gets).</summary>
    string? WhyNoUnconditional { get; }

    /// <summary>
    /// One forward call. <paramref name="x"/> holds <c>blocks.Count·B</c> entries: block k (entries k·B … k·B + B − 1)
    /// gets the conditioning <paramref name="blocks"/>[k]. With a shared-prefix fork in <paramref name="plan"/> the
    /// output has the fork's copies appended.
    /// </summary>
    ModelOutput Forward(Tensor x, StepContext step, IReadOnlyList<Branch> blocks, PerturbationPlan? plan);
}
