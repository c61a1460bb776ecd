using PagSharp.IO;
using PagSharp.Tests.Models;

namespace PagSharp.Tests.Cli;

[Collection(CliCollection.Name)]
public sealed class LayersAndForwardTests : IDisposable
{
    private readonly AdmACli _adm = new();

    public void Dispose() => _adm.Dispose();

    /// <summary>--perturbation reaches the layers: seg:0 is the unperturbed pass, seg:inf the network with mean queries there.</summary>
    [Fact]
    public void Forward_TakesAPerturbationPolicy()
    {
        string Run(string policy)
        {
            string output = _adm.Dir.File("pol_" + policy.Replace(':', '_') + ".npy");
            var (exit, log) = Pag.Run("forward", "--config", _adm.Config, "--checkpoint", _adm.Weights, "--input", _adm.Cases + ":x",
                "--timesteps", "0,250,500,999", "--perturb", "middle_block.1", "--perturbation", policy, "--output", output);
            Assert.True(exit == 0, log);
            return output;
        }
        using var none = SafeTensors.LoadTensor(_adm.Cases, "out_none");
        using var seg0 = Npy.Load(Run("seg:0"));
        Close.Assert(none, seg0, 1e-4, "seg:0 = no perturbation");
        using var segInf = Npy.Load(Run("seg:inf"));
        using var pag = SafeTensors.LoadTensor(_adm.Cases, "out_pag_mid");
        Close.AssertDiffer(none, segInf, 1e-3, "seg:inf vs none");
        Close.AssertDiffer(pag, segInf, 1e-3, "seg:inf vs identity");
        var (bad, badLog) = Pag.Run("forward", "--config", _adm.Config, "--checkpoint", _adm.Weights, "--input", _adm.Cases + ":x",
            "--timesteps", "0", "--perturb", "middle_block.1", "--perturbation", "wobble:1", "--output", _adm.Dir.File("bad.npy"));
        Assert.Equal(2, bad);
        Assert.Contains("unknown perturbation", badLog);
    }

    /// <summary>--perturbation skip-resblock: the ResBlock before the layer outputs its skip connection (= the network with that ResBlock's residual branch zeroed).</summary>
    [Fact]
    public void Forward_SkipResblock_SkipsTheResBlockFeedingTheLayer()
    {
        string output = _adm.Dir.File("skip_resblock.npy");
        var (exit, log) = Pag.Run("forward", "--config", _adm.Config, "--checkpoint", _adm.Weights, "--input", _adm.Cases + ":x",
            "--timesteps", "0,250,500,999", "--perturb", "middle_block.1", "--perturbation", "skip-resblock", "--output", output);
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(output);
        using var _ = TorchSharp.torch.no_grad();
        using var net = AdmA.Load();
        foreach (var (name, p) in net.named_parameters())
            if (name.StartsWith("middle_block.0.out_layers.3.", StringComparison.Ordinal)) p.zero_();
        using var x = SafeTensors.LoadTensor(_adm.Cases, "x");
        using var t = TorchSharp.torch.tensor(new long[] { 0, 250, 500, 999 });
        using var expected = net.Forward(x, t);
        Close.Assert(expected, actual, 1e-4, "pag forward --perturbation skip-resblock vs middle_block.0 without its residual branch");
        using var none = SafeTensors.LoadTensor(_adm.Cases, "out_none");
        Close.AssertDiffer(none, actual, 1e-3, "skip-resblock vs none");
    }

