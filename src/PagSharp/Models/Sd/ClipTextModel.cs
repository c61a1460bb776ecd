using PagSharp.IO;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Sd;

/// <summary>The <c>text_encoder/config.json</c> of a transformers <c>CLIPTextModel</c> or <c>CLIPTextModelWithProjection</c> (SDXL's second encoder).</summary>
public sealed record ClipTextConfig
{
    public int VocabSize { get; init; } = 49408;
    public int HiddenSize { get; init; } = 512;
    public int IntermediateSize { get; init; } = 2048;
    public int NumHiddenLayers { get; init; } = 12;
    public int NumAttentionHeads { get; init; } = 8;
    public int MaxPositionEmbeddings { get; init; } = 77;
    /// <summary><c>quick_gelu</c> (OpenAI CLIP, SD 1.x) or <c>gelu</c> (OpenCLIP, SD 2.x).</summary>
    public string HiddenAct { get; init; } = "quick_gelu";
    public double LayerNormEps { get; init; } = 1e-5;
    /// <summary>Width of <c>text_projection</c> (CLIPTextModelWithProjection).</summary>
    public int ProjectionDim { get; init; } = 512;
    /// <summary>
    /// The end-of-text token whose position gives the pooled output. transformers' legacy rule: when it is 2 (old
    /// configs), the position of the largest token id is used instead.
    /// </summary>
    public int EosTokenId { get; init; } = 49407;
    /// <summary>The checkpoint is a CLIPTextModelWithProjection (<c>architectures</c> says so): it has <c>text_projection</c>.</summary>
    public bool WithProjection { get; init; }

    public static ClipTextConfig Load(string path) => FromJson(File.Exists(path) ? File.ReadAllText(path)
        : throw new PagSharpException($"{path} does not exist: a CLIP text encoder needs its config.json"), path);

    public static ClipTextConfig FromJson(string json, string source)
    {
        var c = JsonConfig.Parse(json, source);
        if (c.Get("text_config") is { } nested) c = new JsonConfig(nested, source + " (text_config)");
        var cfg = new ClipTextConfig
        {
            VocabSize = c.Int("vocab_size", 49408),
            HiddenSize = c.Int("hidden_size", 512),
            IntermediateSize = c.Int("intermediate_size", 2048),
            NumHiddenLayers = c.Int("num_hidden_layers", 12),
            NumAttentionHeads = c.Int("num_attention_heads", 8),
            MaxPositionEmbeddings = c.Int("max_position_embeddings", 77),
            HiddenAct = c.String("hidden_act", "quick_gelu"),
            LayerNormEps = c.Double("layer_norm_eps", 1e-5),
            ProjectionDim = c.Int("projection_dim", 512),
            EosTokenId = c.Int("eos_token_id", 49407),
            WithProjection = c.Get("architectures") is { ValueKind: System.Text.Json.JsonValueKind.Array } a
                && a.EnumerateArray().Any(e => e.ValueKind == System.Text.Json.JsonValueKind.String && e.GetString() == "CLIPTextModelWithProjection"),
        };
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        Require(cfg.HiddenAct is "quick_gelu" or "gelu", $"hidden_act '{cfg.HiddenAct}' is not supported; valid: quick_gelu, gelu");
        Require(cfg.HiddenSize > 0 && cfg.NumAttentionHeads > 0 && cfg.HiddenSize % cfg.NumAttentionHeads == 0,
            $"hidden_size {cfg.HiddenSize} must be a positive multiple of num_attention_heads {cfg.NumAttentionHeads}");
        Require(cfg.NumHiddenLayers >= 1 && cfg.VocabSize >= 1 && cfg.MaxPositionEmbeddings >= 1 && cfg.IntermediateSize >= 1,
            "vocab_size, intermediate_size, num_hidden_layers and max_position_embeddings must be ≥ 1");
        return cfg;
    }
}

