namespace PagSharp.Imaging;

/// <summary>
/// A built-in 5×7 pixel font for printable ASCII (32–126), so labels and charts render the same everywhere without
/// depending on installed system fonts (SkiaSharp's dependency-free native build has no fontconfig). Glyph bodies are
/// 5×7 cells (baseline on row 6); g, j, p, q, y, ',' and ';' use an eighth row as descender. Characters advance by 6
/// cells, lines by 10, and everything is drawn scaled by an integer factor. Labels pass through <see cref="Printable"/>
/// first, which spells common typographic characters (…, ×, −, ≤, Greek letters, …) in ASCII; any other character
/// outside printable ASCII is drawn as '?'.
/// </summary>
internal static class BitmapFont
{
    public const int GlyphWidth = 5;
    /// <summary>Rows per glyph, including the descender row below the baseline.</summary>
    public const int GlyphHeight = 8;
    /// <summary>Horizontal distance between the starts of consecutive characters, at scale 1.</summary>
    public const int Advance = 6;
    /// <summary>Vertical distance between consecutive text lines, at scale 1.</summary>
    public const int LineHeight = 10;

    // One entry per character from ' ' (32) to '~' (126): seven rows of five cells (an eighth, descender row where
    // needed), '#' = ink.
    private static readonly string[] Glyphs =
    [
        "..... ..... ..... ..... ..... ..... .....", // ' '
        "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..", // !
        ".#.#. .#.#. ..... ..... ..... ..... .....", // "
        ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.", // #
        "..#.. .#### #.#.. .###. ..#.# ####. ..#..", // $
        "##... ##..# ...#. ..#.. .#... #..## ...##", // %
        ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#", // &
        "..#.. ..#.. ..... ..... ..... ..... .....", // '
        "...#. ..#.. .#... .#... .#... ..#.. ...#.", // (
        ".#... ..#.. ...#. ...#. ...#. ..#.. .#...", // )
        "..... ..#.. #.#.# .###. #.#.# ..#.. .....", // *
        "..... ..#.. ..#.. ##### ..#.. ..#.. .....", // +
        "..... ..... ..... ..... ..... .##.. ..#.. .#...", // ,
        "..... ..... ..... ##### ..... ..... .....", // -
        "..... ..... ..... ..... ..... .##.. .##..", // .
        "..... ....# ...#. ..#.. .#... #.... .....", // /
        ".###. #...# #..## #.#.# ##..# #...# .###.", // 0
        "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.", // 1
        ".###. #...# ....# ...#. ..#.. .#... #####", // 2
        "##### ...#. ..#.. ...#. ....# #...# .###.", // 3
        "...#. ..##. .#.#. #..#. ##### ...#. ...#.", // 4
        "##### #.... ####. ....# ....# #...# .###.", // 5
        "..##. .#... #.... ####. #...# #...# .###.", // 6
        "##### ....# ...#. ..#.. .#... .#... .#...", // 7
        ".###. #...# #...# .###. #...# #...# .###.", // 8
        ".###. #...# #...# .#### ....# ...#. .##..", // 9
        "..... .##.. .##.. ..... .##.. .##.. .....", // :
        "..... .##.. .##.. ..... ..... .##.. ..#.. .#...", // ;
        "...#. ..#.. .#... #.... .#... ..#.. ...#.", // <
        "..... ..... ##### ..... ##### ..... .....", // =
        ".#... ..#.. ...#. ....# ...#. ..#.. .#...", // >
        ".###. #...# ....# ...#. ..#.. ..... ..#..", // ?
        ".###. #...# ....# .##.# #.#.# #.#.# .###.", // @
        ".###. #...# #...# ##### #...# #...# #...#", // A
        "####. #...# #...# ####. #...# #...# ####.", // B
        ".###. #...# #.... #.... #.... #...# .###.", // C
        "###.. #..#. #...# #...# #...# #..#. ###..", // D
        "##### #.... #.... ####. #.... #.... #####", // E
        "##### #.... #.... ####. #.... #.... #....", // F
        ".###. #...# #.... #.### #...# #...# .####", // G
        "#...# #...# #...# ##### #...# #...# #...#", // H
        ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", // I
        "..### ...#. ...#. ...#. ...#. #..#. .##..", // J
        "#...# #..#. #.#.. ##... #.#.. #..#. #...#", // K
        "#.... #.... #.... #.... #.... #.... #####", // L
        "#...# ##.## #.#.# #.#.# #...# #...# #...#", // M
        "#...# #...# ##..# #.#.# #..## #...# #...#", // N
        ".###. #...# #...# #...# #...# #...# .###.", // O
        "####. #...# #...# ####. #.... #.... #....", // P
        ".###. #...# #...# #...# #.#.# #..#. .##.#", // Q
        "####. #...# #...# ####. #.#.. #..#. #...#", // R
        ".#### #.... #.... .###. ....# ....# ####.", // S
        "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", // T
        "#...# #...# #...# #...# #...# #...# .###.", // U
        "#...# #...# #...# #...# #...# .#.#. ..#..", // V
        "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.", // W
        "#...# #...# .#.#. ..#.. .#.#. #...# #...#", // X
        "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..", // Y
        "##### ....# ...#. ..#.. .#... #.... #####", // Z
        ".###. .#... .#... .#... .#... .#... .###.", // [
        "..... #.... .#... ..#.. ...#. ....# .....", // \
        ".###. ...#. ...#. ...#. ...#. ...#. .###.", // ]
        "..#.. .#.#. #...# ..... ..... ..... .....", // ^
        "..... ..... ..... ..... ..... ..... #####", // _
        ".#... ..#.. ..... ..... ..... ..... .....", // `
        "..... ..... .###. ....# .#### #...# .####", // a
        "#.... #.... #.##. ##..# #...# #...# ####.", // b
        "..... ..... .###. #.... #.... #...# .###.", // c
        "....# ....# .##.# #..## #...# #...# .####", // d
        "..... ..... .###. #...# ##### #.... .###.", // e
        "..##. .#..# .#... ###.. .#... .#... .#...", // f
        "..... ..... .#### #...# #...# .#### ....# .###.", // g
        "#.... #.... #.##. ##..# #...# #...# #...#", // h
        "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.", // i
        "...#. ..... ..##. ...#. ...#. ...#. #..#. .##..", // j
        "#.... #.... #..#. #.#.. ##... #.#.. #..#.", // k
        ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", // l
        "..... ..... ##.#. #.#.# #.#.# #...# #...#", // m
        "..... ..... #.##. ##..# #...# #...# #...#", // n
        "..... ..... .###. #...# #...# #...# .###.", // o
        "..... ..... ####. #...# #...# ####. #.... #....", // p
        "..... ..... .#### #...# #...# .#### ....# ....#", // q
        "..... ..... #.##. ##..# #.... #.... #....", // r
        "..... ..... .###. #.... .###. ....# ####.", // s
        ".#... .#... ###.. .#... .#... .#..# ..##.", // t
        "..... ..... #...# #...# #...# #..## .##.#", // u
        "..... ..... #...# #...# #...# .#.#. ..#..", // v
        "..... ..... #...# #...# #.#.# #.#.# .#.#.", // w
        "..... ..... #...# .#.#. ..#.. .#.#. #...#", // x
        "..... ..... #...# #...# #...# .#### ....# .###.", // y
        "..... ..... ##### ...#. ..#.. .#... #####", // z
        "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.", // {
        "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..", // |
        ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...", // }
        "..... ..... .#... #.#.# ...#. ..... .....", // ~
    ];

