using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Models.Sd;

/// <summary>One low-rank update: W += scale · (alpha / rank) · up · down, on the parameter <see cref="Target"/>.</summary>
/// <param name="Component">unet, text_encoder or text_encoder_2.</param>
/// <param name="Target">The weight's key in that component (diffusers / transformers names, e.g. <c>down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight</c>).</param>
/// <param name="Down">[rank, in] or [rank, in, kh, kw] (LoCon).</param>
/// <param name="Up">[out, rank] or [out, rank, 1, 1].</param>
/// <param name="Alpha">The file's alpha, or null (= rank: no rescaling).</param>
public sealed record LoraUpdate(string Component, string Target, Tensor Down, Tensor Up, float? Alpha)
{
    public long Rank => Down.shape[0];
}

/// <summary>
/// A LoRA file for Stable Diffusion (SD 1.x/2.x, SDXL): kohya / A1111 keys (<c>lora_unet_*</c>, <c>lora_te_*</c>,
/// <c>lora_te1_*</c>/<c>lora_te2_*</c> for SDXL; <c>.lora_down</c>/<c>.lora_up</c>/<c>.alpha</c>; module paths in diffusers
/// or original LDM naming with dots written as underscores; LoCon convolutions), diffusers/PEFT keys
/// (<c>unet.….lora_A.weight</c>/<c>lora_B.weight</c>, <c>text_encoder.…</c>; alpha from the file's
/// <c>lora_adapter_metadata</c>) and older diffusers keys
/// (<c>….lora.down.weight</c>/<c>lora.up.weight</c>, <c>processor.to_q_lora.down.weight</c>). Every key must resolve to
/// a layer of the model (layers of a text encoder passed as null are skipped); the ones that do not are listed in the error.
/// </summary>
public sealed class SdLora : IDisposable
{
    public string Path { get; }
    public IReadOnlyList<LoraUpdate> Updates { get; }

    private SdLora(string path, List<LoraUpdate> updates)
    {
        Path = path;
        Updates = updates;
    }

    /// <summary>Reads <paramref name="path"/> and resolves its keys against the model's components.</summary>
    public static SdLora Load(string path, SdUNet unet, ClipTextModel? textEncoder, ClipTextModel? textEncoder2)
    {
        var w = StateDicts.Load(path);
        try
        {
            var updates = Resolve(w, path, unet, textEncoder, textEncoder2);
            return new SdLora(path, ApplyPeftAlphas(updates, path));
        }
        finally
        {
            // Resolve keeps (aliases of) the tensors it uses; the loaded dictionary itself is released here.
            foreach (var t in w.Values) t.Dispose();
        }
    }

    /// <summary>
    /// PEFT files saved by diffusers keep alpha in the safetensors metadata (<c>lora_adapter_metadata</c>: per component
    /// <c>lora_alpha</c>, and <c>alpha_pattern</c> for single modules), not as tensors: updates without an alpha get it
    /// from there, as diffusers' load_lora_weights does.
    /// </summary>
    private static List<LoraUpdate> ApplyPeftAlphas(List<LoraUpdate> updates, string path)
    {
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return updates;
        if (!SafeTensors.ReadMetadata(path).TryGetValue("lora_adapter_metadata", out var json)) return updates;
        System.Text.Json.JsonElement meta;
        try { meta = System.Text.Json.JsonDocument.Parse(json).RootElement.Clone(); }
        catch (System.Text.Json.JsonException e) { throw new PagSharpException($"{path}: lora_adapter_metadata is not valid JSON ({e.Message})"); }
        if (meta.ValueKind != System.Text.Json.JsonValueKind.Object) return updates;
        float? Number(string key) => meta.TryGetProperty(key, out var v) && v.ValueKind == System.Text.Json.JsonValueKind.Number ? (float)v.GetDouble() : null;
        return updates.Select(u =>
        {
            if (u.Alpha is not null) return u;
            float? alpha = Number(u.Component + ".lora_alpha");
            if (meta.TryGetProperty(u.Component + ".alpha_pattern", out var pattern) && pattern.ValueKind == System.Text.Json.JsonValueKind.Object)
            {
                string module = u.Target[..^".weight".Length];
                foreach (var p in pattern.EnumerateObject())
                    if ((module == p.Name || module.EndsWith("." + p.Name, StringComparison.Ordinal)) && p.Value.ValueKind == System.Text.Json.JsonValueKind.Number)
                        alpha = (float)p.Value.GetDouble();
            }
            return alpha is null ? u : u with { Alpha = alpha };
        }).ToList();
    }