internal sealed class ClipEmbeddings : Module
{
#pragma warning disable IDE1006
    private readonly Embedding token_embedding;
    private readonly Embedding position_embedding;
#pragma warning restore IDE1006

    public ClipEmbeddings(ClipTextConfig c) : base(nameof(ClipEmbeddings))
    {
        token_embedding = Embedding(c.VocabSize, c.HiddenSize);
        position_embedding = Embedding(c.MaxPositionEmbeddings, c.HiddenSize);
        RegisterComponents();
    }

    /// <summary>Rows of the token embedding (the vocabulary the encoder accepts).</summary>
    public long VocabRows => token_embedding.weight!.shape[0];

    /// <summary>Appends rows to the token embedding (textual inversion: one per new token); returns the first new id.</summary>
    public long AppendTokens(Tensor vectors)
    {
        var w = token_embedding.weight!;
        if (vectors.dim() != 2 || vectors.shape[1] != w.shape[1])
            throw new PagSharpException($"embedding vectors have shape [{string.Join(",", vectors.shape)}]; this text encoder takes [n,{w.shape[1]}]");
        long first = w.shape[0];
        using var _ = no_grad();
        var grown = cat(new[] { w.detach(), vectors.to_type(w.dtype) }, 0);
        token_embedding.weight = new TorchSharp.Modules.Parameter(grown, requires_grad: false);
        return first;
    }

    public Tensor Forward(Tensor ids)
    {
        using var pos = arange(ids.shape[1], dtype: ScalarType.Int64, device: ids.device).unsqueeze(0);
        return token_embedding.forward(ids) + position_embedding.forward(pos);
    }
}

/// <summary>CLIP self-attention with the causal mask: softmax(q kᵀ/√d + mask) v, then out_proj.</summary>
internal sealed class ClipAttention : Module
{
#pragma warning disable IDE1006
    private readonly Linear q_proj, k_proj, v_proj, out_proj;
#pragma warning restore IDE1006
    private readonly int _heads;

    public ClipAttention(int dim, int heads) : base(nameof(ClipAttention))
    {
        q_proj = Linear(dim, dim);
        k_proj = Linear(dim, dim);
        v_proj = Linear(dim, dim);
        out_proj = Linear(dim, dim);
        _heads = heads;
        RegisterComponents();
    }

    public Tensor Forward(Tensor h, Tensor causalMask)
    {
        long b = h.shape[0], s = h.shape[1], d = h.shape[2], hd = d / _heads;
        Tensor Split(Tensor t) => t.view(b, s, _heads, hd).transpose(1, 2);
        var q = Split(q_proj.forward(h));
        var k = Split(k_proj.forward(h));
        var v = Split(v_proj.forward(h));
        var w = (matmul(q, k.transpose(2, 3)) * (1.0 / Math.Sqrt(hd))).masked_fill(causalMask, double.NegativeInfinity).softmax(-1);
        return out_proj.forward(matmul(w, v).transpose(1, 2).reshape(b, s, d));
    }
}

internal sealed class ClipMlp : Module<Tensor, Tensor>
{
#pragma warning disable IDE1006
    private readonly Linear fc1, fc2;
#pragma warning restore IDE1006
    private readonly bool _quick;

    public ClipMlp(ClipTextConfig c) : base(nameof(ClipMlp))
    {
        fc1 = Linear(c.HiddenSize, c.IntermediateSize);
        fc2 = Linear(c.IntermediateSize, c.HiddenSize);
        _quick = c.HiddenAct == "quick_gelu";
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = fc1.forward(x);
        h = _quick ? h * sigmoid(1.702 * h) : functional.gelu(h);
        return fc2.forward(h);
    }
}

internal sealed class ClipEncoderLayer : Module
{
#pragma warning disable IDE1006
    private readonly ClipAttention self_attn;
    private readonly LayerNorm layer_norm1;
    private readonly ClipMlp mlp;
    private readonly LayerNorm layer_norm2;
#pragma warning restore IDE1006

