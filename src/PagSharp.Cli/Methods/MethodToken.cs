using PagSharp.Guidance;

namespace PagSharp.Cli.Methods;

/// <summary>One column: CFG scale (plain, APG or CFG-Zero* combination), PAG, SAG, autoguidance, SEG and SLG scales.</summary>
public sealed record MethodToken(string Label, double Cfg, double Pag, double Sag = 0, double Auto = 0, bool Apg = false, bool ZeroStar = false,
                                 double Seg = 0, double Slg = 0)
{
    /// <summary>
    /// <paramref name="g"/> (built with this column's scales) with the column's CFG combination and autoguidance:
    /// APG with the command line's --apg-* settings (<paramref name="apg"/>), CFG-Zero*, auto:S.
    /// </summary>
    public GuidanceSettings Apply(GuidanceSettings g, ApgSettings apg) => g with
    {
        Apg = Apg ? apg : null,
        CfgZeroStar = ZeroStar,
        AutoguidanceScale = Auto > 0 ? new ScaleSchedule.Constant(Auto) : null,
    };
}
