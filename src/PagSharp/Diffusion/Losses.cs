using static TorchSharp.torch;

namespace PagSharp.Diffusion;

/// <summary>
/// Training objectives of improved DDPM (Nichol &amp; Dhariwal 2021), as guided-diffusion's <c>training_losses</c>:
/// L_hybrid = L_simple + λ·L_vlb, where the VLB term trains only the variance (ε is detached in it, §3.1).
/// </summary>
public static class Losses
{
    /// <summary>KL(N(μ1, e^{lv1}) ‖ N(μ2, e^{lv2})), elementwise, in nats.</summary>
    public static Tensor NormalKl(Tensor mean1, Tensor logvar1, Tensor mean2, Tensor logvar2) =>
        0.5 * (-1.0 + logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2).square() * (-logvar2).exp());

    /// <summary>Fast approximation of the standard normal CDF (Page 1977), as in the reference.</summary>
    public static Tensor ApproxStandardNormalCdf(Tensor x) =>
        0.5 * (1.0 + tanh(Math.Sqrt(2.0 / Math.PI) * (x + 0.044715 * x.pow(3))));

    /// <summary>log-likelihood of data in [−1,1] discretised to 8 bits under N(means, e^{2·logScales}) (Ho et al. 2020, §3.3).</summary>
    public static Tensor DiscretizedGaussianLogLikelihood(Tensor x, Tensor means, Tensor logScales)
    {
        var centered = x - means;
        var invStdv = (-logScales).exp();
        var cdfPlus = ApproxStandardNormalCdf(invStdv * (centered + 1.0 / 255));
        var cdfMin = ApproxStandardNormalCdf(invStdv * (centered - 1.0 / 255));
        var logCdfPlus = cdfPlus.clamp(min: 1e-12).log();
        var logOneMinusCdfMin = (1.0 - cdfMin).clamp(min: 1e-12).log();
        var logCdfDelta = (cdfPlus - cdfMin).clamp(min: 1e-12).log();
        return where(x < -0.999, logCdfPlus, where(x > 0.999, logOneMinusCdfMin, logCdfDelta));
    }

    private static Tensor MeanFlat(Tensor t) => t.mean(Enumerable.Range(1, (int)t.dim() - 1).Select(i => (long)i).ToArray());

    /// <summary>
    /// Per-sample hybrid loss terms for ε-prediction with learned-range variance. <paramref name="eps"/> and
    /// <paramref name="varValues"/> are the model output at (x_t, t); t indexes <paramref name="d"/>.
    /// Returns (mse, vb in bits/dim), each [B].
    /// </summary>
    public static (Tensor Mse, Tensor Vb) Hybrid(GaussianDiffusion d, Tensor x0, Tensor xt, Tensor t, Tensor noise, Tensor eps, Tensor? varValues)
    {
        var mse = MeanFlat((noise - eps).square());
        if (varValues is null) return (mse, zeros_like(mse));
        var (trueMean, trueLogVar) = d.QPosterior(x0, xt, t);
        var (mean, logVar, _) = d.PMeanVariance(xt, t, eps.detach(), varValues, clip: false);
        var kl = MeanFlat(NormalKl(trueMean, trueLogVar, mean, logVar)) / Math.Log(2.0);
        var nll = MeanFlat(-DiscretizedGaussianLogLikelihood(x0, mean, 0.5 * logVar)) / Math.Log(2.0);
        var vb = where(t == 0, nll, kl);
        return (mse, vb);
    }
}
