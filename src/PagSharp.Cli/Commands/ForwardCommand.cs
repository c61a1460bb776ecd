using System.ComponentModel;
using System.Globalization;
using PagSharp.Attention;
using PagSharp.IO;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag forward</c>: one network call on given inputs; saves the raw output.</summary>
public sealed class ForwardCommand : Command<ForwardCommand.Settings>
{
    public sealed class Settings : ModelSettings
    {
        [CommandOption("--input <TENSOR>")][Description("x_t as FILE.npy or FILE.safetensors:KEY, [[B,C,H,W]].")]
        public string? Input { get; init; }
        [CommandOption("--timesteps <T>")][Description("Comma-separated integers (one, or one per batch entry), or a tensor spec.")]
        public string? Timesteps { get; init; }
        [CommandOption("--labels <Y>")][Description("Comma-separated class labels or a tensor spec (class-conditional models).")]
        public string? Labels { get; init; }
        [CommandOption("--perturb <SPEC>")][Description("Layers whose attention is perturbed (all batch entries) with --perturbation.")]
        public string? Perturb { get; init; }
        [CommandOption("--perturbation <POLICY>")][Description("What the --perturb layers compute, as pag sample: identity (PAG, default), mask:R, mask-nodiag:R, noise:S, noise-logits:S, blur:S, soft:L, seg:S, seg:inf, skip, skip-block, skip-resblock (SLG: the self-attention, its transformer block, or the ResBlock feeding it skipped).")]
        public string Perturbation { get; init; } = "identity";
        [CommandOption("--output <FILE>")][Description("Output .npy (or .safetensors, key 'out').")]
        public string? Output { get; init; }
        [CommandOption("--model <DIR>")][Description("A diffusers Stable Diffusion folder: run its UNet (needs --encoder-hidden-states).")]
        public string? Model { get; init; }
        [CommandOption("--encoder-hidden-states <TENSOR>")][Description("Text conditioning for --model, [[B or 1,S,D]].")]
        public string? EncoderHiddenStates { get; init; }
        [CommandOption("--text-embeds <TENSOR>")][Description("SDXL UNets: the pooled text embeddings (added_cond_kwargs text_embeds), [[B or 1,P]].")]
        public string? TextEmbeds { get; init; }
        [CommandOption("--time-ids <TENSOR>")][Description("SDXL UNets: the micro-conditioning time ids (added_cond_kwargs time_ids), [[B or 1,n]].")]
        public string? TimeIds { get; init; }
    }

    public override int Execute(CommandContext context, Settings s, CancellationToken cancellationToken)
    {
        if (s.Input is null || s.Timesteps is null || s.Output is null)
            throw new PagSharpException("pag forward needs --input, --timesteps and --output");
        var policy = PerturbationSpec.Parse(s.Perturbation);
        if (s.Model is not null) return SdForward.Run(s.Model, s.Input, s.Timesteps, s.EncoderHiddenStates, s.Perturb, s.Output, s.Labels, policy, s.TextEmbeds, s.TimeIds);
        if (s.TextEmbeds is not null || s.TimeIds is not null) throw new PagSharpException("--text-embeds and --time-ids are for SDXL UNets (--model DIR)");
        if (s.EncoderHiddenStates is not null) throw new PagSharpException("--encoder-hidden-states is for a Stable Diffusion UNet (--model DIR)");
        using var loaded = s.LoadModel();
        using var x = TensorSpec.Load(s.Input).to_type(ScalarType.Float32);
        var cfg = loaded.Config;
        if (x.dim() != 4 || x.shape[1] != cfg.InChannels || x.shape[2] != cfg.ImageSize || x.shape[3] != cfg.ImageSize)
            throw new PagSharpException($"--input has shape [{string.Join(",", x.shape)}]; this model expects [B,{cfg.InChannels},{cfg.ImageSize},{cfg.ImageSize}]");
        long b = x.shape[0];
        var t = IntegerTensor(s.Timesteps, b, "--timesteps");
        CheckRange(t, 0, cfg.DiffusionSteps - 1, "--timesteps", $"the model's timesteps are 0..{cfg.DiffusionSteps - 1}");
        Tensor? y = s.Labels is null ? null : IntegerTensor(s.Labels, b, "--labels");
        if (y is not null && !loaded.Net.IsClassConditional) throw new PagSharpException("this model is unconditional: --labels is not valid");
        if (y is null && loaded.Net.IsClassConditional)
            throw new PagSharpException($"this model is class-conditional: give --labels (0..{cfg.ResolvedNumClasses - 1})");
        if (y is not null) CheckRange(y, 0, cfg.ResolvedNumClasses!.Value - 1, "--labels", $"valid labels are 0..{cfg.ResolvedNumClasses - 1}");
        var plan = s.Perturb is null ? null : PerturbationPlan.Perturb(LayerSpec.Resolve(s.Perturb, loaded.Net.AttentionLayers), policy, generator: new TorchSharp.torch.Generator(0));
        using var _ = no_grad();
        using var output = loaded.Net.Forward(x, t, y, plan);
        if (s.Output.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            SafeTensors.Save(s.Output, new[] { new KeyValuePair<string, Tensor>("out", output) });
        else Npy.Save(s.Output, output);
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(s.Output)} [[{string.Join(",", output.shape)}]]");
        return 0;
    }

    /// <summary>Writes <paramref name="output"/> as .npy or .safetensors (key 'out').</summary>
    internal static void Save(string path, Tensor output)
    {
        if (path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            SafeTensors.Save(path, new[] { new KeyValuePair<string, Tensor>("out", output) });
        else Npy.Save(path, output);
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(path)} [[{string.Join(",", output.shape)}]]");
    }

    private static void CheckRange(Tensor t, long lo, long hi, string option, string valid)
    {
        long min = t.min().item<long>(), max = t.max().item<long>();
        if (min < lo || max > hi) throw new PagSharpException($"{option}: {(min < lo ? min : max)} is out of range; {valid}");
    }

    private static Tensor IntegerTensor(string spec, long batch, string option)
    {
        Tensor t;
        if (spec.Contains(".npy") || spec.Contains(".safetensors") || spec.Contains(".pt"))
            t = TensorSpec.Load(spec).to_type(ScalarType.Int64).reshape(-1);
        else
            t = tensor(spec.Split(',').Select(v => long.TryParse(v.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long r) ? r
                : throw new PagSharpException($"{option} '{spec}': '{v}' is not an integer")).ToArray());
        if (t.shape[0] == 1 && batch > 1) t = t.expand(batch).contiguous();
        if (t.shape[0] != batch) throw new PagSharpException($"{option} has {t.shape[0]} values; expected 1 or {batch} (the batch size)");
        return t;
    }
}
