using PagSharp.Imaging;
using PagSharp.Pipelines;

namespace PagSharp.Samples;

/// <summary>The README's library example: 16 PAG samples of the built-in model in three lines.</summary>
public static class QuickStart
{
    /// <summary>Writes a 4×4 grid of PAG samples (scale 2, middle block) to <paramref name="path"/>.</summary>
    public static void Run(string path)
    {
        using var pipe = AdmPipeline.BuiltIn();
        using var digits = pipe.Generate(16, new SamplingOptions { Guidance = pipe.Pag(scale: 2) });
        Grid.Save(path, digits, nrow: 4);
    }
}
