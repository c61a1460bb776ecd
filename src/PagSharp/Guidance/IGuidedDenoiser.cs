using PagSharp.Denoisers;
using PagSharp.Diffusion;
using static TorchSharp.torch;

namespace PagSharp.Guidance;

/// <summary>
/// What a sampling loop calls at each step: the (scaled) sample and where the loop stands → the guided prediction in
/// the model's output space and the variance values. Guidance methods live behind it; loops and schedulers never
/// know which one runs (as in k-diffusion).
/// </summary>
public interface IGuidedDenoiser
{
    ModelOutput Predict(Tensor x, StepContext step);
}
