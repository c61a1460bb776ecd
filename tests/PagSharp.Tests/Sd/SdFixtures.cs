using PagSharp.Guidance;
using System.Text.Json;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Sd;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>The diffusers parity fixtures tests/fixtures/sd_unet_tiny and sd_vae_tiny (README §5, §8).</summary>
internal static class SdFixtures
{
    /// <summary>diffusers' <c>pag_scale</c> as a schedule: constant s, or none for s = 0.</summary>
    public static PagSharp.Guidance.ScaleSchedule? Pag(double s) => s > 0 ? new PagSharp.Guidance.ScaleSchedule.Constant(s) : null;

    public static string Unet(string name) => Fixtures.Path("sd_unet_tiny", name);
    public static string Vae(string name) => Fixtures.Path("sd_vae_tiny", name);

    /// <summary>A property of a fixture config.json as JSON text.</summary>
    public static string ConfigProperty(string configPath, string property)
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
        return doc.RootElement.GetProperty(property).GetRawText();
    }

    /// <summary>The full diffusers UNet config (what unet/config.json of a diffusers folder holds).</summary>
    public static string UnetConfigJson() => ConfigProperty(Unet("config.json"), "unet_config_full");

    public static SdUNetConfig UnetConfig() => SdUNetConfig.FromJson(UnetConfigJson(), "sd_unet_tiny/config.json");

    /// <summary>The tiny UNet in eval mode with weights.safetensors loaded strictly.</summary>
    public static SdUNet LoadUnet()
    {
        var net = new SdUNet(UnetConfig());
        net.eval();
        var w = SafeTensors.Load(Unet("weights.safetensors"));
        try { StateDictLoader.LoadStrict(net, w, "weights.safetensors"); }
        finally { TensorAssert.DisposeAll(w); }
        return net;
    }

    public static Dictionary<string, Tensor> Tensors(string path) => SafeTensors.Load(path);

    /// <summary>Max |e − a| ≤ rel · max|e| (the README's "relative to their magnitude").</summary>
    public static void AssertRelative(Tensor expected, Tensor actual, double rel, string what)
    {
        using var m = expected.abs().max();
        double tol = rel * Math.Max(1.0, m.item<float>());
        Models.Close.Assert(expected, actual, tol, what);
    }
}
