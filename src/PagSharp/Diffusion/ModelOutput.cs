using static TorchSharp.torch;

namespace PagSharp.Diffusion;

/// <summary>
/// What a denoiser returns for a batch: the prediction in the model's own space (<see cref="Output"/>: ε for
/// ε-prediction models, v for v-prediction ones, as diffusers' <c>model_output</c>) and, for learned-variance models
/// (ADM), the variance values v ∈ [−1, 1] that interpolate log β̃_t and log β_t.
/// </summary>
public sealed record ModelOutput(Tensor Output, Tensor? VarValues);
