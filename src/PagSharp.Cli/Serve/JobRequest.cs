using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Attention;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;
using PagSharp.Runtime;
using PagSharp.Cli.Methods;

namespace PagSharp.Cli.Serve;

/// <summary>An error the API answers with its status code and <c>{"error": message}</c>.</summary>
public sealed class ServeError(int status, string message) : Exception(message)
{
    public int Status { get; } = status;
}

/// <summary>One column of a job: the method token as given (<c>pag compare</c>'s syntax) and the guidance it means.</summary>
public sealed record ColumnPlan(string Token, MethodToken Method, GuidanceSettings Guidance);

/// <summary>A checked job: everything the runner needs, nothing left to validate.</summary>
public sealed record JobPlan
{
    public required ServeModel Model { get; init; }
    public required long Seed { get; init; }
    public required int Count { get; init; }
    public required int Steps { get; init; }
    public required string Scheduler { get; init; }
    public required IReadOnlyList<ColumnPlan> Columns { get; init; }
    public required IReadOnlyList<string> Layers { get; init; }
    /// <summary>ADM: the class label of every sample; null = unconditional (the null class).</summary>
    public int? Label { get; init; }
    /// <summary>Stable Diffusion: the prompt, the negative prompt (null = none), the image size.</summary>
    public string? Prompt { get; init; }
    public string? NegativePrompt { get; init; }
    public int Width { get; init; }
    public int Height { get; init; }
    /// <summary>The request as the server understood it, defaults filled in (in the job's JSON and run.json).</summary>
    public required JsonObject Request { get; init; }

    public IEnumerable<long> Seeds => Enumerable.Range(0, Count).Select(i => Seed + i);
}

/// <summary>
/// Reads the JSON body of <c>POST /api/jobs</c> and checks every field against the model and the limits. Any
/// problem is a <see cref="ServeError"/> 400 whose message names the field: never a stack trace, never a half-started
/// job.
/// </summary>
public static class JobRequest
{
    /// <summary>The fields a request may have.</summary>
    public static readonly string[] Fields = ["model", "seed", "count", "steps", "scheduler", "methods", "layers", "label", "prompt", "negativePrompt", "width", "height"];

    /// <summary>Largest first seed: seeds stay exact in JavaScript numbers (2^53 − 1) and in the per-sample generators.</summary>
    public const long MaxSeed = (1L << 53) - 1 - 4096;

    public static JobPlan Parse(string body, ModelRegistry models, ServeLimits limits)
    {
        JsonObject o;
        try
        {
            o = JsonNode.Parse(body, documentOptions: new JsonDocumentOptions { MaxDepth = 8 }) as JsonObject
                ?? throw Bad("the request body must be a JSON object, e.g. {\"model\": \"builtin\", \"methods\": [\"none\", \"pag:2\"]}");
        }
        catch (JsonException e)
        {
            throw Bad($"the request body is not valid JSON: {FirstSentence(e.Message)}");
        }
        foreach (var (key, _) in o)
            if (!Fields.Contains(key, StringComparer.Ordinal))
                throw Bad($"unknown field '{key}'; valid: {string.Join(", ", Fields)}");

        string modelId = Str(o, "model", 100) ?? models.Models[0].Id;
        var model = models.Get(modelId) ?? throw Bad($"unknown model '{modelId}'; valid: {string.Join(", ", models.Models.Select(m => m.Id))}");
        long seed = Long(o, "seed", 0, MaxSeed) ?? 0;
        int count = Int(o, "count", 1, limits.MaxCount) ?? Math.Min(4, limits.MaxCount);
        int maxSteps = model is AdmServeModel am ? Math.Min(limits.MaxSteps, am.Config.DiffusionSteps) : limits.MaxSteps;
        int steps = Int(o, "steps", 1, maxSteps) ?? Math.Min(model.DefaultSteps, maxSteps);
        string scheduler = Str(o, "scheduler", 20) ?? model.DefaultScheduler;
        if (!Schedulers.Names.Contains(scheduler)) throw Bad($"unknown scheduler '{scheduler}'; valid: {string.Join(", ", Schedulers.Names)}");
        var layers = Layers(o, model);
        var tokens = Methods(o, limits);

        var request = new JsonObject
        {
            ["model"] = model.Id, ["seed"] = seed, ["count"] = count, ["steps"] = steps, ["scheduler"] = scheduler,
            ["methods"] = new JsonArray(tokens.Select(t => (JsonNode)t!).ToArray()),
            ["layers"] = new JsonArray(layers.Select(l => (JsonNode)l!).ToArray()),
        };
        return model switch
        {
            AdmServeModel adm => Adm(o, adm, request, seed, count, steps, scheduler, tokens, layers),
            SdServeModel sd => Sd(o, sd, limits, request, seed, count, steps, scheduler, tokens, layers),
            _ => throw new InvalidOperationException("unknown model family"),
        };
    }

