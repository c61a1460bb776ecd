using System.Text.Json.Nodes;
using PagSharp.Tests.Models;

namespace PagSharp.Tests.Cli;

/// <summary>A model's recommended guidance (config <c>guidance_defaults</c>) as pag sample, pag layers and the library use it.</summary>
[Collection(CliCollection.Name)]
public sealed class GuidanceDefaultsTests : IDisposable
{
    private readonly AdmACli _adm = new();
    private readonly string _withDefaults;

    public GuidanceDefaultsTests()
    {
        var cfg = JsonNode.Parse(AdmA.ArgsJson())!.AsObject();
        cfg["guidance_defaults"] = new JsonObject { ["pag_scale"] = 1.5, ["pag_layers"] = "output_blocks.2.1,output_blocks.3.1", ["guidance_scale"] = 1 };
        _withDefaults = _adm.Dir.File("with_defaults.json");
        File.WriteAllText(_withDefaults, cfg.ToJsonString());
    }

    public void Dispose() => _adm.Dispose();

    private (int Exit, string Output, JsonNode? Settings) Sample(string config, string name, params string[] extra)
    {
        string dir = _adm.Dir.File(name);
        var args = new[] { "sample", "--config", config, "--checkpoint", _adm.Weights, "--init-noise", _adm.InitNoise, "--steps", "2", "--output", dir }.Concat(extra).ToArray();
        var (exit, output) = Pag.Run(args);
        var settings = exit == 0 ? JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run.json")))!["settings"] : null;
        return (exit, output, settings);
    }

    private static string[] Layers(JsonNode s) => s["pag_layers"]!.AsArray().Select(n => (string)n!).ToArray();

    [Fact]
    public void PagAloneUsesTheRecommendedScaleAndLayers()
    {
        var (exit, output, s) = Sample(_withDefaults, "pag", "--pag");
        Assert.True(exit == 0, output);
        Assert.Equal(1.5, (double?)s!["pag_scale"]);
        Assert.Equal(["output_blocks.2.1", "output_blocks.3.1"], Layers(s));
    }

    [Fact]
    public void AScaleWithoutLayersUsesTheRecommendedLayers_AndFlagsOverride()
    {
        var (exit, output, s) = Sample(_withDefaults, "scale", "--pag-scale", "3");
        Assert.True(exit == 0, output);
        Assert.Equal(3.0, (double?)s!["pag_scale"]);
        Assert.Equal(["output_blocks.2.1", "output_blocks.3.1"], Layers(s));
        (exit, output, s) = Sample(_withDefaults, "override", "--pag", "--pag-layers", "middle");
        Assert.True(exit == 0, output);
        Assert.Equal(["middle_block.1"], Layers(s!));
        // Without guidance_defaults the layers stay the middle block.
        (exit, output, s) = Sample(_adm.Config, "plain", "--pag-scale", "3");
        Assert.True(exit == 0, output);
        Assert.Equal(["middle_block.1"], Layers(s!));
    }

    [Fact]
    public void PagWithoutDefaultsFailsClearly_AndLayersWithoutAScaleWarn()
    {
        var (exit, output, _) = Sample(_adm.Config, "none", "--pag");
        Assert.Equal(2, exit);
        Assert.Contains("no guidance_defaults", output);
        (exit, output, var s) = Sample(_adm.Config, "warn", "--pag-layers", "all");
        Assert.True(exit == 0, output);
        Assert.Contains("--pag-layers has no effect without --pag-scale", output);
        Assert.Equal(0.0, (double?)s!["pag_scale"]);
    }

    [Fact]
    public void LayersMarksTheRecommendedLayers()
    {
        var (exit, output) = Pag.Run("layers", "--config", _withDefaults);
        Assert.True(exit == 0, output);
        Assert.Contains("rec.", output);
        var marked = output.Split('\n').Where(l => l.Contains("yes")).Select(l => l.Split('│', StringSplitOptions.TrimEntries)[1]).ToArray();
        Assert.Equal(["output_blocks.2.1", "output_blocks.3.1"], marked);
        Assert.Contains("pag sample --pag uses it", output);
    }
}

/// <summary>A model's recommended sampler (config <c>sampling_defaults</c>) as pag sample and the library use it.</summary>
[Collection(CliCollection.Name)]
public sealed class SamplingDefaultsTests : IDisposable
{
    private readonly AdmACli _adm = new();
    private readonly string _withDefaults;

    public SamplingDefaultsTests()
    {
        var cfg = JsonNode.Parse(AdmA.ArgsJson())!.AsObject();
        cfg["sampling_defaults"] = new JsonObject { ["scheduler"] = "ddpm", ["steps"] = 3 };
        _withDefaults = _adm.Dir.File("with_sampling_defaults.json");
        File.WriteAllText(_withDefaults, cfg.ToJsonString());
    }

    public void Dispose() => _adm.Dispose();

