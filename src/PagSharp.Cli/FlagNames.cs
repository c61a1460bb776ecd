using System.Text.RegularExpressions;

namespace PagSharp.Cli;

/// <summary>
/// The library names settings by their properties (<c>SagSettings.KernelSize</c>, <c>Steps</c>); the CLI shows the
/// flag a user typed. Errors from the library pass through <see cref="Translate"/> before they are printed.
/// </summary>
public static partial class FlagNames
{
    /// <summary>Library property → CLI flag, for the properties library messages name.</summary>
    public static readonly IReadOnlyDictionary<string, string> Map = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        ["SagSettings.KernelSize"] = "--sag-kernel",
        ["PagFormula.Paper"] = "--pag-scale (the paper formula)",
        ["SagFormula.Paper"] = "--sag-scale (the paper formula)",
        ["PagScale or Sag"] = "--method pag (with --pag-scale) or --method sag (with --sag-scale)",
        ["TimestepRespacing"] = "--timestep-respacing",
        ["Steps"] = "--steps",
        ["BatchSize"] = "--batch-size",
        ["Eta"] = "--eta",
        ["Labels"] = "--labels",
        ["Epochs"] = "--epochs",
        ["Count"] = "--count",
        ["KarrasSigmas"] = "--karras-sigmas",
        ["EmaRate"] = "--ema-rate",
        ["LabelDropProb"] = "--label-drop",
        ["LearningRate"] = "--lr",
        ["GradClip"] = "--grad-clip",
        ["WeightDecay"] = "--weight-decay",
        ["Precision"] = "--precision",
        ["Scheduler"] = "--scheduler",
    };

    /// <summary>The message with every mapped property name (as a whole word) replaced by its flag.</summary>
    public static string Translate(string message)
    {
        foreach (var (property, flag) in Map.OrderByDescending(kv => kv.Key.Length))
            message = Regex.Replace(message, $@"(?<![\w.-]){Regex.Escape(property)}(?![\w])", flag);
        return message;
    }
}
