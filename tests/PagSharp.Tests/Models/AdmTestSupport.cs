using System.Text.Json;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Models;

/// <summary>The ADM model A parity fixture (tests/fixtures/adm_a_uncond, README sections 3–4).</summary>
internal static class AdmA
{
    public static string File(string name) => Fixtures.Path("adm_a_uncond", name);

    private static readonly Lazy<string> ConfigText = new(() => System.IO.File.ReadAllText(File("config.json")));

    /// <summary>config.json, parsed (the caller disposes it).</summary>
    public static JsonDocument ConfigDocument() => JsonDocument.Parse(ConfigText.Value);

    /// <summary>The <c>guided_diffusion_args</c> object of config.json as JSON text (what <c>pag --config</c> takes).</summary>
    public static string ArgsJson()
    {
        using var doc = ConfigDocument();
        return doc.RootElement.GetProperty("guided_diffusion_args").GetRawText();
    }

    public static string[] StringArray(string property)
    {
        using var doc = ConfigDocument();
        return doc.RootElement.GetProperty(property).EnumerateArray().Select(e => e.GetString()!).ToArray();
    }

    public static AdmConfig Config() => AdmConfig.FromJson(ArgsJson(), "adm_a_uncond/config.json");

    /// <summary>Model A in eval mode with the given state dict loaded strictly.</summary>
    public static AdmUNet Build(IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        var net = new AdmUNet(Config());
        net.eval();
        StateDictLoader.LoadStrict(net, weights, source);
        return net;
    }

    /// <summary>Model A with weights.safetensors.</summary>
    public static AdmUNet Load()
    {
        var w = SafeTensors.Load(File("weights.safetensors"));
        try { return Build(w, "weights.safetensors"); }
        finally { TensorAssert.DisposeAll(w); }
    }

    /// <summary>All tensors of a fixture file (cases.safetensors, sampling.safetensors).</summary>
    public static Dictionary<string, Tensor> Tensors(string file) => SafeTensors.Load(File(file));
}

internal static class Close
{
    public static double MaxAbs(Tensor expected, Tensor actual)
    {
        using var d = (expected.to_type(ScalarType.Float64) - actual.to_type(ScalarType.Float64)).abs().max();
        return d.item<double>();
    }

    /// <summary>Same shape, and max |expected − actual| ≤ <paramref name="tol"/> (NaN fails).</summary>
    public static void Assert(Tensor expected, Tensor actual, double tol, string what)
    {
        Xunit.Assert.True(expected.shape.SequenceEqual(actual.shape),
            $"{what}: shape [{string.Join(",", actual.shape)}], expected [{string.Join(",", expected.shape)}]");
        double d = MaxAbs(expected, actual);
        Xunit.Assert.True(d <= tol, $"{what}: max abs diff {d:E3} > {tol:E1}");
    }

    /// <summary>
    /// Same shape; max |expected − actual| ≤ <paramref name="maxTol"/>, and at most <paramref name="fraction"/> of the
    /// elements differ by more than <paramref name="typicalTol"/>. For quantities that amplify float32 rounding.
    /// </summary>
    public static void AssertMostly(Tensor expected, Tensor actual, double maxTol, double typicalTol, double fraction, string what)
    {
        Assert(expected, actual, maxTol, what);
        using var d = (expected.to_type(ScalarType.Float64) - actual.to_type(ScalarType.Float64)).abs();
        using var over = (d > typicalTol).sum();
        double share = over.item<long>() / (double)d.numel();
        Xunit.Assert.True(share <= fraction, $"{what}: {share:P2} of the values differ by more than {typicalTol:E1} (allowed {fraction:P2})");
    }

    /// <summary>Max |expected − actual| is at least <paramref name="min"/>: the comparison could tell these apart.</summary>
    public static void AssertDiffer(Tensor a, Tensor b, double min, string what)
    {
        double d = MaxAbs(a, b);
        Xunit.Assert.True(d >= min, $"{what}: max abs diff {d:E3} < {min:E1}; the check would not notice the difference");
    }
}
