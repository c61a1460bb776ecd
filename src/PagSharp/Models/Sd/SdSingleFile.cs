using PagSharp.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Models.Sd;

/// <summary>The model family of an original single-file checkpoint, as diffusers' <c>infer_diffusers_model_type</c> decides it.</summary>
public enum SdFamily
{
    /// <summary>Stable Diffusion 1.x (CLIP ViT-L text encoder).</summary>
    Sd1,
    /// <summary>SD 1.x inpainting (9-channel UNet).</summary>
    Sd1Inpainting,
    /// <summary>Stable Diffusion 2.x (OpenCLIP ViT-H text encoder; 768-v models predict v).</summary>
    Sd2,
    /// <summary>SD 2.x inpainting.</summary>
    Sd2Inpainting,
    /// <summary>SDXL base (CLIP ViT-L and OpenCLIP ViT-bigG).</summary>
    SdxlBase,
    /// <summary>SDXL refiner (OpenCLIP ViT-bigG only).</summary>
    SdxlRefiner,
    /// <summary>SDXL inpainting.</summary>
    SdxlInpainting,
}

/// <summary>
/// An original (LDM / SGM) single-file Stable Diffusion checkpoint — <c>.safetensors</c>, or <c>.ckpt</c> through the
/// safe unpickler (tensor rebuilds only) — as A1111, ComfyUI and Forge use them: <c>model.diffusion_model.*</c> (UNet),
/// <c>first_stage_model.*</c> (VAE), <c>cond_stage_model.transformer.*</c> (SD 1.x CLIP),
/// <c>cond_stage_model.model.*</c> (SD 2.x OpenCLIP), <c>conditioner.embedders.N.*</c> (SDXL). Components are copied
/// into our modules one tensor at a time (safetensors files are read tensor by tensor), so loading needs the model plus
/// one tensor of memory. Every parameter must be found with its shape; what a component's prefix holds beyond it is
/// reported, as diffusers' <c>from_single_file</c> converts it. Original ControlNet checkpoints (<c>control_model.*</c>,
/// lllyasviel/ControlNet's layout) are opened with <see cref="TryOpenControlNet"/> and loaded with <see cref="LoadControlNet"/>.
/// </summary>
public sealed class SdSingleFile : IDisposable
{
    public const string UnetPrefix = "model.diffusion_model.";
    private static readonly string[] VaePrefixes = ["first_stage_model.", "vae."];
    private static readonly string[] ClipPrefixes = ["cond_stage_model.transformer.", "conditioner.embedders.0.transformer."];

    private readonly SafeTensorsReader? _reader;
    private readonly Dictionary<string, Tensor>? _all;

    public string Path { get; }
    /// <summary>Every tensor's shape, by key.</summary>
    public IReadOnlyDictionary<string, long[]> Shapes { get; }
    public SdFamily Family { get; }