    /// <summary>pag sample --slg-skip: resblock is accepted and recorded in run.json; a bad value lists the three modes.</summary>
    [Fact]
    public void Sample_SlgSkipResblock_IsAcceptedAndRecorded_ABadValueListsTheModes()
    {
        string[] Args(string skip, string dir) => ["sample", "--config", _adm.Config, "--checkpoint", _adm.Weights, "--count", "1", "--steps", "1",
            "--slg-scale", "1", "--slg-start", "0", "--slg-stop", "1", "--slg-skip", skip, "--output", dir];
        string bad = _adm.Dir.File("slg-bad");
        var (badExit, badLog) = Pag.Run(Args("resnet", bad));
        Assert.True(badExit == 2, badLog);
        Assert.Contains("valid: attention, block, resblock", badLog);
        string dir = _adm.Dir.File("slg-resblock");
        var (exit, log) = Pag.Run(Args("resblock", dir));
        Assert.True(exit == 0, log);
        var run = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "run.json")))!["settings"]!;
        Assert.Equal("skip-resblock", (string?)run["slg"]!["perturbation"]);
    }

    [Fact]
    public void Layers_ListsEveryAttentionBlock()
    {
        var (exit, output) = Pag.Run("layers", "--config", _adm.Config);
        Assert.True(exit == 0, output);
        foreach (var name in AdmA.StringArray("attention_blocks")) Assert.Contains(name, output);
        Assert.Contains("7 layers", output);
        Assert.Contains("16×16", output);
        Assert.Contains("8×8", output);
        // Each row ends with the PAG cost of that layer: multiply-adds of a PAG step ÷ an unguided step.
        using var net = new PagSharp.Models.Adm.AdmUNet(AdmA.Config());
        double none = PagSharp.Models.Adm.AdmCost.Forward(net, new PagSharp.Models.MacCall(1));
        foreach (var l in net.AttentionLayers)
        {
            string cost = (PagSharp.Models.Adm.AdmCost.Forward(net, PagSharp.Models.MacCall.GuidedStep(1, false, new[] { l.Name })) / none)
                .ToString("F2", System.Globalization.CultureInfo.InvariantCulture);
            string cfg = (PagSharp.Models.Adm.AdmCost.Forward(net, PagSharp.Models.MacCall.GuidedStep(1, true, new[] { l.Name })) / (2 * none))
                .ToString("F2", System.Globalization.CultureInfo.InvariantCulture);
            Assert.Contains(output.Split('\n'), line => line.Contains(l.Name + " ", StringComparison.Ordinal) && line.Contains(" " + cost + " ", StringComparison.Ordinal)
                                                       && line.Contains(" " + cfg + " ", StringComparison.Ordinal));
        }
    }

    [Fact]
    public void Layers_BadConfig_Exits2()
    {
        string bad = _adm.Dir.File("bad.json");
        File.WriteAllText(bad, "{\"image_size\": 32, \"num_chanels\": 32}");
        var (exit, output) = Pag.Run("layers", "--config", bad);
        Assert.True(exit == 2, output);
        Assert.Contains("num_chanels", output);
    }

    [Theory]
    [InlineData("middle_block.1", "out_pag_mid")]
    [InlineData("input_blocks.3.1", "out_pag_in")]
    [InlineData(null, "out_none")]
    public void Forward_MatchesCase(string? perturb, string key)
    {
        string output = _adm.Dir.File(key + ".npy");
        var args = new List<string>
        {
            "forward", "--config", _adm.Config, "--checkpoint", _adm.Weights, "--input", _adm.Cases + ":x",
            "--timesteps", "0,250,500,999", "--output", output,
        };
        if (perturb is not null) args.AddRange(new[] { "--perturb", perturb });
        var (exit, log) = Pag.Run(args.ToArray());
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(output);
        using var expected = SafeTensors.LoadTensor(_adm.Cases, key);
        Close.Assert(expected, actual, 1e-4, $"pag forward --perturb {perturb} vs {key}");
    }

    [Fact]
    public void Forward_WithPtCheckpointAndTensorTimesteps_MatchesCase()
    {
        string output = _adm.Dir.File("pt.npy");
        var (exit, log) = Pag.Run("forward", "--config", _adm.Config, "--checkpoint", AdmA.File("weights.pt"), "--input", _adm.Cases + ":x",
            "--timesteps", _adm.Cases + ":t", "--perturb", "all", "--output", output);
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(output);
        using var expected = SafeTensors.LoadTensor(_adm.Cases, "out_pag_all");
        Close.Assert(expected, actual, 1e-4, "pag forward --perturb all (weights.pt)");
    }

    [Theory]
    [InlineData("--perturb", "nope", "nope")]
    [InlineData("--perturb", "middle_block", "middle_block.1")]
    [InlineData("--timesteps", "0,250", "--timesteps")]
    [InlineData("--labels", "1,2,3,4", "unconditional")]
    public void Forward_BadInput_Exits2_AndWritesNothing(string option, string value, string messagePart)
    {
        string output = _adm.Dir.File("bad.npy");
        var args = new Dictionary<string, string>
        {
            ["--config"] = _adm.Config, ["--checkpoint"] = _adm.Weights, ["--input"] = _adm.Cases + ":x",
            ["--timesteps"] = "0,250,500,999", ["--output"] = output,
        };
        args[option] = value;
        var (exit, log) = Pag.Run(args.SelectMany(kv => new[] { kv.Key, kv.Value }).Prepend("forward").ToArray());
        Assert.True(exit == 2, log);
        Assert.Contains(messagePart, log);
        Assert.False(File.Exists(output));
    }
}
