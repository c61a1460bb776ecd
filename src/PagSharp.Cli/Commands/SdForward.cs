using System.Globalization;
using PagSharp.Attention;
using PagSharp.IO;
using PagSharp.Models.Sd;
using static TorchSharp.torch;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag forward --model DIR</c>: one call of a diffusers SD UNet, optionally with identity-perturbed self-attention layers.</summary>
internal static class SdForward
{
    public static int Run(string model, string input, string timesteps, string? ehsSpec, string? perturb, string output, string? labels, IAttentionPerturbation policy,
                          string? textEmbeds = null, string? timeIds = null)
    {
        if (labels is not null) throw new PagSharpException("--labels is for class-conditional ADM models; a Stable Diffusion UNet takes --encoder-hidden-states");
        if (ehsSpec is null) throw new PagSharpException("pag forward --model needs --encoder-hidden-states TENSOR ([B,S,D] text conditioning)");
        using var unet = DiffusersFolder.Open(model).LoadUnet();
        using var x = TensorSpec.Load(input).to_type(ScalarType.Float32);
        var cfg = unet.Config;
        if (x.dim() != 4 || x.shape[1] != cfg.InChannels)
            throw new PagSharpException($"--input has shape [{string.Join(",", x.shape)}]; this UNet expects [B,{cfg.InChannels},H,W]");
        long b = x.shape[0];
        using var ehsRaw = TensorSpec.Load(ehsSpec).to_type(ScalarType.Float32);
        long d = cfg.CrossAttentionDim[0];
        if (ehsRaw.dim() != 3 || ehsRaw.shape[2] != d || (ehsRaw.shape[0] != 1 && ehsRaw.shape[0] != b))
            throw new PagSharpException($"--encoder-hidden-states has shape [{string.Join(",", ehsRaw.shape)}]; expected [{b} or 1,S,{d}] (cross_attention_dim {d})");
        using var ehs = ehsRaw.shape[0] == b ? ehsRaw.alias() : ehsRaw.expand(b, -1, -1).contiguous();
        using var t = Timesteps(timesteps, b);
        var plan = perturb is null ? null : PerturbationPlan.Perturb(DiffusersLayerSpec.Resolve(perturb, unet.AttentionLayers), policy, generator: new TorchSharp.torch.Generator(0));
        if (cfg.UsesTextTime && (textEmbeds is null || timeIds is null))
            throw new PagSharpException("this is an SDXL UNet: give --text-embeds TENSOR (pooled embeddings [B,P]) and --time-ids TENSOR ([B,n])");
        if (!cfg.UsesTextTime && (textEmbeds is not null || timeIds is not null))
            throw new PagSharpException("--text-embeds and --time-ids are for SDXL UNets (addition_embed_type text_time); this UNet takes none");
        using var te = textEmbeds is null ? null : Rows(TensorSpec.Load(textEmbeds).to_type(ScalarType.Float32), b, "--text-embeds");
        using var ids = timeIds is null ? null : Rows(TensorSpec.Load(timeIds).to_type(ScalarType.Float32), b, "--time-ids");
        using var _ = no_grad();
        using var o = unet.Forward(x, t, ehs, plan, added: te is null ? null : new SdAddedConditioning(te, ids!));
        ForwardCommand.Save(output, o);
        return 0;
    }

    private static Tensor Rows(Tensor t, long b, string option)
    {
        if (t.dim() == 1) t = t.unsqueeze(0);
        if (t.dim() != 2 || (t.shape[0] != 1 && t.shape[0] != b))
            throw new PagSharpException($"{option} has shape [{string.Join(",", t.shape)}]; expected [{b} or 1,width]");
        return t.shape[0] == b ? t : t.expand(b, -1).contiguous();
    }

    /// <summary>One timestep or one per batch entry: numbers (fractional ones allowed, as Euler schedulers pass), or a tensor spec.</summary>
    private static Tensor Timesteps(string spec, long batch)
    {
        Tensor t;
        if (spec.Contains(".npy") || spec.Contains(".safetensors") || spec.Contains(".pt"))
            t = TensorSpec.Load(spec).to_type(ScalarType.Float32).reshape(-1);
        else
            t = tensor(spec.Split(',').Select(v => float.TryParse(v.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out float r) && float.IsFinite(r) ? r
                : throw new PagSharpException($"--timesteps '{spec}': '{v}' is not a number")).ToArray());
        if (t.shape[0] != 1 && t.shape[0] != batch) throw new PagSharpException($"--timesteps has {t.shape[0]} values; expected 1 or {batch} (the batch size)");
        return t;
    }
}