    private static JobPlan Adm(JsonObject o, AdmServeModel model, JsonObject request, long seed, int count, int steps, string scheduler,
                               IReadOnlyList<string> tokens, IReadOnlyList<string> layers)
    {
        foreach (var f in new[] { "prompt", "negativePrompt", "width", "height" })
            if (o[f] is not null) throw Bad($"'{f}' is for Stable Diffusion models; {model.Id} is a class-conditional or unconditional ADM model (give 'label')");
        int? label = null;
        if (o["label"] is not null)
        {
            if (!model.Net.IsClassConditional) throw Bad($"model {model.Id} is unconditional: it takes no 'label' (send null or leave it out)");
            label = Int(o, "label", 0, (model.Config.ResolvedNumClasses ?? 1) - 1);
        }
        else if (model.Net.IsClassConditional && model.Config.NullClass is null)
            throw Bad($"model {model.Id} is class-conditional without a null class: give 'label' ({string.Join(", ", model.Labels.Take(10))}{(model.Labels.Count > 10 ? ", …" : "")})");
        request["label"] = label;
        var columns = new List<ColumnPlan>();
        foreach (var token in tokens)
        {
            var m = Method(token);
            if (m.Cfg > 1 && !model.HasNullClass)
                throw Bad($"method '{token}': CFG needs a class-conditional model with a null class (one trained with label dropout); {model.Id} has none");
            if (m.Cfg > 1 && label is null)
                throw Bad($"method '{token}': CFG pushes towards a class: give 'label'");
            var g = Guidance(m, layers, sag: new SagSettings { Scale = new ScaleSchedule.Constant(Math.Max(m.Sag, 0)) });
            var options = Options(g, label, seed, count, scheduler, steps);
            try { Sampler.Validate(model.Net, options); }
            catch (PagSharpException e) { throw Bad($"method '{token}': {e.Message}"); }
            columns.Add(new ColumnPlan(token, m, g));
        }
        return new JobPlan
        {
            Model = model, Seed = seed, Count = count, Steps = steps, Scheduler = scheduler, Columns = columns, Layers = layers,
            Label = label, Request = request, Width = model.Config.ImageSize, Height = model.Config.ImageSize,
        };
    }

    /// <summary>The sampling options of one ADM column (one batch of all the job's seeds; the memory check may split it).</summary>
    public static SamplingOptions Options(GuidanceSettings g, int? label, long seed, int count, string scheduler, int steps) => new()
    {
        Scheduler = scheduler,
        Steps = steps,
        Guidance = g,
        Labels = label is int l ? [l] : null,
        Seed = seed,
        BatchSize = count,
    };