    private sealed record Group(string Name)
    {
        public Tensor? Down, Up;
        public float? Alpha;
    }

    private static List<LoraUpdate> Resolve(Dictionary<string, Tensor> w, string path, SdUNet unet, ClipTextModel? te, ClipTextModel? te2)
    {
        // Every weight of a layer a LoRA can touch, under each name a file may use for it.
        var names = new Dictionary<string, (string Component, string Target)>(StringComparer.Ordinal);
        void Index(string component, nn.Module module, Func<string, string?> ldm, params string[] kohyaPrefixes)
        {
            foreach (var (key, p) in module.named_parameters())
            {
                if (!key.EndsWith(".weight", StringComparison.Ordinal) || p.dim() < 2) continue;
                string layer = key[..^".weight".Length];
                names[component + "." + layer] = (component, key);
                foreach (var kp in kohyaPrefixes)
                {
                    names[kp + layer.Replace('.', '_')] = (component, key);
                    if (ldm(key) is { } l) names[kp + l[..^".weight".Length].Replace('.', '_')] = (component, key);
                }
            }
        }
        Index("unet", unet, k => { try { return LdmKeys.Unet(k, unet.Config); } catch (PagSharpException) { return null; } }, "lora_unet_");
        if (te is not null) Index("text_encoder", te, _ => null, "lora_te_", "lora_te1_");
        if (te2 is not null) Index("text_encoder_2", te2, _ => null, "lora_te2_");

        var groups = new Dictionary<string, Group>(StringComparer.Ordinal);
        var unknown = new List<string>();
        foreach (var (key, t) in w)
        {
            string k = key.StartsWith("base_model.model.", StringComparison.Ordinal) ? key["base_model.model.".Length..] : key;
            (string Layer, string Part)? split = null;
            foreach (var (suffix, part) in Suffixes)
                if (k.EndsWith(suffix, StringComparison.Ordinal)) { split = (k[..^suffix.Length], part); break; }
            if (split is not { } s) { unknown.Add(key); continue; }
            string layer = s.Layer;
            if (layer.Contains(".processor.", StringComparison.Ordinal))
            {
                // Old diffusers attention-processor LoRAs: processor.to_q_lora → to_q, processor.to_out_lora → to_out.0.
                layer = layer.Replace(".processor.", ".", StringComparison.Ordinal);
                if (layer.EndsWith(".to_out", StringComparison.Ordinal)) layer += ".0";
            }
            if (!groups.TryGetValue(layer, out var g)) groups[layer] = g = new Group(layer);
            switch (s.Part)
            {
                case "down": g.Down = t; break;
                case "up": g.Up = t; break;
                default: g.Alpha = t.to_type(ScalarType.Float32).item<float>(); break;
            }
        }
        var updates = new List<LoraUpdate>();
        foreach (var g in groups.Values)
        {
            if (!names.TryGetValue(g.Name, out var target))
            {
                // Layers of a text encoder that was not loaded (prompt embeddings given) are not needed.
                bool te1Layer = g.Name.StartsWith("lora_te_", StringComparison.Ordinal) || g.Name.StartsWith("lora_te1_", StringComparison.Ordinal) || g.Name.StartsWith("text_encoder.", StringComparison.Ordinal);
                bool te2Layer = g.Name.StartsWith("lora_te2_", StringComparison.Ordinal) || g.Name.StartsWith("text_encoder_2.", StringComparison.Ordinal);
                if ((te1Layer && te is null) || (te2Layer && te2 is null)) continue;
                unknown.Add(g.Name + ".*");
                continue;
            }
            if (g.Down is null || g.Up is null)
                throw new PagSharpException($"{path}: LoRA layer '{g.Name}' has only its {(g.Down is null ? "up" : "down")} matrix; a LoRA needs both (lora_down/lora_up, lora_A/lora_B)");
            updates.Add(new LoraUpdate(target.Component, target.Target, g.Down.alias().DetachFromDisposeScope(), g.Up.alias().DetachFromDisposeScope(), g.Alpha));
        }
        if (unknown.Count > 0)
        {
            foreach (var u in updates) { u.Down.Dispose(); u.Up.Dispose(); }
            throw new PagSharpException($"{path}: {unknown.Count} LoRA keys match no layer of this model (a LoRA for another model family?): " +
                string.Join(", ", unknown.Take(12)) + (unknown.Count > 12 ? $" … and {unknown.Count - 12} more" : ""));
        }
        if (updates.Count == 0) throw new PagSharpException($"{path} holds no LoRA layers");
        return updates;
    }

