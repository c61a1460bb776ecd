using PagSharp.Models;
using static TorchSharp.torch;

namespace PagSharp.Guidance;

/// <summary>
/// What a sampler calls: x_t and the model timesteps [B] → (guided) ε and the variance values. Guidance methods are
/// denoisers wrapping a model; samplers never know which one they run (as in k-diffusion).
/// </summary>
public interface IDenoiser
{
    EpsOutput Predict(Tensor x, Tensor t);
}