    private SdSingleFile(string path, SafeTensorsReader? reader, Dictionary<string, Tensor>? all, IReadOnlyDictionary<string, long[]>? shapes = null, bool controlNet = false)
    {
        Path = path;
        _reader = reader;
        _all = all;
        Shapes = shapes ?? reader?.Shapes ?? all!.ToDictionary(kv => kv.Key, kv => kv.Value.shape, StringComparer.Ordinal);
        if (controlNet)
        {
            ControlNetKeyPrefix = ControlNetPrefixOf(Shapes) ?? throw new PagSharpException($"{path} is not an original (LDM) ControlNet checkpoint (no control_model.* or input_hint_block.* keys)");
            // SD 2.x ControlNets cross-attend to 1024-wide OpenCLIP states (diffusers' v2 rule, on the ControlNet's first attention).
            Family = Shapes.TryGetValue(ControlNetKeyPrefix + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", out var k) && k[^1] == 1024 ? SdFamily.Sd2 : SdFamily.Sd1;
        }
        else Family = Detect(Shapes, path);
    }

    /// <summary>
    /// For an original (lllyasviel/ControlNet <c>cldm</c>) ControlNet checkpoint, the prefix of its ControlNet keys:
    /// <c>control_model.</c> (the ControlNet releases; files that hold a whole ControlLDM have other prefixes too) or
    /// "" (files with the ControlNet alone, e.g. <c>time_embed.0.weight</c>, <c>input_hint_block.0.weight</c>, as
    /// diffusers' <c>convert_controlnet_checkpoint</c> also accepts). Null for any other file.
    /// </summary>
    public string? ControlNetKeyPrefix { get; }

    /// <summary>The ControlNet prefix of a key list (see <see cref="ControlNetKeyPrefix"/>), or null when it is not an original ControlNet.</summary>
    public static string? ControlNetPrefixOf(IReadOnlyDictionary<string, long[]> shapes)
    {
        if (shapes.Keys.Any(k => k.StartsWith(ControlNetPrefix, StringComparison.Ordinal))) return ControlNetPrefix;
        if (shapes.ContainsKey("input_hint_block.0.weight") && !shapes.ContainsKey("time_embedding.linear_1.weight")) return "";
        return null;
    }

    /// <summary>The key prefix of the ControlNet in original ControlNet checkpoints (diffusers' <c>LDM_CONTROLNET_KEY</c>).</summary>
    public const string ControlNetPrefix = "control_model.";

    /// <summary>
    /// Opens <paramref name="path"/> as an original ControlNet checkpoint, or returns null when it is not one (then
    /// nothing stays open). A safetensors file is recognised by its header alone; a diffusers weight-file name
    /// (<see cref="SdLoader.WeightNames"/>) that is not safetensors is not opened here.
    /// </summary>
    public static SdSingleFile? TryOpenControlNet(string path)
    {
        if (!File.Exists(path)) return null;
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            var reader = SafeTensors.OpenReader(path);
            try
            {
                if (ControlNetPrefixOf(reader.Shapes) is null) { reader.Dispose(); return null; }
                return new SdSingleFile(path, reader, null, controlNet: true);
            }
            catch { reader.Dispose(); throw; }
        }
        if (SdLoader.WeightNames.Contains(System.IO.Path.GetFileName(path), StringComparer.Ordinal)) return null;
        var all = StateDicts.Load(path);
        try
        {
            var shapes = all.ToDictionary(kv => kv.Key, kv => kv.Value.shape, StringComparer.Ordinal);
            if (ControlNetPrefixOf(shapes) is null) { foreach (var t in all.Values) t.Dispose(); return null; }
            return new SdSingleFile(path, null, all, shapes, controlNet: true);
        }
        catch { foreach (var t in all.Values) t.Dispose(); throw; }
    }

    /// <summary>An original ControlNet checkpoint known by its key → shape list only (see <see cref="FromShapes"/>).</summary>
    public static SdSingleFile ControlNetFromShapes(IReadOnlyDictionary<string, long[]> shapes, string name = "the key list") => new(name, null, null, shapes, controlNet: true);

    /// <summary>
    /// The shipped config of the standard SD 1.5 ControlNet (models/sd-configs/controlnet-sd15/config.json beside the
    /// program: lllyasviel/control_v11p_sd15_canny's, the config diffusers' <c>from_single_file</c> takes for
    /// ControlNets), or null when it is not there.
    /// </summary>
    public static string? BuiltInControlNetConfig()
    {
        string file = System.IO.Path.Combine(AppContext.BaseDirectory, "models", "sd-configs", "controlnet-sd15", "config.json");
        return File.Exists(file) ? file : null;
    }

    /// <summary>
    /// A checkpoint known by its key → shape list only (no data): the <c>Load…</c> methods then check the mapping and
    /// shapes against a module (e.g. one built on the meta device) and stop before copying.
    /// </summary>
    public static SdSingleFile FromShapes(IReadOnlyDictionary<string, long[]> shapes, string name = "the key list") => new(name, null, null, shapes);

