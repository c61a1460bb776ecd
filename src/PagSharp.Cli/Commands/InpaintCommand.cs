using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag inpaint</c>: inpainting with CFG and PAG, as diffusers' StableDiffusion(XL)PAGInpaintPipeline (9-channel and 4-channel UNets).</summary>
public sealed class InpaintCommand : Command<InpaintSettings>
{
    public override int Execute(CommandContext context, InpaintSettings s, CancellationToken cancellationToken) => Txt2ImgCommand.Run(s, "inpaint", cancellationToken);
}
