using PagSharp.IO;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PagSharp.Models.Sd;

/// <summary>Token ids for one prompt, padded or truncated to the model length.</summary>
/// <param name="Ids">BOS, the prompt's tokens, EOS, then padding: exactly MaxLength ids.</param>
/// <param name="Truncated">The prompt had more tokens than fit; <see cref="Dropped"/> holds the text that was cut.</param>
/// <param name="Dropped">The decoded text of the tokens that did not fit (empty when nothing was cut).</param>
public sealed record ClipTokens(int[] Ids, bool Truncated, string Dropped);

/// <summary>
/// transformers' <c>CLIPTokenizer</c> (the slow one diffusers' pipelines load) from a folder's <c>vocab.json</c> and
/// <c>merges.txt</c>. Text is cleaned as its <c>BasicTokenizer</c> fallback does (control characters removed,
/// whitespace collapsed, spaces around CJK ideographs, NFC, lower case), split with CLIP's pattern, byte-encoded
/// (GPT-2 byte→unicode table) and merged by BPE ranks, the last symbol of each word carrying <c>&lt;/w&gt;</c>.
/// Model input is [BOS] + tokens + [EOS], truncated to <see cref="MaxLength"/> (77) and padded with the pad token
/// (<c>&lt;|endoftext|&gt;</c> for SD 1.x, <c>!</c> for SD 2.x, as the tokenizer config says).
/// </summary>
public sealed class ClipTokenizer
{
    private static readonly Regex Pattern = new(
        @"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        RegexOptions.IgnoreCase | RegexOptions.CultureInvariant | RegexOptions.Compiled);

    private readonly Dictionary<string, int> _encoder;
    private readonly Dictionary<int, string> _decoder;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly Dictionary<string, string[]> _cache = new(StringComparer.Ordinal);
    private static readonly char[] ByteToChar = BuildByteTable();

    public int BosId { get; }
    public int EosId { get; }
    public int PadId { get; }
    public int UnkId { get; }
    /// <summary>Model input length (tokenizer_config.json's model_max_length, 77 for SD).</summary>
    public int MaxLength { get; }
    public int VocabSize => _encoder.Count;

    public ClipTokenizer(IReadOnlyDictionary<string, int> vocab, IEnumerable<(string, string)> merges, string source,
                         string bos = "<|startoftext|>", string eos = "<|endoftext|>", string pad = "<|endoftext|>",
                         string unk = "<|endoftext|>", int maxLength = 77)
    {
        _encoder = new Dictionary<string, int>(vocab, StringComparer.Ordinal);
        _decoder = new Dictionary<int, string>();
        foreach (var (k, v) in _encoder) _decoder[v] = k;
        _ranks = new Dictionary<(string, string), int>();
        int r = 0;
        foreach (var m in merges) _ranks.TryAdd(m, r++);
        int Id(string token, string role) => _encoder.TryGetValue(token, out int id) ? id
            : throw new PagSharpException($"{source}: the {role} token '{token}' is not in the vocabulary");
        BosId = Id(bos, "BOS");
        EosId = Id(eos, "EOS");
        PadId = Id(pad, "padding");
        UnkId = Id(unk, "unknown");
        if (maxLength < 2) throw new PagSharpException($"{source}: model_max_length must be ≥ 2 (got {maxLength})");
        MaxLength = maxLength;
        _cache[bos] = new[] { bos };
        _cache[eos] = new[] { eos };
    }

    /// <summary>
    /// Loads <c>vocab.json</c> and <c>merges.txt</c> (the first line, the <c>#version</c> header, is skipped and at
    /// most 48,894 merges are used, as transformers) and the special tokens and model_max_length from
    /// <c>tokenizer_config.json</c> / <c>special_tokens_map.json</c> when present.
    /// </summary>
    public static ClipTokenizer Load(string folder)
    {
        string vocabPath = Path.Combine(folder, "vocab.json"), mergesPath = Path.Combine(folder, "merges.txt");
        if (!File.Exists(vocabPath)) throw new PagSharpException($"{vocabPath} does not exist: the CLIP tokenizer needs vocab.json and merges.txt");
        if (!File.Exists(mergesPath)) throw new PagSharpException($"{mergesPath} does not exist: the CLIP tokenizer needs vocab.json and merges.txt");
        Dictionary<string, int> vocab;
        try
        {
            vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath))
                    ?? throw new PagSharpException($"{vocabPath}: expected a JSON object of token → id");
        }
        catch (JsonException e)
        {
            throw new PagSharpException($"{vocabPath}: expected a JSON object of token → id ({e.Message})", e);
        }
        var lines = File.ReadAllText(mergesPath).Trim().Split('\n');
        var merges = lines.Skip(1).Take(49152 - 256 - 2).Select((l, i) =>
        {
            var p = l.Trim('\r').Split(' ');
            return p.Length == 2 ? (p[0], p[1]) : throw new PagSharpException($"{mergesPath}: line {i + 2} is not two symbols separated by a space: '{l}'");
        }).ToList();

