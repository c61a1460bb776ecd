using System.Globalization;
using PagSharp.Attention;
using PagSharp.Guidance;

namespace PagSharp.Cli.Commands;

/// <summary>The --seg-* and --slg-* options, shared by <c>pag sample</c> and <c>pag txt2img</c>.</summary>
public interface IPerturbedBranchOptions
{
    double? SegScale { get; }
    string? SegBlurSigma { get; }
    string? SegLayers { get; }
    double? SlgScale { get; }
    string? SlgLayers { get; }
    double? SlgStart { get; }
    double? SlgStop { get; }
    string? SlgSkip { get; }
}

/// <summary>Builds <see cref="GuidanceSettings.Perturbed"/> from <see cref="IPerturbedBranchOptions"/>.</summary>
public static class PerturbedBranchOptions
{
    /// <summary>The SEG and SLG branches from --seg-* / --slg-* (each only with its scale; 0 = off).</summary>
    /// <param name="resolve">Turns a layer spec into layer names (the command's --pag-layers syntax).</param>
    /// <param name="defaultLayers">The spec used when --seg-layers / --slg-layers is not given (the model's middle block).</param>
    /// <param name="segScale">A comparison column's SEG scale, replacing --seg-scale (0 = off); null = the option's.</param>
    /// <param name="slgScale">A comparison column's SLG scale, replacing --slg-scale (0 = off); null = the option's.</param>
    public static List<PerturbedGuidance> BuildPerturbed(this IPerturbedBranchOptions o, Func<string, IReadOnlyList<string>> resolve, string defaultLayers,
                                                         double? segScale = null, double? slgScale = null)
    {
        var list = new List<PerturbedGuidance>();
        if (o.SegScale is null && segScale is null && (o.SegBlurSigma is not null || o.SegLayers is not null))
            throw new PagSharpException("--seg-blur-sigma and --seg-layers need --seg-scale S");
        if (o.SlgScale is null && slgScale is null && (o.SlgLayers is not null || o.SlgStart is not null || o.SlgStop is not null || o.SlgSkip is not null))
            throw new PagSharpException("--slg-layers, --slg-skip, --slg-start and --slg-stop need --slg-scale S");
        var skip = (o.SlgSkip ?? "attention").Trim().ToLowerInvariant() switch
        {
            "attention" => SkipTarget.Attention,
            "block" => SkipTarget.Block,
            "resblock" => SkipTarget.ResBlock,
            _ => throw new PagSharpException($"--slg-skip '{o.SlgSkip}': valid: attention, block, resblock"),
        };
        if ((segScale ?? o.SegScale) is double seg && seg != 0)
        {
            double sigma = 10;
            if (o.SegBlurSigma is { } text)
            {
                if (text.Trim().Equals("inf", StringComparison.OrdinalIgnoreCase)) sigma = double.PositiveInfinity;
                else if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out sigma) || !(sigma > 0))
                    throw new PagSharpException($"--seg-blur-sigma '{text}' must be a number > 0 or 'inf'");
            }
            list.Add(PerturbedGuidance.Seg(seg, sigma, ResolveNonEmpty(o.SegLayers ?? defaultLayers, resolve, "--seg-layers")));
        }
        if ((slgScale ?? o.SlgScale) is double slg && slg != 0)
            list.Add(PerturbedGuidance.Slg(slg, ResolveNonEmpty(o.SlgLayers ?? defaultLayers, resolve, "--slg-layers"), o.SlgStart ?? 0.01, o.SlgStop ?? 0.2, skip));
        return list;
    }

    private static IReadOnlyList<string> ResolveNonEmpty(string spec, Func<string, IReadOnlyList<string>> resolve, string option)
    {
        var resolved = resolve(spec);
        if (resolved.Count == 0) throw new PagSharpException($"{option} '{spec}' matches no attention layer of this model");
        return resolved;
    }
}
