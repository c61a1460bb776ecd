using System.Globalization;

namespace PagSharp.Cli.Methods;

/// <summary>The method tokens of <c>pag compare --methods</c> and <c>pag serve</c>'s columns.</summary>
public static class MethodTokens
{
    /// <summary>
    /// Parses a comma-separated list of columns: none, pag:S, sag:S, seg:S, slg:S, auto:S, cfg:W, apg:W, cfgzero:W and
    /// their + combinations (cfg:W+pag:S); numbers ≥ 0.
    /// </summary>
    public static IReadOnlyList<MethodToken> Parse(string spec) =>
        spec.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries).Select(item =>
        {
            double cfg = 1, pag = 0, sag = 0, auto = 0, seg = 0, slg = 0;
            bool apg = false, zero = false;
            foreach (var part in item.Split('+', StringSplitOptions.TrimEntries))
            {
                if (part == "none") continue;
                var kv = part.Split(':', '=');
                if (kv.Length != 2 || !double.TryParse(kv[1], NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || double.IsNaN(v) || v < 0)
                    throw new PagSharpException($"--methods item '{item}': expected none, pag:S, sag:S, seg:S, slg:S, auto:S, cfg:W, apg:W, cfgzero:W and their + combinations (cfg:W+pag:S) with numbers ≥ 0");
                switch (kv[0])
                {
                    case "pag": pag = v; break;
                    case "sag": sag = v; break;
                    case "cfg": cfg = v; break;
                    case "apg": cfg = v; apg = true; break;
                    case "cfgzero": cfg = v; zero = true; break;
                    case "auto": auto = v; break;
                    case "seg": seg = v; break;
                    case "slg": slg = v; break;
                    default: throw new PagSharpException($"--methods item '{item}': unknown method '{kv[0]}'; valid: none, pag, sag, seg, slg, cfg, apg, cfgzero, auto");
                }
            }
            if (pag > 0 && sag > 0)
                throw new PagSharpException($"--methods item '{item}': PAG and SAG cannot be combined in one column");
            if (sag > 0 && (seg > 0 || slg > 0))
                throw new PagSharpException($"--methods item '{item}': SEG/SLG cannot be combined with SAG in one column");
            if (apg && zero) throw new PagSharpException($"--methods item '{item}': apg and cfgzero are alternative CFG combinations");
            return new MethodToken(item, cfg, pag, sag, auto, apg, zero, seg, slg);
        }).ToArray();
}