        var special = new Dictionary<string, string>();
        int maxLength = 77;
        foreach (var name in new[] { "special_tokens_map.json", "tokenizer_config.json" })
        {
            string p = Path.Combine(folder, name);
            if (!File.Exists(p)) continue;
            var c = JsonConfig.Load(p);
            foreach (var key in new[] { "bos_token", "eos_token", "pad_token", "unk_token" })
                if (c.Get(key) is { } v)
                    special[key] = v.ValueKind == JsonValueKind.String ? v.GetString()!
                        : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var content) && content.ValueKind == JsonValueKind.String ? content.GetString()!
                        : throw c.Error(key, "a string or an object with \"content\"", v);
            if (c.Get("model_max_length") is { } ml && ml.ValueKind == JsonValueKind.Number && ml.TryGetDouble(out double mlv) && mlv >= 2 && mlv <= 1e6)
                maxLength = (int)mlv;
        }
        return new ClipTokenizer(vocab, merges, folder,
            special.GetValueOrDefault("bos_token", "<|startoftext|>"), special.GetValueOrDefault("eos_token", "<|endoftext|>"),
            special.GetValueOrDefault("pad_token", "<|endoftext|>"), special.GetValueOrDefault("unk_token", "<|endoftext|>"), maxLength);
    }

    private readonly Dictionary<string, int[]> _added = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>
    /// Adds a textual-inversion token of <paramref name="vectors"/> vectors, as diffusers' <c>load_textual_inversion</c>:
    /// tokens <c>token</c>, <c>token_1</c> … <c>token_{n−1}</c> with the next free ids (transformers' <c>add_tokens</c>),
    /// and <c>token</c> in a prompt stands for all n of them (<c>maybe_convert_prompt</c>). The text is split at added
    /// tokens before BPE. Returns the ids.
    /// </summary>
    public int[] AddToken(string token, int vectors = 1)
    {
        if (string.IsNullOrWhiteSpace(token) || token.Any(char.IsWhiteSpace))
            throw new PagSharpException($"token '{token}' must be non-empty and without spaces");
        if (vectors < 1) throw new PagSharpException($"a textual-inversion embedding needs at least one vector (got {vectors})");
        var names = Enumerable.Range(0, vectors).Select(i => i == 0 ? token : $"{token}_{i}").ToList();
        foreach (var n in names)
            if (_encoder.ContainsKey(n) || _added.ContainsKey(n))
                throw new PagSharpException($"token '{n}' is already in the vocabulary; choose another name (e.g. <{token}>)");
        int first = _encoder.Values.Max() + 1;
        var ids = Enumerable.Range(first, vectors).ToArray();
        for (int i = 0; i < vectors; i++)
        {
            _encoder[names[i]] = ids[i];
            _decoder[ids[i]] = names[i];
            _added[names[i]] = i == 0 ? ids : [ids[i]];
        }
        return ids;
    }

    /// <summary>The prompt's token ids (no BOS/EOS, no truncation).</summary>
    public List<int> Tokenize(string text)
    {
        var ids = new List<int>();
        if (_added.Count > 0)
        {
            // Added tokens first (longest first), then the text between them as usual.
            var pattern = new Regex("(" + string.Join("|", _added.Keys.OrderByDescending(t => t.Length).Select(Regex.Escape)) + ")", RegexOptions.IgnoreCase | RegexOptions.CultureInvariant);
            foreach (var part in pattern.Split(text))
            {
                if (_added.TryGetValue(part, out var hit)) ids.AddRange(hit);
                else if (part.Length > 0) ids.AddRange(TokenizePlain(part));
            }
            return ids;
        }
        return TokenizePlain(text);
    }

    private List<int> TokenizePlain(string text)
    {
        var ids = new List<int>();
        foreach (Match m in Pattern.Matches(Clean(text)))
        {
            string word = string.Concat(Encoding.UTF8.GetBytes(m.Value).Select(b => ByteToChar[b]));
            foreach (var piece in Bpe(word))
                ids.Add(_encoder.TryGetValue(piece, out int id) ? id : UnkId);
        }
        return ids;
    }

    /// <summary>[BOS] + tokens + [EOS], truncated to <see cref="MaxLength"/> and padded with the pad id.</summary>
    public ClipTokens Encode(string text)
    {
        var tokens = Tokenize(text);
        int room = MaxLength - 2;
        bool truncated = tokens.Count > room;
        var ids = new List<int>(MaxLength) { BosId };
        ids.AddRange(tokens.Take(room));
        ids.Add(EosId);
        while (ids.Count < MaxLength) ids.Add(PadId);
        return new ClipTokens(ids.ToArray(), truncated, truncated ? Decode(tokens.Skip(room)) : "");
    }

    /// <summary>Text of token ids (byte-decoded, <c>&lt;/w&gt;</c> as spaces).</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var chars = string.Concat(ids.Select(i => _decoder.TryGetValue(i, out var t) ? t : ""));
        var bytes = new List<byte>();
        var charToByte = new Dictionary<char, byte>();
        for (int b = 0; b < 256; b++) charToByte[ByteToChar[b]] = (byte)b;
        foreach (var ch in chars.Replace("</w>", " "))
            if (charToByte.TryGetValue(ch, out byte b)) bytes.Add(b);
            else bytes.AddRange(Encoding.UTF8.GetBytes(ch.ToString()));
        return Encoding.UTF8.GetString(bytes.ToArray()).Trim();
    }

    private string[] Bpe(string token)
    {
        if (_cache.TryGetValue(token, out var cached)) return cached;
        var word = token.Select(c => c.ToString()).ToList();
        word[^1] += "</w>";
        while (word.Count > 1)
        {
            int best = int.MaxValue;
            (string, string) pair = default;
            for (int i = 0; i < word.Count - 1; i++)
                if (_ranks.TryGetValue((word[i], word[i + 1]), out int rank) && rank < best) { best = rank; pair = (word[i], word[i + 1]); }
            if (best == int.MaxValue) break;
            var merged = new List<string>(word.Count);
            for (int i = 0; i < word.Count;)
            {
                if (i < word.Count - 1 && word[i] == pair.Item1 && word[i + 1] == pair.Item2)
                {
                    merged.Add(pair.Item1 + pair.Item2);
                    i += 2;
                }
                else merged.Add(word[i++]);
            }
            word = merged;
        }
        var result = word.ToArray();
        if (_cache.Count < 100_000) _cache[token] = result;
        return result;
    }

    /// <summary>transformers' BasicTokenizer(do_lower_case, strip_accents=False, no punctuation split), joined by spaces.</summary>
    internal static string Clean(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (var rune in text.EnumerateRunes())
        {
            int cp = rune.Value;
            if (cp == 0 || cp == 0xFFFD) continue;
            if (rune.Value is '\t' or '\n' or '\r' or ' ' || Rune.GetUnicodeCategory(rune) == UnicodeCategory.SpaceSeparator)
            {
                sb.Append(' ');
                continue;
            }
            var cat = Rune.GetUnicodeCategory(rune);
            if (cat is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.PrivateUse or UnicodeCategory.Surrogate or UnicodeCategory.OtherNotAssigned)
                continue;
            if (IsCjk(cp)) sb.Append(' ').Append(rune.ToString()).Append(' ');
            else sb.Append(rune.ToString());
        }
        var normalized = sb.ToString().Normalize(NormalizationForm.FormC);
        var words = normalized.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(w => w.ToLowerInvariant());
        return string.Join(' ', words);
    }

    private static bool IsCjk(int cp) =>
        cp is >= 0x4E00 and <= 0x9FFF or >= 0x3400 and <= 0x4DBF or >= 0x20000 and <= 0x2A6DF or >= 0x2A700 and <= 0x2B73F
            or >= 0x2B740 and <= 0x2B81F or >= 0x2B820 and <= 0x2CEAF or >= 0xF900 and <= 0xFAFF or >= 0x2F800 and <= 0x2FA1F;

    /// <summary>GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.</summary>
    private static char[] BuildByteTable()
    {
        var table = new char[256];
        var direct = new HashSet<int>();
        for (int b = '!'; b <= '~'; b++) direct.Add(b);
        for (int b = 0xA1; b <= 0xAC; b++) direct.Add(b);
        for (int b = 0xAE; b <= 0xFF; b++) direct.Add(b);
        int n = 0;
        for (int b = 0; b < 256; b++) table[b] = direct.Contains(b) ? (char)b : (char)(256 + n++);
        return table;
    }
}