    private static JobPlan Sd(JsonObject o, SdServeModel model, ServeLimits limits, JsonObject request, long seed, int count, int steps, string scheduler,
                              IReadOnlyList<string> tokens, IReadOnlyList<string> layers)
    {
        if (o["label"] is not null) throw Bad($"'label' is for class-conditional ADM models; {model.Id} is a Stable Diffusion model (give 'prompt')");
        string prompt = Str(o, "prompt", limits.MaxPromptLength) ?? "";
        string? negative = Str(o, "negativePrompt", limits.MaxPromptLength);
        if (string.IsNullOrEmpty(negative)) negative = null;
        int f = model.VaeScaleFactor, min = Math.Max(8, f);
        int width = Int(o, "width", min, limits.MaxImageSize) ?? Math.Min(model.DefaultSize, limits.MaxImageSize / f * f);
        int height = Int(o, "height", min, limits.MaxImageSize) ?? Math.Min(model.DefaultSize, limits.MaxImageSize / f * f);
        int multiple = Math.Max(8, f);
        if (width % multiple != 0 || height % multiple != 0)
            throw Bad($"'width' and 'height' must be multiples of {multiple} (got {width}×{height})");
        request["prompt"] = prompt;
        request["negativePrompt"] = negative;
        request["width"] = width;
        request["height"] = height;
        try { using var probe = Schedulers.Create(scheduler, model.SchedulerConfig, steps) as IDisposable; }
        catch (PagSharpException e) { throw Bad($"scheduler '{scheduler}' with {steps} steps: {e.Message}"); }
        var columns = new List<ColumnPlan>();
        double? budget = MemoryBudget.AvailableBytes();
        foreach (var token in tokens)
        {
            var m = Method(token);
            // diffusers' SAG pipeline: the mid block's map, blur kernel 9, σ = 1 (as pag txt2img).
            var g = Guidance(m, layers, sag: new SagSettings { Scale = new ScaleSchedule.Constant(Math.Max(m.Sag, 0)), BlurSigma = 1.0, KernelSize = 9 });
            int branches = 1 + (g.UsesCfg ? 1 : 0) + (g.UsesPag || g.UsesSag ? 1 : 0) + g.Perturbed.Count;
            double perImage = Sampler.MemorySlack * SdMemory.ActivationBytes(model.UnetConfig, height / f, width / f, branches, g.UsesSag);
            if (budget is double b && perImage > b)
                throw Bad($"method '{token}': one {width}×{height} image needs about {MemoryBudget.Format(perImage)} of U-Net activations, but only {MemoryBudget.Format(b)} is available; choose a smaller size");
            columns.Add(new ColumnPlan(token, m, g));
        }
        return new JobPlan
        {
            Model = model, Seed = seed, Count = count, Steps = steps, Scheduler = scheduler, Columns = columns, Layers = layers,
            Prompt = prompt, NegativePrompt = negative, Width = width, Height = height, Request = request,
        };
    }

    /// <summary>
    /// The guidance of one column: CFG w (plain, APG or CFG-Zero*), PAG s at <paramref name="layers"/>, SAG s, SEG s
    /// (query blur σ 10) and SLG s (the self-attention skipped on steps 1%–20%, SD 3.5's recipe) at the same layers.
    /// </summary>
    public static GuidanceSettings Guidance(MethodToken m, IReadOnlyList<string> layers, SagSettings sag)
    {
        var perturbed = new List<PerturbedGuidance>();
        if (m.Seg > 0) perturbed.Add(PerturbedGuidance.Seg(m.Seg, 10, layers));
        if (m.Slg > 0) perturbed.Add(PerturbedGuidance.Slg(m.Slg, layers));
        var g = m.Apply(new GuidanceSettings
        {
            GuidanceScale = m.Cfg,
            PagScale = m.Pag > 0 ? new ScaleSchedule.Constant(m.Pag) : null,
            PagLayers = m.Pag > 0 ? layers : [],
            Sag = m.Sag > 0 ? sag : null,
            Perturbed = perturbed,
        }, new ApgSettings());
        try { g.Validate(); }
        catch (PagSharpException e) { throw Bad($"method '{m.Label}': {e.Message}"); }
        return g;
    }

    private static MethodToken Method(string token)
    {
        IReadOnlyList<MethodToken> parsed;
        try { parsed = MethodTokens.Parse(token); }
        catch (PagSharpException e) { throw Bad(e.Message.Replace("--methods item", "method", StringComparison.Ordinal)); }
        if (parsed.Count != 1) throw Bad($"method '{token}': one method per item (give a list: [\"none\", \"pag:2\"])");
        var m = parsed[0];
        if (m.Auto > 0) throw Bad($"method '{token}': autoguidance needs a second, weaker model, which pag serve does not load; valid: none, cfg:W, pag:S, sag:S, seg:S, slg:S, apg:W, cfgzero:W and + combinations");
        foreach (var (name, v) in new[] { ("cfg", m.Cfg), ("pag", m.Pag), ("sag", m.Sag), ("seg", m.Seg), ("slg", m.Slg) })
            if (double.IsInfinity(v) || v > 100) throw Bad($"method '{token}': the {name} scale must be at most 100");
        return m;
    }

