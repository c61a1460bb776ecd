using System.ComponentModel;
using System.Globalization;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Models.Sd;
using Spectre.Console;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag layers</c>: every perturbable attention layer with its resolution, channels and heads.</summary>
public sealed class LayersCommand : Command<LayersCommand.Settings>
{
    public sealed class Settings : ModelSettings
    {
        [CommandOption("--model <DIR>")][Description("A diffusers Stable Diffusion folder: list its UNet's self-attention (attn1) layers.")]
        public string? Model { get; init; }
    }

    public override int Execute(CommandContext context, Settings settings, CancellationToken cancellationToken)
    {
        if (settings.Model is not null)
        {
            if (settings.Preset is not null || settings.Config is not null || settings.Checkpoint is not null)
                throw new PagSharpException("--model (a diffusers folder) cannot be combined with --preset, --config or --checkpoint");
            using var unet = new SdUNet(DiffusersFolder.Open(settings.Model).UnetConfig());
            long sdNone = SdCost.Forward(unet, new MacCall(1));
            var t = NewTable(recommended: false);
            foreach (var l in unet.AttentionLayers)
                t.AddRow(l.Name, l.Group, $"{l.Resolution}×{l.Resolution}", l.Channels.ToString(), l.Heads.ToString(),
                    Ratio(SdCost.Forward(unet, MacCall.GuidedStep(1, false, new[] { l.Name })), sdNone),
                    Ratio(SdCost.Forward(unet, MacCall.GuidedStep(1, true, new[] { l.Name })), 2 * sdNone));
            AnsiConsole.Write(t);
            AnsiConsole.MarkupLine(Markup.Escape($"PAG cost: multiply-adds of a UNet step with PAG at that layer alone ÷ an unguided step ({sdNone / 1e9:F1} G), " +
                "as PagSharp runs it (the perturbed branch forks at the layer's transformer); +CFG: CFG+PAG ÷ CFG. res: resolution, ch: channels. diffusers' PAG pipelines run a full third branch: 1.50."));
            AnsiConsole.MarkupLine(Markup.Escape($"{unet.AttentionLayers.Count} self-attention layers (resolution in latent pixels at sample_size {unet.Config.SampleSize?.ToString() ?? "64"}). " +
                "--pag-layers takes diffusers identifiers (mid, down_blocks.1, up_blocks.0.attentions.1, regular expressions), groups input, middle, output, all (@RES filters), globs or these names."));
            return 0;
        }
        var cfg = ModelStore.ResolveConfig(settings.Preset, settings.Config);
        using var net = new AdmUNet(cfg);
        // Multiply-adds of one step with PAG at this layer alone ÷ one unguided step (shared prefix, split skips, batch 1).
        long none = AdmCost.Forward(net, new MacCall(1));
        string Cost(string layer, bool cfg) => Ratio(AdmCost.Forward(net, MacCall.GuidedStep(1, cfg, new[] { layer })), cfg ? 2 * none : none);
        var recommended = cfg.GuidanceDefaults is { } gd ? Attention.LayerSpec.Resolve(gd.PagLayers, net.AttentionLayers).ToHashSet() : null;
        var table = NewTable(recommended is not null);
        foreach (var l in net.AttentionLayers)
        {
            var row = new List<string> { l.Name, l.Group, $"{l.Resolution}×{l.Resolution}", l.Channels.ToString(), l.Heads.ToString(), Cost(l.Name, false), Cost(l.Name, true) };
            if (recommended is not null) row.Add(recommended.Contains(l.Name) ? "yes" : "");
            table.AddRow(row.ToArray());
        }
        AnsiConsole.Write(table);
        if (cfg.GuidanceDefaults is { } d)
            AnsiConsole.MarkupLine(Markup.Escape($"Recommended guidance (guidance_defaults): PAG scale {d.PagScale.ToString(CultureInfo.InvariantCulture)} at '{d.PagLayers}', CFG scale {d.GuidanceScale.ToString(CultureInfo.InvariantCulture)}; pag sample --pag uses it."));
        AnsiConsole.MarkupLine($"{net.AttentionLayers.Count} layers. Groups: input, middle, output, all; filters like @16; globs like output_blocks.*");
        AnsiConsole.MarkupLine(Markup.Escape($"PAG cost: multiply-adds of a PAG step perturbing that layer alone ÷ an unguided step ({none / 1e9:F2} G per sample), " +
            "as PagSharp runs it (the perturbed branch forks at the layer; a later layer is cheaper); +CFG: CFG+PAG ÷ CFG; res: resolution, ch: channels. Perturbing several layers costs about what the earliest of them costs."));
        return 0;
    }

    /// <summary>Columns short enough for an 80-column terminal: layer, group, res(olution), ch(annels), heads, PAG cost, +CFG (CFG+PAG ÷ CFG), rec(ommended).</summary>
    private static Table NewTable(bool recommended)
    {
        var t = new Table().AddColumn(new TableColumn("layer").NoWrap());
        foreach (var h in new[] { "group", "res", "ch", "heads", "PAG cost", "+CFG" }) t.AddColumn(new TableColumn(h).NoWrap());
        if (recommended) t.AddColumn(new TableColumn("rec.").NoWrap());
        return t;
    }

    private static string Ratio(long macs, long by) => ((double)macs / by).ToString("F2", CultureInfo.InvariantCulture);
}