    private bool ShapesOnly => _reader is null && _all is null;

    /// <summary>Opens a checkpoint (no tensor data is read from a safetensors file yet) and detects its family.</summary>
    public static SdSingleFile Open(string path)
    {
        if (!File.Exists(path)) throw new PagSharpException($"model file '{path}' does not exist");
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            var reader = SafeTensors.OpenReader(path);
            try { return new SdSingleFile(path, reader, null); }
            catch { reader.Dispose(); throw; }
        }
        var all = StateDicts.Load(path);
        try { return new SdSingleFile(path, null, all); }
        catch { foreach (var t in all.Values) t.Dispose(); throw; }
    }

    /// <summary>
    /// diffusers' rules (<c>infer_diffusers_model_type</c>): a 9-channel <c>input_blocks.0.0</c> is inpainting; a
    /// 1024-wide <c>input_blocks.2.1…attn2.to_k</c> is SD 2.x; OpenCLIP at <c>conditioner.embedders.1</c> is SDXL base,
    /// at <c>conditioner.embedders.0</c> the refiner (diffusers looks for resblock 9; any resblock is accepted here, so
    /// that small test models are recognised too); otherwise a file with <c>model.diffusion_model.*</c> is SD 1.x.
    /// </summary>
    public static SdFamily Detect(IReadOnlyDictionary<string, long[]> shapes, string source = "the checkpoint")
    {
        if (ControlNetPrefixOf(shapes) is { } cn)
            throw new PagSharpException($"{source} is an original ControlNet checkpoint ({(cn.Length > 0 ? cn : "input_hint_block.")}*); give it with --controlnet, not --model");
        bool xlBase = shapes.Keys.Any(k => k.StartsWith("conditioner.embedders.1.model.", StringComparison.Ordinal));
        bool xlRefiner = !xlBase && shapes.Keys.Any(k => k.StartsWith("conditioner.embedders.0.model.", StringComparison.Ordinal));
        bool v2 = shapes.TryGetValue(UnetPrefix + "input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight", out var k2) && k2[^1] == 1024
                  || shapes.Keys.Any(k => k.StartsWith("cond_stage_model.model.", StringComparison.Ordinal));
        bool inpaint = shapes.TryGetValue(UnetPrefix + "input_blocks.0.0.weight", out var c0) && c0.Length == 4 && c0[1] == 9;
        bool hasUnet = shapes.Keys.Any(k => k.StartsWith(UnetPrefix, StringComparison.Ordinal));
        if (!hasUnet && !xlBase && !xlRefiner && !v2 && !shapes.Keys.Any(k => ClipPrefixes.Concat(VaePrefixes).Any(p => k.StartsWith(p, StringComparison.Ordinal))))
        {
            bool diffusers = shapes.ContainsKey("conv_in.weight") || shapes.Keys.Any(k => k.StartsWith("down_blocks.", StringComparison.Ordinal));
            throw new PagSharpException(diffusers
                ? $"{source} holds diffusers-format keys (down_blocks.*), not an original single-file checkpoint; give the diffusers folder it belongs to instead"
                : $"{source} holds no Stable Diffusion components (expected model.diffusion_model.*, first_stage_model.*, cond_stage_model.* or conditioner.embedders.* keys)");
        }
        if (xlBase || xlRefiner || shapes.ContainsKey(UnetPrefix + "label_emb.0.0.weight"))
            return inpaint ? SdFamily.SdxlInpainting : xlRefiner ? SdFamily.SdxlRefiner : SdFamily.SdxlBase;
        if (v2) return inpaint ? SdFamily.Sd2Inpainting : SdFamily.Sd2;
        return inpaint ? SdFamily.Sd1Inpainting : SdFamily.Sd1;
    }

    /// <summary>
    /// The shipped config folder (models/sd-configs beside the program) for a family with standard configs — SD 1.5,
    /// SD 1.5 inpainting, SD 2.1 (768, v-prediction), SDXL base and refiner — or null: other families need the user's configs.
    /// </summary>
    public static string? BuiltInConfigDir(SdFamily family)
    {
        string? name = family switch
        {
            SdFamily.Sd1 => "sd15",
            SdFamily.Sd1Inpainting => "sd15-inpainting",
            SdFamily.SdxlBase => "sdxl-base",
            SdFamily.SdxlRefiner => "sdxl-refiner",
            // SD 2.x 768-v and 512-base have the same keys; diffusers' from_single_file also takes 2.1 (768, v-prediction).
            SdFamily.Sd2 => "sd21-v",
            _ => null,
        };
        if (name is null) return null;
        string dir = System.IO.Path.Combine(AppContext.BaseDirectory, "models", "sd-configs", name);
        return Directory.Exists(dir) ? dir : null;
    }

    public bool IsXl => Family is SdFamily.SdxlBase or SdFamily.SdxlRefiner or SdFamily.SdxlInpainting;

    public bool HasUnet => Shapes.Keys.Any(k => k.StartsWith(UnetPrefix, StringComparison.Ordinal));
    public string? VaePrefix => VaePrefixes.FirstOrDefault(p => Shapes.Keys.Any(k => k.StartsWith(p, StringComparison.Ordinal)));

    /// <summary>The prefix of the CLIP ViT-L encoder (SD 1.x, SDXL base's first), or null.</summary>
    public string? ClipPrefix => ClipPrefixes.FirstOrDefault(p => Shapes.Keys.Any(k => k.StartsWith(p, StringComparison.Ordinal)));

    /// <summary>The prefix of the OpenCLIP encoder (SD 2.x, SDXL's second), or null.</summary>
    public string? OpenClipPrefix => new[] { "cond_stage_model.model.", "conditioner.embedders.1.model.", "conditioner.embedders.0.model." }
        .FirstOrDefault(p => Shapes.Keys.Any(k => k.StartsWith(p, StringComparison.Ordinal)));

    private Tensor Read(string key) => _reader is not null ? _reader.Read(key) : _all![key].alias();

    /// <summary>How one of our parameters is made from the file: source key and a transform of its tensor.</summary>
    private sealed record Source(string Key, long[] Shape, Func<Tensor, Tensor>? Transform = null);

    /// <summary>Copies the UNet weights into <paramref name="unet"/> (built from the matching config).</summary>
    public void LoadUnet(SdUNet unet) => LoadInto(unet, "UNet", UnetPrefix, k => Plain(UnetPrefix + LdmKeys.Unet(k, unet.Config)));

    /// <summary>Copies the VAE weights into <paramref name="vae"/>.</summary>
    public void LoadVae(AutoencoderKL vae)
    {
        string prefix = VaePrefix ?? throw new PagSharpException($"{Path} holds no VAE (first_stage_model.*); give a separate VAE or use latent output");
        int levels = vae.Config.BlockOutChannels.Length;
        LoadInto(vae, "VAE", prefix, k =>
        {
            string src = prefix + LdmKeys.Vae(k, levels);
            if (!LdmKeys.VaeIsConv1x1(k) || !Shapes.TryGetValue(src, out var sh) || sh.Length != 4) return Plain(src);
            return new Source(src, sh[..2], t => t.flatten(1));
        });
    }

    /// <summary>Copies the CLIP ViT-L text encoder (keys after the prefix are transformers' own) into <paramref name="te"/>.</summary>
    public void LoadClip(ClipTextModel te)
    {
        string prefix = ClipPrefix ?? throw new PagSharpException($"{Path} holds no CLIP text encoder (cond_stage_model.transformer.* or conditioner.embedders.0.transformer.*)");
        LoadInto(te, "text encoder", prefix, k => Plain(prefix + k), ignore: k => k.EndsWith("embeddings.position_ids", StringComparison.Ordinal));
    }

    /// <summary>
    /// Copies the OpenCLIP text encoder into <paramref name="te"/> (diffusers' <c>convert_open_clip_checkpoint</c>):
    /// resblocks.N → encoder.layers.N (ln_1/ln_2 → layer_norm1/2, attn → self_attn, c_fc/c_proj → fc1/fc2), q/k/v
    /// as thirds of attn.in_proj_weight/bias, positional_embedding, token_embedding, ln_final, and text_projection
    /// transposed. Resblocks beyond the encoder's layers (SD 2.x: the last one, which SD 2 does not use) and a
    /// text_projection the encoder does not have are left unused, as diffusers does.
    /// </summary>
    public void LoadOpenClip(ClipTextModel te)
    {
        string prefix = OpenClipPrefix ?? throw new PagSharpException($"{Path} holds no OpenCLIP text encoder (cond_stage_model.model.* or conditioner.embedders.N.model.*)");
        long d = te.Config.HiddenSize;
        Source Map(string k)
        {
            if (k == "text_model.embeddings.position_embedding.weight") return Plain(prefix + "positional_embedding");
            if (k == "text_model.embeddings.token_embedding.weight") return Plain(prefix + "token_embedding.weight");
            if (k.StartsWith("text_model.final_layer_norm.", StringComparison.Ordinal)) return Plain(prefix + "ln_final." + k["text_model.final_layer_norm.".Length..]);
            if (k == "text_projection.weight")
                return Shapes.TryGetValue(prefix + "text_projection", out var ps) ? new Source(prefix + "text_projection", [ps[1], ps[0]], t => t.t()) : Plain(prefix + "text_projection");
            const string layers = "text_model.encoder.layers.";
            if (!k.StartsWith(layers, StringComparison.Ordinal)) return Plain(prefix + k);
            string rest = k[layers.Length..];
            int dot = rest.IndexOf('.');
            string block = $"{prefix}transformer.resblocks.{rest[..dot]}.", name = rest[(dot + 1)..];
            foreach (var (proj, third) in new[] { ("self_attn.q_proj.", 0), ("self_attn.k_proj.", 1), ("self_attn.v_proj.", 2) })
                if (name.StartsWith(proj, StringComparison.Ordinal))
                {
                    bool weight = name.EndsWith("weight", StringComparison.Ordinal);
                    string src = block + (weight ? "attn.in_proj_weight" : "attn.in_proj_bias");
                    return Shapes.TryGetValue(src, out var s) && s[0] == 3 * d
                        ? new Source(src, weight ? [d, s[1]] : [d], t => t.narrow(0, third * d, d))
                        : new Source(src, weight ? [3 * d, d] : [3 * d]);
                }
            name = name.Replace("self_attn.out_proj.", "attn.out_proj.", StringComparison.Ordinal).Replace("layer_norm1.", "ln_1.", StringComparison.Ordinal)
                .Replace("layer_norm2.", "ln_2.", StringComparison.Ordinal).Replace("mlp.fc1.", "mlp.c_fc.", StringComparison.Ordinal).Replace("mlp.fc2.", "mlp.c_proj.", StringComparison.Ordinal);
            return Plain(block + name);
        }
        int layerCount = te.Config.NumHiddenLayers;
        LoadInto(te, "OpenCLIP text encoder", prefix, Map, ignore: k =>
            (k == prefix + "text_projection" && !te.Config.WithProjection)
            || (k.StartsWith(prefix + "transformer.resblocks.", StringComparison.Ordinal)
                && int.Parse(k[(prefix + "transformer.resblocks.").Length..].Split('.')[0], System.Globalization.CultureInfo.InvariantCulture) >= layerCount)
            || k == prefix + "logit_scale" || k.StartsWith(prefix + "visual.", StringComparison.Ordinal) || k == prefix + "attn_mask");
    }

    /// <summary>
    /// Copies an original ControlNet's weights into <paramref name="net"/> (built from its diffusers config,
    /// <paramref name="configSource"/>) with <see cref="LdmKeys.ControlNet"/>, as diffusers'
    /// <c>convert_controlnet_checkpoint</c> maps them.
    /// </summary>
    public void LoadControlNet(SdControlNet net, string configSource)
    {
        string prefix = ControlNetKeyPrefix ?? throw new PagSharpException($"{Path} is not an original (LDM) ControlNet checkpoint");
        // Without a prefix only the ControlNet's own top-level modules belong to it.
        Func<string, bool>? ignore = prefix.Length > 0 ? null : k => !ControlNetModules.Contains(k[..Math.Max(0, k.IndexOf('.'))], StringComparer.Ordinal);
        LoadInto(net, "ControlNet", prefix, k => Plain(prefix + LdmKeys.ControlNet(k, net.Config)), ignore,
            $"The ControlNet config used is {configSource}; it must be this ControlNet's diffusers config.json: put that beside the file (without one, the shipped SD 1.5 ControlNet config is used).");
    }

    private static readonly string[] ControlNetModules = ["time_embed", "input_blocks", "zero_convs", "input_hint_block", "middle_block", "middle_block_out"];

    private Source Plain(string key) => new(key, Shapes.TryGetValue(key, out var s) ? s : []);

    /// <summary>
    /// Fills every parameter and buffer of <paramref name="module"/> from the file after checking all of them: each
    /// must exist with its shape; file keys under <paramref name="prefix"/> that no parameter takes are reported
    /// (unless <paramref name="ignore"/> says they are known to be unused). Nothing is copied when anything is wrong.
    /// </summary>
    private void LoadInto(nn.Module module, string what, string prefix, Func<string, Source> map, Func<string, bool>? ignore = null, string? hint = null)
    {
        var own = module.state_dict();
        var plan = own.ToDictionary(kv => kv.Key, kv => map(kv.Key));
        var missing = plan.Where(p => !Shapes.ContainsKey(p.Value.Key)).Select(p => $"{p.Value.Key} (for {p.Key})").ToList();
        var misShaped = plan.Where(p => Shapes.ContainsKey(p.Value.Key) && !p.Value.Shape.SequenceEqual(own[p.Key].shape))
            .Select(p => $"{p.Value.Key}: file [{string.Join(",", Shapes[p.Value.Key])}], model {p.Key} [{string.Join(",", own[p.Key].shape)}]").ToList();
        var used = plan.Values.Select(s => s.Key).ToHashSet(StringComparer.Ordinal);
        var unused = Shapes.Keys.Where(k => k.StartsWith(prefix, StringComparison.Ordinal) && !used.Contains(k) && !(ignore?.Invoke(k) ?? false)).ToList();
        if (missing.Count + misShaped.Count + unused.Count > 0)
            throw StateDictLoader.Mismatch($"{Path}: the {what} ({(prefix.Length > 0 ? prefix + "*" : "keys without prefix")}) does not match the model config ({own.Count} tensors expected):",
                [("missing keys", missing), ("shape mismatches", misShaped), ("keys left over", unused)],
                hint ?? $"The file was detected as {Family}; if that is wrong or the model is non-standard, give its diffusers configs with --config DIR.");
        if (ShapesOnly) return;
        using var _ = no_grad();
        foreach (var (key, target) in own)
        {
            var src = plan[key];
            using var scope = NewDisposeScope();
            var t = Read(src.Key);
            if (src.Transform is not null) t = src.Transform(t);
            if (!t.is_floating_point() && target.is_floating_point())
                throw new PagSharpException($"{Path}: tensor '{src.Key}' has dtype {t.dtype}, expected a floating-point tensor");
            target.copy_(t.to_type(target.dtype));
        }
    }

    public void Dispose()
    {
        _reader?.Dispose();
        if (_all is not null) foreach (var t in _all.Values) t.Dispose();
    }
}
