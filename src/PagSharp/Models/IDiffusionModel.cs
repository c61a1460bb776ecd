using PagSharp.Attention;
using PagSharp.Models.Adm;
using static TorchSharp.torch;

namespace PagSharp.Models;

/// <summary>An ε-prediction network's raw output: ε and, for learned-variance models, the variance values v ∈ [−1, 1].</summary>
public sealed record EpsOutput(Tensor Eps, Tensor? VarValues);

/// <summary>A diffusion network that guidance wrappers can call with a batch, labels and a perturbation plan.</summary>
public interface IDiffusionModel
{
    /// <summary>Class labels are required (class-conditional model).</summary>
    bool IsClassConditional { get; }
    /// <summary>Number of class labels (including a null class), or null for unconditional models.</summary>
    int? NumClasses { get; }
    /// <summary>The label meaning "no class" (trained with label dropout), or null when CFG is impossible.</summary>
    int? NullClass { get; }
    /// <summary>Every perturbable self-attention layer.</summary>
    IReadOnlyList<AttentionLayerInfo> AttentionLayers { get; }
    /// <summary>One forward pass. <paramref name="t"/> holds original (model) timesteps.</summary>
    EpsOutput Forward(Tensor x, Tensor t, Tensor? y, PerturbationPlan? plan);
}

/// <summary>Adapts an <see cref="AdmUNet"/> (ε, or ε and v stacked on channels) to <see cref="IDiffusionModel"/>.</summary>
public sealed class AdmDiffusionModel : IDiffusionModel
{
    public AdmUNet Net { get; }
    public AdmDiffusionModel(AdmUNet net) => Net = net;
    public bool IsClassConditional => Net.IsClassConditional;
    public int? NumClasses => Net.Config.ResolvedNumClasses;
    public int? NullClass => Net.Config.NullClass;
    public IReadOnlyList<AttentionLayerInfo> AttentionLayers => Net.AttentionLayers;

    public EpsOutput Forward(Tensor x, Tensor t, Tensor? y, PerturbationPlan? plan)
    {
        var o = Net.Forward(x, t, y, plan);
        if (!Net.Config.LearnSigma) return new EpsOutput(o, null);
        var parts = o.split(x.shape[1], 1);
        return new EpsOutput(parts[0], parts[1]);
    }
}
