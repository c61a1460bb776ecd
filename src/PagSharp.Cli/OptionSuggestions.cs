using System.Reflection;
using System.Text.RegularExpressions;
using Spectre.Console.Cli;

namespace PagSharp.Cli;

/// <summary>
/// The options each command accepts (read from its settings type's <see cref="CommandOptionAttribute"/>s), and the
/// closest one to a misspelled option, so that an unknown option fails with "did you mean …".
/// </summary>
public static partial class OptionSuggestions
{
    /// <summary>Every long and short name of the options of <paramref name="settingsType"/>, with their dashes.</summary>
    public static IReadOnlyList<string> OptionsOf(Type settingsType) => settingsType
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Select(p => p.GetCustomAttribute<CommandOptionAttribute>())
        .OfType<CommandOptionAttribute>()
        .SelectMany(a => a.LongNames.Select(n => "--" + n).Concat(a.ShortNames.Select(n => "-" + n)))
        .Append("--help")
        .Append("--threads")
        .ToArray();

    /// <summary>The settings type of command <paramref name="command"/>'s class (its Command&lt;TSettings&gt; base).</summary>
    public static Type? SettingsTypeOf(Type commandType)
    {
        for (var t = commandType; t is not null; t = t.BaseType)
            if (t.IsGenericType && t.GetGenericArguments() is [var s] && typeof(CommandSettings).IsAssignableFrom(s)) return s;
        return null;
    }

    /// <summary>The valid option closest to <paramref name="unknown"/> (edit distance ≤ a third of its length), or null.</summary>
    public static string? Closest(string unknown, IEnumerable<string> valid)
    {
        string u = "--" + unknown.TrimStart('-');
        var best = valid.Select(v => (Option: v, Distance: Distance(u, v))).OrderBy(x => x.Distance).ThenBy(x => x.Option, StringComparer.Ordinal).FirstOrDefault();
        return best.Option is not null && best.Distance <= Math.Max(2, u.Length / 3) ? best.Option : null;
    }

    /// <summary>Optimal string alignment distance (Levenshtein with adjacent transpositions).</summary>
    public static int Distance(string a, string b)
    {
        var d = new int[a.Length + 1, b.Length + 1];
        for (int i = 0; i <= a.Length; i++) d[i, 0] = i;
        for (int j = 0; j <= b.Length; j++) d[0, j] = j;
        for (int i = 1; i <= a.Length; i++)
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                d[i, j] = Math.Min(Math.Min(d[i - 1, j] + 1, d[i, j - 1] + 1), d[i - 1, j - 1] + cost);
                if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) d[i, j] = Math.Min(d[i, j], d[i - 2, j - 2] + 1);
            }
        return d[a.Length, b.Length];
    }

    /// <summary>
    /// Spectre's message for a parse error, with the closest valid option added when it names an unknown option.
    /// </summary>
    public static string Explain(string message, IReadOnlyList<string> validOptions)
    {
        var m = UnknownOption().Match(message);
        if (!m.Success) return message;
        string name = m.Groups[1].Value;
        string shown = (name.Length == 1 ? "-" : "--") + name;
        string? near = Closest(name, validOptions);
        return near is null
            ? $"unknown option '{shown}'; see --help for the valid options"
            : $"unknown option '{shown}'; did you mean '{near}'?";
    }

    [GeneratedRegex(@"Unknown option '([^']+)'", RegexOptions.IgnoreCase)]
    private static partial Regex UnknownOption();
}

/// <summary>
/// Checks option values before Spectre binds them, so a value of the wrong type gets one line naming the option and
/// the valid range (Spectre's own conversion errors carry neither, and come with a stack trace).
/// </summary>
public static class OptionValues
{
    /// <summary>Throws a <see cref="PagSharpException"/> for the first value in <paramref name="args"/> that does not convert.</summary>
    public static void Check(IReadOnlyList<string> args, Type settingsType)
    {
        var byName = new Dictionary<string, Type>(StringComparer.Ordinal);
        foreach (var p in settingsType.GetProperties(BindingFlags.Public | BindingFlags.Instance))
            if (p.GetCustomAttribute<CommandOptionAttribute>() is { } a)
            {
                foreach (var n in a.LongNames) byName["--" + n] = p.PropertyType;
                foreach (var n in a.ShortNames) byName["-" + n] = p.PropertyType;
            }
        for (int i = 1; i < args.Count; i++)
        {
            string token = args[i];
            if (!token.StartsWith('-')) continue;
            string name = token, value;
            int eq = token.IndexOf('=');
            if (eq > 0) { name = token[..eq]; value = token[(eq + 1)..]; }
            else if (!byName.ContainsKey(name)) continue;
            else
            {
                var t = Nullable.GetUnderlyingType(byName[name]) ?? byName[name];
                if (t == typeof(bool) || i + 1 >= args.Count) continue;
                value = args[++i];
            }
            if (byName.TryGetValue(name, out var type)) CheckValue(name, value, Nullable.GetUnderlyingType(type) ?? type);
        }
    }

    private static void CheckValue(string option, string value, Type type)
    {
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        var num = System.Globalization.NumberStyles.Integer;
        bool ok = type switch
        {
            _ when type == typeof(int) => int.TryParse(value, num, inv, out _),
            _ when type == typeof(long) => long.TryParse(value, num, inv, out _),
            _ when type == typeof(double) => double.TryParse(value, System.Globalization.NumberStyles.Float, inv, out double d) && double.IsFinite(d),
            _ when type == typeof(float) => float.TryParse(value, System.Globalization.NumberStyles.Float, inv, out float f) && float.IsFinite(f),
            _ => true,
        };
        if (ok) return;
        string expected = type == typeof(int) ? $"an integer from {int.MinValue} to {int.MaxValue}"
            : type == typeof(long) ? "an integer"
            : "a finite number (e.g. 2.5)";
        throw new PagSharpException($"{option}: '{value}' is not valid; expected {expected}");
    }
}