    public ClipEncoderLayer(ClipTextConfig c) : base(nameof(ClipEncoderLayer))
    {
        self_attn = new ClipAttention(c.HiddenSize, c.NumAttentionHeads);
        layer_norm1 = SdNn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        mlp = new ClipMlp(c);
        layer_norm2 = SdNn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    public Tensor Forward(Tensor h, Tensor mask)
    {
        h = h + self_attn.Forward(layer_norm1.forward(h), mask);
        return h + mlp.forward(layer_norm2.forward(h));
    }
}

internal sealed class ClipEncoder : Module
{
#pragma warning disable IDE1006
    private readonly ModuleList<ClipEncoderLayer> layers;
#pragma warning restore IDE1006

    public ClipEncoder(ClipTextConfig c) : base(nameof(ClipEncoder))
    {
        layers = SdModuleList.Of(Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new ClipEncoderLayer(c)));
        RegisterComponents();
    }

    /// <summary>Runs the first <paramref name="count"/> layers; <paramref name="keepAfter"/> k ≥ 0 also returns the output after k layers (transformers' hidden_states[k]).</summary>
    public (Tensor Last, Tensor? Kept) Forward(Tensor h, Tensor mask, int count, int keepAfter = -1)
    {
        Tensor? kept = keepAfter == 0 ? h : null;
        for (int i = 0; i < count; i++)
        {
            h = layers[i].Forward(h, mask);
            if (i + 1 == keepAfter) kept = h;
        }
        return (h, kept);
    }
}

internal sealed class ClipTextTransformer : Module
{
#pragma warning disable IDE1006
    private readonly ClipEmbeddings embeddings;
    private readonly ClipEncoder encoder;
    private readonly LayerNorm final_layer_norm;
#pragma warning restore IDE1006

    public ClipTextTransformer(ClipTextConfig c) : base(nameof(ClipTextTransformer))
    {
        embeddings = new ClipEmbeddings(c);
        encoder = new ClipEncoder(c);
        final_layer_norm = SdNn.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    public ClipEmbeddings Embeddings => embeddings;

    public Tensor Forward(Tensor ids, int layersToRun)
    {
        long s = ids.shape[1];
        using var mask = ones(s, s, dtype: ScalarType.Bool, device: ids.device).triu(1);
        var h = encoder.Forward(embeddings.Forward(ids), mask, layersToRun).Last;
        return final_layer_norm.forward(h);
    }

    /// <summary>last_hidden_state (all layers, final LayerNorm) and hidden_states[<paramref name="keepAfter"/>] (no LayerNorm).</summary>
    public (Tensor LastHiddenState, Tensor HiddenState) ForwardAll(Tensor ids, int layers, int keepAfter)
    {
        long s = ids.shape[1];
        using var mask = ones(s, s, dtype: ScalarType.Bool, device: ids.device).triu(1);
        var (last, kept) = encoder.Forward(embeddings.Forward(ids), mask, layers, keepAfter);
        return (final_layer_norm.forward(last), kept!);
    }
}

/// <summary>
/// Port of transformers' <c>CLIPTextModel</c> (keys <c>text_model.embeddings.token_embedding.weight</c>,
/// <c>text_model.encoder.layers.N.self_attn.q_proj.weight</c>, <c>text_model.final_layer_norm.weight</c>, …): token
/// + position embeddings, pre-LN transformer layers with a causal mask and quick-GELU (or GELU) MLPs, final
/// LayerNorm; for a <c>CLIPTextModelWithProjection</c> also <c>text_projection.weight</c>. What SD 1.x/2.x pipelines
/// use as prompt embeddings is the output <see cref="Encode"/> returns; SDXL takes <see cref="EncodeWithPooled"/>.
/// </summary>
public sealed class ClipTextModel : Module
{
#pragma warning disable IDE1006
    private readonly ClipTextTransformer text_model;
    private readonly Linear? text_projection;
#pragma warning restore IDE1006

