using PagSharp.Models;
using PagSharp.Models.Adm;
using Spectre.Console;
using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag layers</c>: every perturbable attention layer with its resolution, channels and heads.</summary>
public sealed class LayersCommand : Command<ModelSettings>
{
    public override int Execute(CommandContext context, ModelSettings settings, CancellationToken cancellationToken)
    {
        var cfg = ModelStore.ResolveConfig(settings.Preset, settings.Config);
        using var net = new AdmUNet(cfg);
        var table = new Table().AddColumns("layer", "group", "resolution", "channels", "heads");
        foreach (var l in net.AttentionLayers)
            table.AddRow(l.Name, l.Group, $"{l.Resolution}×{l.Resolution}", l.Channels.ToString(), l.Heads.ToString());
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"{net.AttentionLayers.Count} layers. Groups: input, middle, output, all; filters like @16; globs like output_blocks.*");
        return 0;
    }
}
