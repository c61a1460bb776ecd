using PagSharp.Attention;
using PagSharp.Cli.Commands;
using PagSharp.Guidance;
using PagSharp.Models.Adm;

namespace PagSharp.Tests.Guidance;

/// <summary>How the CLI's guidance options map onto <see cref="GuidanceSettings"/> (no model is loaded).</summary>
public class GuidanceCliTests
{
    private static readonly IReadOnlyList<AttentionLayerInfo> Layers = new AdmUNet(TestModels.TinyConfig(false)).AttentionLayers;

    private static GuidanceSettings Build(SampleCommand.Settings s) => s.BuildGuidance(Layers);

    [Fact]
    public void MethodSag_BuildsSagSettingsWithOfficialDefaults()
    {
        var g = Build(new SampleCommand.Settings { Method = "sag", SagScale = 0.5 });
        var sag = Assert.IsType<SagSettings>(g.Sag);
        Assert.Equal(new ScaleSchedule.Constant(0.5), sag.Scale);
        Assert.Equal(SagFormula.Paper, sag.Formula);
        Assert.Equal(31, sag.KernelSize);
        Assert.Equal(9, sag.BlurSigma);
        Assert.Null(sag.Layer);
        Assert.False(g.UsesPag);

        var full = Build(new SampleCommand.Settings
        {
            Method = "sag", SagScaleOfficial = 1.5, SagLayer = "output_blocks.1.1", SagBlurSigma = 2, SagKernel = 7, SagInterval = "999:300",
            GuidanceScale = 3, GuidanceScaleEnd = 1, GuidanceInterval = "900:100",
        }).Sag!;
        Assert.Equal(SagFormula.Official, full.Formula);
        Assert.Equal(new ScaleSchedule.Constant(1.5), full.Scale);
        Assert.Equal("output_blocks.1.1", full.Layer);
        Assert.Equal((2.0, 7), (full.BlurSigma, full.KernelSize));
        Assert.Equal((999, 300), full.Interval);

        var ramp = Build(new SampleCommand.Settings { Method = "sag", SagScale = 1, SagScaleEnd = 0 }).Sag!;
        Assert.Equal(new ScaleSchedule.Linear(1, 0), ramp.Scale);
    }

    [Fact]
    public void CfgScheduleAndInterval()
    {
        var g = Build(new SampleCommand.Settings { GuidanceScale = 4, GuidanceScaleEnd = 2, GuidanceInterval = "800:200" });
        Assert.Equal(new ScaleSchedule.Linear(4, 2), g.GuidanceSchedule);
        Assert.Equal((800, 200), g.GuidanceInterval);
        Assert.Equal(4, g.GuidanceScale);
        var plain = Build(new SampleCommand.Settings { GuidanceScale = 4 });
        Assert.Null(plain.GuidanceSchedule);
        Assert.Null(plain.GuidanceInterval);
    }

    [Fact]
    public void PerturbationOption_UsesTheSpecParser()
    {
        var g = Build(new SampleCommand.Settings { PagScale = 2, Perturbation = "mask-nodiag:0.5" });
        Assert.Equal("mask-nodiag:0.5", g.Perturbation.Spec);
        Assert.Equal(new[] { "middle_block.1" }, g.PagLayers);
        Assert.Same(IdentityPerturbation.Instance, Build(new SampleCommand.Settings { PagScale = 2 }).Perturbation);
        var e = Assert.Throws<PagSharpException>(() => Build(new SampleCommand.Settings { PagScale = 2, Perturbation = "gaussian" }));
        Assert.Contains("blur:S", e.Message);
    }