    private static readonly (string Suffix, string Part)[] Suffixes =
    [
        (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
        (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
        (".lora.down.weight", "down"), (".lora.up.weight", "up"),
        ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    ];

    /// <summary>
    /// The change of <paramref name="u"/>'s weight at <paramref name="scale"/>: scale · (alpha / rank) · up · down, as
    /// kohya and diffusers' <c>fuse_lora</c> compute it (conv LoRAs as (up · down) over the flattened kernel).
    /// </summary>
    public static Tensor Delta(LoraUpdate u, double scale, long[] weightShape)
    {
        long rank = u.Rank;
        double s = scale * (u.Alpha ?? rank) / rank;
        using var up = u.Up.to_type(ScalarType.Float32).reshape(u.Up.shape[0], rank);
        using var down = u.Down.to_type(ScalarType.Float32).reshape(rank, -1);
        using var d = matmul(up, down);
        long expected = weightShape.Aggregate(1L, (a, b) => a * b);
        if (d.numel() != expected)
            throw new PagSharpException($"LoRA for {u.Component}.{u.Target}: up {Shape(u.Up)} · down {Shape(u.Down)} does not give the weight's shape {Shape(weightShape)}");
        return (d * s).reshape(weightShape);
    }

    private static string Shape(Tensor t) => Shape(t.shape);
    private static string Shape(long[] s) => "[" + string.Join(",", s) + "]";

    /// <summary>
    /// Merges the LoRA into the weights at <paramref name="scale"/> (diffusers' <c>fuse_lora(lora_scale=scale)</c>);
    /// updates of a text encoder passed as null are skipped; the returned handle's <see cref="MergedLora.Unmerge"/> subtracts exactly what was added.
    /// </summary>
    public MergedLora Merge(double scale, SdUNet unet, ClipTextModel? textEncoder, ClipTextModel? textEncoder2)
    {
        if (double.IsNaN(scale) || double.IsInfinity(scale)) throw new PagSharpException($"LoRA scale must be a finite number (got {scale})");
        var applied = new List<(Tensor Param, Tensor Delta)>();
        using var _ = no_grad();
        foreach (var u in Updates)
        {
            // A text encoder that was not loaded (prompt embeddings given) is not used, so its updates do not matter.
            nn.Module? module = u.Component switch { "unet" => unet, "text_encoder" => textEncoder, _ => textEncoder2 };
            if (module is null) continue;
            var p = module.named_parameters().First(kv => kv.name == u.Target).parameter;
            var delta = Delta(u, scale, p.shape).to_type(p.dtype).DetachFromDisposeScope();
            p.add_(delta);
            applied.Add((p, delta));
        }
        return new MergedLora(applied);
    }

    public void Dispose()
    {
        foreach (var u in Updates) { u.Down.Dispose(); u.Up.Dispose(); }
    }
}

/// <summary>A LoRA merged into a model's weights (see <see cref="SdLora.Merge"/>).</summary>
public sealed class MergedLora
{
    private List<(Tensor Param, Tensor Delta)>? _applied;

    internal MergedLora(List<(Tensor Param, Tensor Delta)> applied) => _applied = applied;

    /// <summary>The number of weights changed.</summary>
    public int Count => _applied?.Count ?? 0;

    /// <summary>Subtracts what <see cref="SdLora.Merge"/> added (within float rounding), e.g. to merge again at another scale.</summary>
    public void Unmerge()
    {
        if (_applied is null) return;
        using var _ = no_grad();
        foreach (var (p, d) in _applied) { p.sub_(d); d.Dispose(); }
        _applied = null;
    }
}
