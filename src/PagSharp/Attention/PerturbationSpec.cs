using System.Globalization;

namespace PagSharp.Attention;

/// <summary>Parses the perturbation policy strings of the CLI's <c>--perturbation</c>.</summary>
public static class PerturbationSpec
{
    /// <summary>Every accepted form, for help and error messages.</summary>
    public const string ValidForms =
        "identity (PAG), mask:R (random logit masking with drop rate R in [0,1], diagonal kept), " +
        "mask-nodiag:R (the same, diagonal maskable), noise:S (Gaussian noise σ=S ≥ 0 on the softmax probabilities, as the official code), " +
        "noise-logits:S (the same on the logits), blur:S (Gaussian blur over the query grid, σ=S > 0 tokens), " +
        "soft:L ((1−L)·A + L·I, L in [0,1]), seg:S (SEG: Gaussian blur of the queries over the token grid, σ=S ≥ 0 tokens, or seg:inf for the mean query), " +
        "skip (SLG: the layer contributes nothing, its block passes its input on), " +
        "skip-block (SLG on the whole transformer block: self-attention, cross-attention and feed-forward), " +
        "skip-resblock (SLG on the ResBlock feeding the layer: it outputs its skip connection; the attention runs normally)";

    /// <summary>
    /// <c>identity | mask:R | mask-nodiag:R | noise:S | noise-logits:S | blur:S | soft:L</c> → the policy.
    /// Numbers use '.' as the decimal separator. Throws a <see cref="PagSharpException"/> listing the valid forms.
    /// </summary>
    public static IAttentionPerturbation Parse(string spec)
    {
        if (string.IsNullOrWhiteSpace(spec))
            throw new PagSharpException($"empty perturbation; valid: {ValidForms}");
        string s = spec.Trim();
        if (s == "identity") return IdentityPerturbation.Instance;
        if (s == "skip") return SkipPerturbation.Instance;
        if (s == "skip-block") return SkipPerturbation.Block;
        if (s == "skip-resblock") return SkipPerturbation.ResBlock;
        int colon = s.IndexOf(':');
        if (colon < 0)
            throw new PagSharpException(Known(s)
                ? $"perturbation '{spec}' needs a value, e.g. {s}:0.5; valid: {ValidForms}"
                : $"unknown perturbation '{spec}'; valid: {ValidForms}");
        string name = s[..colon], arg = s[(colon + 1)..];
        if (!Known(name))
            throw new PagSharpException($"unknown perturbation '{name}' in '{spec}'; valid: {ValidForms}");
        if (name == "seg" && arg is "inf" or "infinity") return new SegPerturbation(double.PositiveInfinity);
        if (!double.TryParse(arg, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || double.IsNaN(v) || double.IsInfinity(v))
            throw new PagSharpException($"perturbation '{spec}': '{arg}' is not a number; valid: {ValidForms}");
        try
        {
            return name switch
            {
                "mask" => new MaskPerturbation(v, retainDiagonal: true),
                "mask-nodiag" => new MaskPerturbation(v, retainDiagonal: false),
                "noise" => new NoisePerturbation(v, NoiseTarget.Probabilities),
                "noise-logits" => new NoisePerturbation(v, NoiseTarget.Logits),
                "blur" => new BlurPerturbation(v),
                "soft" => new SoftPerturbation(v),
                "seg" => new SegPerturbation(v),
                _ => throw new InvalidOperationException(name),
            };
        }
        catch (PagSharpException e)
        {
            throw new PagSharpException($"perturbation '{spec}': {e.Message}; valid: {ValidForms}", e);
        }
    }

    private static bool Known(string name) => name is "mask" or "mask-nodiag" or "noise" or "noise-logits" or "blur" or "soft" or "seg";
}