    [Theory]
    [InlineData("sag-without-method", "--sag-* options need --method sag")]
    [InlineData("sag-no-scale", "--method sag needs a scale")]
    [InlineData("sag-and-pag", "cannot be combined")]
    [InlineData("bad-method", "valid: pag, sag")]
    [InlineData("two-layers", "must name exactly one attention layer")]
    [InlineData("both-scales", "not both")]
    [InlineData("bad-interval", "must be HI:LO")]
    [InlineData("official-ramp", "paper convention")]
    public void BadCombinations_AreRejected(string which, string expected)
    {
        var s = which switch
        {
            "sag-without-method" => new SampleCommand.Settings { SagScale = 0.5 },
            "sag-no-scale" => new SampleCommand.Settings { Method = "sag" },
            "sag-and-pag" => new SampleCommand.Settings { Method = "sag", SagScale = 0.5, PagScale = 1 },
            "bad-method" => new SampleCommand.Settings { Method = "cfg" },
            "two-layers" => new SampleCommand.Settings { Method = "sag", SagScale = 0.5, SagLayer = "output" },
            "both-scales" => new SampleCommand.Settings { Method = "sag", SagScale = 0.5, SagScaleOfficial = 1.5 },
            "bad-interval" => new SampleCommand.Settings { GuidanceScale = 2, GuidanceInterval = "late" },
            "official-ramp" => new SampleCommand.Settings { Method = "sag", SagScaleOfficial = 1.5, SagScaleEnd = 1 },
            _ => throw new ArgumentException(which),
        };
        var e = Assert.Throws<PagSharpException>(() => Build(s));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void CompareMethods_AcceptSagColumns()
    {
        var m = PagSharp.Cli.Methods.MethodTokens.Parse("none,sag:0.5,cfg:3+sag:0.25,pag:2");
        Assert.Equal(new[] { 0, 0.5, 0.25, 0 }, m.Select(x => x.Sag));
        Assert.Equal(new[] { 1, 1, 3.0, 1 }, m.Select(x => x.Cfg));
        Assert.Equal(new[] { 0, 0, 0, 2.0 }, m.Select(x => x.Pag));
        Assert.Contains("cannot be combined", Assert.Throws<PagSharpException>(() => PagSharp.Cli.Methods.MethodTokens.Parse("pag:1+sag:1")).Message);
        Assert.Contains("valid: none, pag, sag, seg, slg, cfg", Assert.Throws<PagSharpException>(() => PagSharp.Cli.Methods.MethodTokens.Parse("sega:1")).Message);

        // A column's override turns SAG on without --method sag, with the --sag-* options of the command line.
        var s = new CompareCommand.Settings { SagKernel = 5 };
        var g = s.BuildGuidance(Layers, null, m[2].Pag, m[2].Cfg, m[2].Sag);
        Assert.Equal(new ScaleSchedule.Constant(0.25), g.Sag!.Scale);
        Assert.Equal(5, g.Sag.KernelSize);
        Assert.Equal(3, g.GuidanceScale);
        Assert.Null(s.BuildGuidance(Layers, null, m[3].Pag, m[3].Cfg, m[3].Sag).Sag);
    }

    [Fact]
    public void SegAndSlgOptions_BuildTheirOwnBranches()
    {
        var g = Build(new SampleCommand.Settings { PagScale = 2, SegScale = 3, SegBlurSigma = "inf", SlgScale = 1.5, SlgLayers = "output", SlgStop = 0.4 });
        Assert.Equal(2, g.Perturbed.Count);
        var seg = g.Perturbed[0];
        Assert.Equal(("seg", "seg:inf"), (seg.Name, seg.Policy.Spec));
        Assert.Equal(new[] { "middle_block.1" }, seg.Layers);
        Assert.Null(seg.Steps);
        var slg = g.Perturbed[1];
        Assert.Same(SkipPerturbation.Instance, slg.Policy);
        Assert.Equal(LayerSpec.Resolve("output", Layers), slg.Layers);
        Assert.Equal((0.01, 0.4), slg.Steps);
        Assert.Equal(new ScaleSchedule.Constant(1.5), slg.Scale);
        Assert.Equal(10.0, ((SegPerturbation)Build(new SampleCommand.Settings { SegScale = 1 }).Perturbed[0].Policy).Sigma);
        Assert.Empty(Build(new SampleCommand.Settings { SegScale = 0 }).Perturbed);
        Assert.Contains("need --slg-scale", Assert.Throws<PagSharpException>(() => Build(new SampleCommand.Settings { SlgStart = 0.1 })).Message);
        Assert.Same(SkipPerturbation.Block, Build(new SampleCommand.Settings { SlgScale = 1, SlgSkip = "block" }).Perturbed[0].Policy);
        Assert.Contains("valid: attention, block, resblock", Assert.Throws<PagSharpException>(() => Build(new SampleCommand.Settings { SlgScale = 1, SlgSkip = "resnet" })).Message);
        Assert.Contains("'inf'", Assert.Throws<PagSharpException>(() => Build(new SampleCommand.Settings { SegScale = 1, SegBlurSigma = "-2" })).Message);
        Assert.Contains("matches no attention layer", Assert.Throws<PagSharpException>(() => Build(new SampleCommand.Settings { SegScale = 1, SegLayers = "@64" })).Message);
    }

    [Fact]
    public void SlgSkipResblock_BuildsTheResBlockPolicy_ForSampleAndTxt2Img()
    {
        var g = Build(new SampleCommand.Settings { SlgScale = 2, SlgSkip = "resblock", SlgLayers = "middle_block.1" });
        var slg = Assert.Single(g.Perturbed);
        Assert.Same(SkipPerturbation.ResBlock, slg.Policy);
        Assert.Equal(("slg", "skip-resblock"), (slg.Name, slg.Policy.Spec));
        Assert.Equal(new[] { "middle_block.1" }, slg.Layers);
        Assert.Same(SkipPerturbation.ResBlock, Build(new SampleCommand.Settings { SlgScale = 1, SlgSkip = " ResBlock " }).Perturbed[0].Policy);
        // run.json records the mode.
        var manifest = PagSharp.Runs.RunManifest.Guidance(g, Layers).ToDictionary(kv => kv.Key, kv => kv.Value);
        Assert.Equal("skip-resblock", (string?)manifest["slg"]!["perturbation"]);

        // pag txt2img / img2img / inpaint share the option (Txt2ImgSettings) and its parsing.
        var sdLayers = new PagSharp.Models.Sd.SdUNet(PagSharp.Tests.Sd.SdFixtures.UnetConfig()).AttentionLayers;
        var sd = new Txt2ImgSettings { SlgScale = 2, SlgSkip = "resblock" }.BuildGuidance(sdLayers);
        Assert.Same(SkipPerturbation.ResBlock, Assert.Single(sd.Perturbed).Policy);
        Assert.Contains("valid: attention, block, resblock", Assert.Throws<PagSharpException>(() =>
            new Txt2ImgSettings { SlgScale = 2, SlgSkip = "res-block" }.BuildGuidance(sdLayers)).Message);
    }
}