    // Bit (4 - x) of Rows[(c - 32) * 7 + y] is set when cell (x, y) of character c is ink.
    private static readonly byte[] Rows = BuildRows();

    private static byte[] BuildRows()
    {
        var rows = new byte[Glyphs.Length * GlyphHeight];
        for (int g = 0; g < Glyphs.Length; g++)
        {
            string[] parts = Glyphs[g].Split(' ');
            if (parts.Length != GlyphHeight && parts.Length != GlyphHeight - 1) throw new InvalidOperationException($"Glyph {g + 32} has {parts.Length} rows.");
            for (int y = 0; y < parts.Length; y++)
            {
                if (parts[y].Length != GlyphWidth) throw new InvalidOperationException($"Glyph {g + 32} row {y} is not {GlyphWidth} wide.");
                byte bits = 0;
                for (int x = 0; x < GlyphWidth; x++)
                    if (parts[y][x] == '#') bits |= (byte)(1 << (GlyphWidth - 1 - x));
                rows[g * GlyphHeight + y] = bits;
            }
        }
        return rows;
    }

    /// <summary>Number of glyphs in the font (printable ASCII, 95).</summary>
    public static int GlyphCount => Glyphs.Length;

    /// <summary>Whether cell (<paramref name="x"/>, <paramref name="y"/>) of <paramref name="c"/>'s glyph is ink.</summary>
    public static bool IsInk(char c, int x, int y)
    {
        if ((uint)x >= GlyphWidth || (uint)y >= GlyphHeight) return false;
        int g = c is >= ' ' and <= '~' ? c - ' ' : '?' - ' ';
        return (Rows[g * GlyphHeight + y] & (1 << (GlyphWidth - 1 - x))) != 0;
    }

    private static readonly Dictionary<char, string> AsciiSpellings = new()
    {
        ['…'] = "...", ['×'] = "x", ['÷'] = "/", ['·'] = "*", ['−'] = "-", ['–'] = "-", ['—'] = "-", ['≤'] = "<=",
        ['≥'] = ">=", ['≈'] = "~", ['→'] = "->", ['±'] = "+-", ['‘'] = "'", ['’'] = "'", ['“'] = "\"", ['”'] = "\"",
        ['ε'] = "eps", ['σ'] = "sigma", ['η'] = "eta", ['λ'] = "lambda", ['ζ'] = "zeta", ['α'] = "alpha", ['β'] = "beta",
        ['γ'] = "gamma", ['Δ'] = "Delta", ['ŝ'] = "s^", ['²'] = "^2",
    };

    /// <summary>
    /// <paramref name="text"/> with the typographic characters the project's labels use spelled in printable ASCII
    /// (e.g. "…" → "...", "≤" → "&lt;=", "σ" → "sigma"); other characters are kept (and drawn as '?' when not ASCII).
    /// </summary>
    public static string Printable(string text)
    {
        if (text.All(c => c is >= ' ' and <= '~')) return text;
        var sb = new System.Text.StringBuilder(text.Length + 8);
        foreach (char c in text)
            if (AsciiSpellings.TryGetValue(c, out var spelled)) sb.Append(spelled);
            else sb.Append(c);
        return sb.ToString();
    }

    /// <summary>Width in pixels of one line of <paramref name="text"/> drawn at <paramref name="scale"/> (no trailing spacing).</summary>
    public static int MeasureWidth(string text, int scale) => text.Length == 0 ? 0 : (text.Length * Advance - 1) * scale;

    /// <summary>Height in pixels of one line of text at <paramref name="scale"/>.</summary>
    public static int MeasureHeight(int scale) => GlyphHeight * scale;
}
