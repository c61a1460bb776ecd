using System.Text.Json;
using PagSharp.Cli.Commands;

namespace PagSharp.Tests.Cli;

[Collection(CliCollection.Name)]
public sealed class BenchCommandTests
{
    [Theory]
    [InlineData("cfg+pag-mid")]
    [InlineData("pag-mid+seg-mid")]
    [InlineData("auto")]
    public void Child_PrintsSecondsPerStepAndPeakRss(string method)
    {
        // The child answers its parent on standard output, not through the console renderer.
        var stdout = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(stdout);
        int exit;
        string log;
        try { (exit, log) = Pag.Run("bench", "--child", "{\"Model\":\"mnist\",\"Batch\":2,\"Steps\":1,\"Method\":\"" + method + "\"}", "--runs", "1"); }
        finally { Console.SetOut(previous); }
        string output = stdout.ToString();
        Assert.True(exit == 0, log + output);
        var json = JsonDocument.Parse(output.Split('\n').Last(l => l.StartsWith('{'))).RootElement;
        Assert.True(json.GetProperty("sec_per_step").GetDouble() > 0, output);
        Assert.True(json.GetProperty("peak_mb").GetDouble() > 10, output);
    }

    [Fact]
    public void Child_UnknownMethod_Exits2()
    {
        var (exit, output) = Pag.Run("bench", "--child", "{\"Model\":\"mnist\",\"Batch\":1,\"Steps\":1,\"Method\":\"pag-everywhere\"}", "--runs", "1");
        Assert.True(exit == 2, output);
        Assert.Contains("pag-everywhere", output);
    }

    [Theory]
    [InlineData("VmHWM:\t  391000 kB", 391000)]
    [InlineData("VmHWM:\t11153012 kB", 11153012)]  // from 10 GB on /proc pads no more
    public void PeakRss_ReadsVmHwm(string line, long kb)
    {
        double mb = BenchCommand.PeakRssMb(new[] { "Name:\tpag", "VmPeak:\t 1 kB", line, "VmRSS:\t 1 kB" });
        Assert.Equal(kb / 1024.0, mb, 6);
        Assert.True(double.IsNaN(BenchCommand.PeakRssMb(new[] { "Name:\tpag" })));
    }
}

/// <summary>SDXL work ratios from the real structure on the meta device (runs alone: the default device is process-wide).</summary>
[Collection(MetaDeviceCollection.Name)]
public sealed class BenchSdxlTests
{
    [Fact]
    public void SdxlWorkRatios_ComeFromTheRealSdxlStructureWithoutAllocatingIt()
    {
        // The SDXL base UNet has 2,567,463,684 parameters (diffusers' unet of stable-diffusion-xl-base-1.0).
        using (var unet = SdBench.Create(SdBench.XlModel, structureOnly: true))
        {
            Assert.Equal(2_567_463_684L, unet.parameters().Sum(p => p.numel()));
            Assert.Equal(10, unet.AttentionLayers.Count(l => l.Group == "middle"));
        }
        string md = BenchCommand.XlWorkRatios();
        var ratios = md.Split('\n').Where(l => l.StartsWith("| ", StringComparison.Ordinal) && !l.StartsWith("| method", StringComparison.Ordinal))
            .ToDictionary(l => l.Split('|')[1].Trim(), l => l.Split('|').Skip(2).Take(3).Select(v => v.Trim()).ToArray());
        double Ratio(string m, int col) => double.Parse(ratios[m][col], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(2.0, Ratio("cfg", 1), 2);
        Assert.Equal(1.5, Ratio("naive-cfg+pag-mid", 2), 2); // three full branches
        Assert.InRange(Ratio("cfg+pag-mid", 2), 1.05, 1.49);   // the shared prefix saves work
    }
}
