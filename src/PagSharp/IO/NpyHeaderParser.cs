using System.Globalization;

namespace PagSharp.IO;

/// <summary>
/// Parses the Python dict literal in a .npy header, e.g. <c>{'descr': '&lt;f4', 'fortran_order': False, 'shape': (3, 4), }</c>.
/// Values may be strings, True/False, integers or tuples of integers (returned as long[]); nothing else is accepted.
/// </summary>
internal static class NpyHeaderParser
{
    public static Dictionary<string, object> Parse(string s, Func<string, Exception> error)
    {
        int i = 0;
        var result = new Dictionary<string, object>(StringComparer.Ordinal);
        SkipWs(s, ref i);
        Expect(s, ref i, '{', error);
        while (true)
        {
            SkipWs(s, ref i);
            if (i < s.Length && s[i] == '}') { i++; break; }
            string key = ReadString(s, ref i, error);
            SkipWs(s, ref i);
            Expect(s, ref i, ':', error);
            SkipWs(s, ref i);
            object value = ReadValue(s, ref i, error);
            if (!result.TryAdd(key, value)) throw error($"the header names '{key}' twice");
            SkipWs(s, ref i);
            if (i < s.Length && s[i] == ',') { i++; continue; }
            SkipWs(s, ref i);
            Expect(s, ref i, '}', error);
            break;
        }
        SkipWs(s, ref i);
        if (i != s.Length) throw error($"unexpected text after the header dict at character {i}");
        return result;
    }

    private static object ReadValue(string s, ref int i, Func<string, Exception> error)
    {
        if (i >= s.Length) throw error("the header dict is cut short");
        char c = s[i];
        if (c is '\'' or '"') return ReadString(s, ref i, error);
        if (Word(s, ref i, "True")) return true;
        if (Word(s, ref i, "False")) return false;
        if (c == '(')
        {
            i++;
            var dims = new List<long>();
            while (true)
            {
                SkipWs(s, ref i);
                if (i < s.Length && s[i] == ')') { i++; break; }
                dims.Add(ReadInt(s, ref i, error));
                SkipWs(s, ref i);
                if (i < s.Length && s[i] == ',') { i++; continue; }
                SkipWs(s, ref i);
                Expect(s, ref i, ')', error);
                break;
            }
            return dims.ToArray();
        }
        if (char.IsAsciiDigit(c)) return ReadInt(s, ref i, error);
        throw error($"unexpected character '{c}' at {i} in the header dict");
    }

    private static long ReadInt(string s, ref int i, Func<string, Exception> error)
    {
        int start = i;
        while (i < s.Length && char.IsAsciiDigit(s[i])) i++;
        if (i == start) throw error($"expected a non-negative integer at character {start} of the header");
        if (!long.TryParse(s.AsSpan(start, i - start), NumberStyles.None, CultureInfo.InvariantCulture, out long v))
            throw error($"dimension {s[start..i]} is too large");
        if (i < s.Length && s[i] == 'L') i++; // Python 2 long suffix
        return v;
    }

    private static string ReadString(string s, ref int i, Func<string, Exception> error)
    {
        if (i >= s.Length || (s[i] != '\'' && s[i] != '"')) throw error($"expected a quoted string at character {i} of the header");
        char q = s[i++];
        int end = s.IndexOf(q, i);
        if (end < 0) throw error("a string in the header is not closed");
        string v = s[i..end];
        if (v.Contains('\\')) throw error("escaped strings are not supported in the header");
        i = end + 1;
        return v;
    }

    private static bool Word(string s, ref int i, string w)
    {
        if (string.CompareOrdinal(s, i, w, 0, w.Length) != 0) return false;
        i += w.Length;
        return true;
    }

    private static void Expect(string s, ref int i, char c, Func<string, Exception> error)
    {
        if (i >= s.Length || s[i] != c) throw error($"expected '{c}' at character {i} of the header");
        i++;
    }

    private static void SkipWs(string s, ref int i)
    {
        while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
    }
}