    private (int Exit, string Output, JsonNode? Settings) Sample(string config, string name, params string[] extra)
    {
        string dir = _adm.Dir.File(name);
        var (exit, output) = Pag.Run(["sample", "--config", config, "--checkpoint", _adm.Weights, "--init-noise", _adm.InitNoise, "--output", dir, .. extra]);
        return (exit, output, exit == 0 ? JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run.json")))!["settings"] : null);
    }

    [Fact]
    public void TheModelsSamplerIsTheDefault_StepsAloneKeepIt_ASamplerAloneTakesItsOwnDefaultSteps()
    {
        var (exit, output, s) = Sample(_withDefaults, "defaults");
        Assert.True(exit == 0, output);
        Assert.Equal("ddpm", (string?)s!["sampler"]);
        Assert.Equal(3, (int?)s["steps"]);
        (exit, output, s) = Sample(_withDefaults, "steps", "--steps", "2");
        Assert.True(exit == 0, output);
        Assert.Equal(("ddpm", 2), ((string?)s!["sampler"], (int?)s["steps"]));
        (exit, output, s) = Sample(_withDefaults, "other", "--scheduler", "ddim", "--steps", "4");
        Assert.True(exit == 0, output);
        Assert.Equal(("ddim", 4), ((string?)s!["sampler"], (int?)s["steps"]));
        // Without sampling_defaults: DDIM-50.
        (exit, output, s) = Sample(_adm.Config, "plain", "--timestep-respacing", "ddim2");
        Assert.True(exit == 0, output);
        Assert.Equal("ddim", (string?)s!["sampler"]);
    }

    [Fact]
    public void TheLibrarysDefaultOptionsFollowTheConfig_AndABadSchedulerIsNamed()
    {
        var cfg = PagSharp.Models.Adm.AdmConfig.FromJson(File.ReadAllText(_withDefaults), _withDefaults);
        Assert.Equal(("ddpm", 3), (cfg.SamplingDefaults!.Scheduler, cfg.SamplingDefaults.Steps));
        Assert.Equal(cfg with { SamplingDefaults = null }, cfg.WithoutRecommendations());
        using (var pipe = PagSharp.Pipelines.AdmPipeline.FromConfig(_withDefaults, _adm.Weights))
            Assert.Equal(("ddpm", 3), (pipe.DefaultOptions.Scheduler, pipe.DefaultOptions.Steps));
        using (var pipe = PagSharp.Pipelines.AdmPipeline.FromConfig(_adm.Config, _adm.Weights))
            Assert.Equal(("ddim", 50), (pipe.DefaultOptions.Scheduler, pipe.DefaultOptions.Steps));

        var bad = JsonNode.Parse(AdmA.ArgsJson())!.AsObject();
        bad["sampling_defaults"] = new JsonObject { ["scheduler"] = "heun", ["steps"] = 3 };
        string badPath = _adm.Dir.File("bad.json");
        File.WriteAllText(badPath, bad.ToJsonString());
        var (exit, output, _) = Sample(badPath, "bad");
        Assert.Equal(2, exit);
        Assert.Contains("heun", output);
    }
}

/// <summary>pag sample --guidance-model / --autoguidance-scale.</summary>
[Collection(CliCollection.Name)]
public sealed class AutoguidanceCliTests : IDisposable
{
    private readonly AdmACli _adm = new();
    public void Dispose() => _adm.Dispose();

    [Fact]
    public void TheModelItselfAsGuideGivesTheUnguidedSamples_AndTheRunRecordsIt()
    {
        string a = _adm.Dir.File("a"), b = _adm.Dir.File("b");
        string[] common = ["sample", "--config", _adm.Config, "--checkpoint", _adm.Weights, "--init-noise", _adm.InitNoise, "--steps", "3"];
        var (exit, output) = Pag.Run([.. common, "--output", a, "--save-tensor", a + ".npy"]);
        Assert.True(exit == 0, output);
        (exit, output) = Pag.Run([.. common, "--guidance-model", _adm.Weights, "--autoguidance-scale", "2", "--output", b, "--save-tensor", b + ".npy"]);
        Assert.True(exit == 0, output);
        using var x = PagSharp.IO.Npy.Load(a + ".npy");
        using var y = PagSharp.IO.Npy.Load(b + ".npy");
        PagSharp.Tests.Models.Close.Assert(x, y, 1e-5, "guide = model: no guidance");
        var run = JsonNode.Parse(File.ReadAllText(Path.Combine(b, "run.json")))!["settings"]!;
        Assert.Equal(2.0, (double?)run["autoguidance_scale"]!["scale"]);
        Assert.NotNull(run["guidance_model"]);
        (exit, output) = Pag.Run([.. common, "--autoguidance-scale", "2", "--output", _adm.Dir.File("c")]);
        Assert.Equal(2, exit);
        Assert.Contains("--guidance-model", output);
    }
}
