using Spectre.Console.Cli;

namespace PagSharp.Cli.Commands;

/// <summary><c>pag img2img</c>: image-to-image with CFG and PAG, as diffusers' StableDiffusion(XL)PAGImg2ImgPipeline.</summary>
public sealed class Img2ImgCommand : Command<Img2ImgSettings>
{
    public override int Execute(CommandContext context, Img2ImgSettings s, CancellationToken cancellationToken) => Txt2ImgCommand.Run(s, "img2img", cancellationToken);
}
