using System.Globalization;

namespace PagSharp.Inverse;

/// <summary>
/// Parses degradation specs:
/// <c>box:SIZE</c> (centred) or <c>box:SIZE@TOP,LEFT</c>; <c>random:FRACTION</c>; <c>sr:FACTOR</c> or
/// <c>sr:FACTOR:bicubic</c>; <c>blur:KERNEL:SIGMA</c>; <c>motion:KERNEL:INTENSITY</c>.
/// </summary>
public static class OperatorSpec
{
    public const string ValidForms = "box:SIZE, box:SIZE@TOP,LEFT, random:FRACTION, sr:FACTOR, sr:FACTOR:bicubic, blur:KERNEL:SIGMA, motion:KERNEL:INTENSITY";

    public static IMeasurementOperator Parse(string spec, int imageSize, double noiseSigma, long seed)
    {
        if (!(noiseSigma >= 0)) throw new PagSharpException($"measurement noise σ_y must be ≥ 0 (got {noiseSigma})");
        var parts = spec.Split(':');
        double Num(int i) => parts.Length > i && double.TryParse(parts[i], NumberStyles.Float, CultureInfo.InvariantCulture, out var v) ? v
            : throw new PagSharpException($"degradation '{spec}': expected a number in part {i + 1}; valid forms: {ValidForms}");
        int Int(int i) => parts.Length > i && int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v
            : throw new PagSharpException($"degradation '{spec}': expected an integer in part {i + 1}; valid forms: {ValidForms}");
        switch (parts[0])
        {
            case "box" when parts.Length == 2:
            {
                var at = parts[1].Split('@');
                if (!int.TryParse(at[0], out int size)) throw new PagSharpException($"degradation '{spec}': the box size must be an integer; valid forms: {ValidForms}");
                int top = (imageSize - size) / 2, left = top;
                if (at.Length == 2)
                {
                    var tl = at[1].Split(',');
                    if (tl.Length != 2 || !int.TryParse(tl[0], out top) || !int.TryParse(tl[1], out left))
                        throw new PagSharpException($"degradation '{spec}': the position must be TOP,LEFT; valid forms: {ValidForms}");
                }
                return InpaintOperator.Box(imageSize, size, top, left, noiseSigma, spec);
            }
            case "random" when parts.Length == 2:
                return InpaintOperator.RandomPixels(imageSize, Num(1), seed, noiseSigma, spec);
            case "sr" when parts.Length is 2 or 3:
                if (parts.Length == 3 && parts[2] != "bicubic") throw new PagSharpException($"degradation '{spec}': the third part may only be 'bicubic'; valid forms: {ValidForms}");
                return new SuperResolutionOperator(imageSize, Int(1), parts.Length == 3, noiseSigma, spec);
            case "blur" when parts.Length == 3:
                return BlurOperator.Gaussian(imageSize, Int(1), Num(2), noiseSigma, spec);
            case "motion" when parts.Length == 3:
                return BlurOperator.Motion(imageSize, Int(1), Num(2), seed, noiseSigma, spec);
            default:
                throw new PagSharpException($"unknown degradation '{spec}'; valid forms: {ValidForms}");
        }
    }
}