    public ClipTextConfig Config { get; }

    /// <summary>Appends token-embedding rows (textual inversion) and returns the id of the first; see <see cref="ClipTokenizer.AddToken"/>.</summary>
    public long AppendTokens(Tensor vectors) => text_model.Embeddings.AppendTokens(vectors);

    /// <summary>Rows of the token embedding.</summary>
    public long VocabRows => text_model.Embeddings.VocabRows;

    /// <summary>A buffer older checkpoints carry (text_model.embeddings.position_ids = arange); dropped before loading.</summary>
    public const string PositionIdsKey = "text_model.embeddings.position_ids";

    public ClipTextModel(ClipTextConfig config) : base(nameof(ClipTextModel))
    {
        Config = config;
        text_model = new ClipTextTransformer(config);
        if (config.WithProjection) text_projection = Linear(config.HiddenSize, config.ProjectionDim, hasBias: false);
        RegisterComponents();
    }

    /// <summary>
    /// What SDXL's <c>encode_prompt</c> takes from one encoder, in one pass: <c>hidden_states[−(1 + fromEnd)]</c>
    /// (the output of layer L − <paramref name="fromEnd"/>, without the final LayerNorm; SDXL uses fromEnd = 1 + clip_skip)
    /// and the pooled output — the final-LayerNorm state at the end-of-text token (transformers' pooler), through
    /// <c>text_projection</c> for a CLIPTextModelWithProjection (its <c>text_embeds</c>).
    /// </summary>
    public (Tensor Hidden, Tensor Pooled) EncodeWithPooled(Tensor ids, int fromEnd)
    {
        CheckIds(ids);
        if (fromEnd < 0 || fromEnd > Config.NumHiddenLayers)
            throw new PagSharpException($"hidden state −{fromEnd + 1} does not exist: the text encoder has {Config.NumHiddenLayers} layers (clip skip too large)");
        using var scope = NewDisposeScope();
        var (last, hidden) = text_model.ForwardAll(ids, Config.NumHiddenLayers, Config.NumHiddenLayers - fromEnd);
        // transformers: eos_token_id 2 (legacy configs) → argmax of the ids; otherwise the first eos position.
        var pos = Config.EosTokenId == 2 ? ids.argmax(-1) : ids.eq(Config.EosTokenId).to_type(ScalarType.Int32).argmax(-1);
        var pooled = last[arange(ids.shape[0], dtype: ScalarType.Int64, device: ids.device), pos];
        if (text_projection is not null) pooled = text_projection.forward(pooled);
        return (hidden.MoveToOuterDisposeScope(), pooled.MoveToOuterDisposeScope());
    }

    private void CheckIds(Tensor ids)
    {
        if (ids.dim() != 2) throw new PagSharpException($"token ids have shape [{string.Join(",", ids.shape)}]; expected [B,S]");
        if (ids.shape[1] > Config.MaxPositionEmbeddings)
            throw new PagSharpException($"{ids.shape[1]} tokens exceed the text encoder's {Config.MaxPositionEmbeddings} positions");
    }

    /// <summary>
    /// last_hidden_state [B, S, hidden] for token ids [B, S] (S ≤ max_position_embeddings). With
    /// <paramref name="clipSkip"/> k &gt; 0, the output of layer L − k gets the final LayerNorm instead (diffusers'
    /// <c>clip_skip</c>).
    /// </summary>
    public Tensor Encode(Tensor ids, int clipSkip = 0)
    {
        CheckIds(ids);
        if (clipSkip < 0 || clipSkip >= Config.NumHiddenLayers)
            throw new PagSharpException($"clip skip must be in [0, {Config.NumHiddenLayers - 1}] (got {clipSkip})");
        return text_model.Forward(ids, Config.NumHiddenLayers - clipSkip);
    }
}