    private static IReadOnlyList<string> Methods(JsonObject o, ServeLimits limits)
    {
        var node = o["methods"];
        if (node is null) return ["none", "pag:2"];
        string[] tokens = node switch
        {
            JsonArray a => a.Select(x => x is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>().Trim()
                : throw Bad("'methods' must be a list of strings such as [\"none\", \"cfg:3\", \"pag:2\", \"cfg:3+pag:2\"]")).ToArray(),
            JsonValue v when v.GetValueKind() == JsonValueKind.String => v.GetValue<string>().Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries),
            _ => throw Bad("'methods' must be a list of strings such as [\"none\", \"cfg:3\", \"pag:2\", \"cfg:3+pag:2\"]"),
        };
        if (tokens.Length == 0) throw Bad("'methods' is empty: give at least one column, e.g. [\"none\", \"pag:2\"]");
        if (tokens.Length > limits.MaxColumns) throw Bad($"'methods' has {tokens.Length} columns; at most {limits.MaxColumns}");
        foreach (var t in tokens)
            if (t.Length is 0 or > 100) throw Bad("a method must be 1 to 100 characters");
        return tokens;
    }

    private static IReadOnlyList<string> Layers(JsonObject o, ServeModel model)
    {
        var all = model.AttentionLayers;
        IReadOnlyList<string> Resolve(string spec)
        {
            try { return model is SdServeModel ? DiffusersLayerSpec.Resolve(spec, all, LayerMatch.Exact) : LayerSpec.Resolve(spec, all); }
            catch (PagSharpException e) { throw Bad($"'layers': {e.Message}"); }
        }
        switch (o["layers"])
        {
            case null:
                return model.DefaultLayers;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                var r = Resolve(v.GetValue<string>());
                return r.Count > 0 ? r : throw Bad($"'layers' '{v.GetValue<string>()}' matches no attention layer of {model.Id}");
            case JsonArray a:
                if (a.Count == 0) throw Bad("'layers' is empty: pick at least one attention layer (or leave it out for the model's default)");
                var names = new HashSet<string>(StringComparer.Ordinal);
                foreach (var x in a)
                {
                    if (x is not JsonValue s || s.GetValueKind() != JsonValueKind.String) throw Bad("'layers' must be a list of layer names (GET /api/models/{id}/layers) or one layer specification such as \"middle\"");
                    string name = s.GetValue<string>();
                    if (!all.Any(l => l.Name == name))
                        throw Bad($"'layers': '{name}' is not an attention layer of {model.Id}; see GET /api/models/{model.Id}/layers");
                    names.Add(name);
                }
                return all.Where(l => names.Contains(l.Name)).Select(l => l.Name).ToArray();
            default:
                throw Bad("'layers' must be a list of layer names (GET /api/models/{id}/layers) or one layer specification such as \"middle\"");
        }
    }

    private static ServeError Bad(string message) => new(400, message);

    private static string FirstSentence(string message)
    {
        int i = message.IndexOf(". ", StringComparison.Ordinal);
        return i > 0 ? message[..(i + 1)] : message;
    }

    private static string? Str(JsonObject o, string name, int maxLength)
    {
        var node = o[name];
        if (node is null) return null;
        if (node is not JsonValue v || v.GetValueKind() != JsonValueKind.String) throw Bad($"'{name}' must be a string");
        string s = v.GetValue<string>();
        if (s.Length > maxLength) throw Bad($"'{name}' is {s.Length} characters long; at most {maxLength}");
        return s;
    }

    private static long? Long(JsonObject o, string name, long min, long max)
    {
        var node = o[name];
        if (node is null) return null;
        if (node is JsonValue v && v.GetValueKind() == JsonValueKind.Number && v.TryGetValue(out long x) && x >= min && x <= max) return x;
        if (node is JsonValue d && d.GetValueKind() == JsonValueKind.Number && d.TryGetValue(out double y) && y == Math.Floor(y) && y >= min && y <= max) return (long)y;
        throw Bad($"'{name}' must be an integer from {min.ToString(CultureInfo.InvariantCulture)} to {max.ToString(CultureInfo.InvariantCulture)} (got {node.ToJsonString()})");
    }

    private static int? Int(JsonObject o, string name, int min, int max) => (int?)Long(o, name, min, max);
}
