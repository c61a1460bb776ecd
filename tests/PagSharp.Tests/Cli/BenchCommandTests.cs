using System.Globalization;
using System.Text.Json;
using PagSharp.Cli.Commands;
using PagSharp.Models;
using PagSharp.Models.Adm;
using PagSharp.Runtime;

namespace PagSharp.Tests.Cli;

[Collection(CliCollection.Name)]
public sealed class BenchCommandTests
{
    [Theory]
    [InlineData("cfg+pag-mid")]
    [InlineData("pag-mid+seg-mid")]
    [InlineData("auto")]
    [InlineData("slg-mid")]
    [InlineData("apg")]
    [InlineData("cfgzero")]
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

    /// <summary>Runs one benchmark child in process and returns its JSON answer (seconds per step or product, peak RSS, threads).</summary>
    private static JsonElement Child(BenchCommand.Case c, int runs)
    {
        var stdout = new StringWriter();
        var previous = Console.Out;
        Console.SetOut(stdout);
        int exit;
        string log;
        try { (exit, log) = Pag.Run("bench", "--child", JsonSerializer.Serialize(c), "--runs", runs.ToString(CultureInfo.InvariantCulture)); }
        finally { Console.SetOut(previous); }
        string output = stdout.ToString();
        Assert.True(exit == 0, log + output);
        return JsonDocument.Parse(output.Split('\n').Last(l => l.StartsWith('{'))).RootElement;
    }

    private static BenchCommand.Row RowOf(BenchCommand.Case c, JsonElement json, double macs) =>
        new(c, json.GetProperty("sec_per_step").GetDouble(), 0, json.GetProperty("peak_mb").GetDouble(), macs);

    /// <summary>The cells of a markdown table's row whose first cell is <paramref name="first"/>.</summary>
    private static string[] Cells(string md, string first, string? second = null) =>
        md.Split('\n').Where(l => l.StartsWith("| ", StringComparison.Ordinal))
            .Select(l => l.Split('|').Skip(1).SkipLast(1).Select(v => v.Trim()).ToArray())
            .Single(cells => cells[0] == first && (second is null || cells[1] == second));

    private static double Num(string cell) => double.Parse(cell.TrimEnd('%'), CultureInfo.InvariantCulture);

    [Fact]
    public void TinyRun_GemmPeakRowsHaveRss_AndEachRowsFractionIsItsMacsPerSecondOverItsTypesPeak()
    {
        // A tiny bench: the GEMM reference (64×64 products) in both types and two built-in-model rows, each child run as pag bench runs it.
        var gemm = BenchCommand.GemmTypes.SelectMany(t => GemmThroughput.Kernels.Select(k => new BenchCommand.Case(BenchCommand.Gemm, 64, 1, k, t))).ToList();
        var rows = new[] { new BenchCommand.Case("mnist", 2, 1, "none"), new BenchCommand.Case("mnist", 2, 1, "none", "bfloat16") };
        using var net = new AdmUNet(ModelStore.ResolveConfig(null, null));
        var bench = new BenchCommand.Results(
            gemm.Select(c => RowOf(c, Child(c, 3), 64.0 * 64 * 64)).ToList(),
            rows.Select(c => RowOf(c, Child(c, 1), BenchCommand.StepMacs(net, c))).ToList(),
            CpuInfo.Current(), new[] { TorchSharp.torch.get_num_threads() }, 1, 1);
        string md = BenchCommand.Report(bench);

        Assert.Contains("64×64 @ 64×64 matrix product, `GemmThroughput`)", md);
        Assert.Equal(4, bench.Gemm.Count);
        Assert.Contains("| method | s/step | spread | ÷ none | ÷ CFG | GMACs/step | MACs ÷ none | MACs ÷ CFG | time ÷ work | GMAC/s | ÷ GEMM | peak RSS (MB) |", md);
        foreach (var g in bench.Gemm)
        {
            var cells = Cells(md, g.Case.Dtype, g.Case.Method); // type | kernel | s/product | spread | GMAC/s | ÷ peak of the type | peak RSS
            Assert.True(Num(cells[6]) > 10, $"GEMM {g.Case.Dtype} {g.Case.Method} peak RSS {cells[6]} MB");
            Assert.Equal(Math.Round(g.PeakMb), Num(cells[6]));
            Assert.Equal(g.Macs / g.Sec / 1e9, Num(cells[4]), 0.051);
        }
        foreach (var r in bench.Rows)
        {
            var cells = Cells(md, BenchCommand.Label(r.Case));
            double peak = bench.Gemm.Where(g => g.Case.Dtype == r.Case.Dtype).Max(g => g.Macs / g.Sec); // the faster kernel of the row's own type
            Assert.Equal(r.Macs / r.Sec / 1e9, Num(cells[9]), 0.051);
            Assert.Equal(100 * r.Macs / r.Sec / peak, Num(cells[10]), 0.051);
            Assert.Equal(Math.Round(r.PeakMb), Num(cells[11]));
            Assert.True(Num(cells[11]) > 10, $"{r.Case} peak RSS {cells[11]} MB");
        }
        Assert.Contains("(bfloat16)", md);
    }

    [Fact]
    public void Report_FractionUsesThePeakOfTheRowsType_AndNamesTheCpu()
    {
        BenchCommand.Row Gemm(string t, string kernel, double sec) => new(new BenchCommand.Case(BenchCommand.Gemm, 1000, 1, kernel, t), sec, 0.1, 300, 1e9);
        var cpu = CpuInfo.Parse(new[] { "processor\t: 0", "model name\t: Test CPU 9000", "flags\t\t: fpu avx2 fma avx512f avx512_bf16 amx_tile amx_bf16" });
        var bench = new BenchCommand.Results(
            new[] { Gemm("float32", "mm", 0.04), Gemm("float32", "conv1x1", 0.02), Gemm("bfloat16", "mm", 0.005), Gemm("bfloat16", "conv1x1", 0.01) },  // peaks 50 and 200 GMAC/s
            new[]
            {
                new BenchCommand.Row(new BenchCommand.Case("mnist", 16, 5, "none"), 0.5, 0, 400, 5e9),              // 10 GMAC/s
                new BenchCommand.Row(new BenchCommand.Case("mnist", 16, 5, "none", "bfloat16"), 0.25, 0, 300, 5e9), // 20 GMAC/s
                new BenchCommand.Row(new BenchCommand.Case("mnist", 16, 5, "none", "float16"), 0.25, 0, 300, 5e9),  // no float16 peak
            },
            cpu, new[] { 2 }, 5, 3);
        string md = BenchCommand.Report(bench);
        Assert.Equal("20.0%", Cells(md, "none")[10]);
        Assert.Equal("10.0%", Cells(md, "none (bfloat16)")[10]);
        Assert.Equal("–", Cells(md, "none (float16)")[10]);
        Assert.Equal(new[] { "bfloat16", "conv1x1", "0.0100", "10%", "100.0", "0.50", "300" }, Cells(md, "bfloat16", "conv1x1"));
        Assert.Contains("## GEMM peak: float32 50.0 GMAC/s, bfloat16 200.0 GMAC/s (1000×1000 @ 1000×1000", md);
        Assert.Contains("Test CPU 9000 (avx2, fma, avx512f, avx512_bf16, amx_tile, amx_bf16)", md);
        Assert.Contains(bench.ConsoleSummary(), l => l.StartsWith("GEMM peak bfloat16: 200.0 GMAC/s", StringComparison.Ordinal));
        Assert.Contains(bench.ConsoleSummary(), l => l.EndsWith("10.0% of the bfloat16 GEMM peak", StringComparison.Ordinal));
    }

    [Fact]
    public void Report_RatiosAreAgainstTheSameType_TimeOverWorkIsTheirQuotient_AndHalfRowsSitBesideFloat32()
    {
        BenchCommand.Row Row(string method, string dtype, double sec, double rss, double macs) => new(new BenchCommand.Case("adm-256", 1, 1, method, dtype), sec, 0, rss, macs);
        var bench = new BenchCommand.Results(Array.Empty<BenchCommand.Row>(),
            new[]
            {
                Row("none", "float32", 6.0, 4000, 1e12),
                Row("pag-mid", "float32", 9.9, 5000, 1.5e12),      // time 1.65 for work 1.50: 1.10
                Row("none", "bfloat16", 3.0, 2600, 1e12),
                Row("pag-mid", "bfloat16", 4.2, 3000, 1.5e12),     // time 1.40 (against bfloat16's none) for work 1.50: 0.93
                Row("cfg", "bfloat16", 6.0, 3100, 2e12),           // no float32 cfg row: not in the comparison
            },
            CpuInfo.Parse(new[] { "model name\t: X" }), new[] { 2 }, 1, 1);
        string md = BenchCommand.Report(bench);
        var pag = Cells(md, "pag-mid");             // method s/step spread ÷none ÷CFG GMACs MACs÷none MACs÷CFG time÷work GMAC/s ÷GEMM RSS
        Assert.Equal(new[] { "1.65", "1.50", "1.10" }, new[] { pag[3], pag[6], pag[8] });
        var half = Cells(md, "pag-mid (bfloat16)");
        Assert.Equal(new[] { "1.40", "1.50", "0.93" }, new[] { half[3], half[6], half[8] });
        Assert.Equal("–", Cells(md, "none (bfloat16)")[8]);
        Assert.Contains("## Reduced precision against float32", md);
        // model | batch | method | type | float32 s/step | its s/step | speed-up | float32 RSS | its RSS | RSS ÷ float32
        string[] Pair(string method) => md.Split('\n').Where(l => l.StartsWith($"| adm-256 | 1 | {method} |", StringComparison.Ordinal))
            .Select(l => l.Split('|').Skip(1).SkipLast(1).Select(v => v.Trim()).ToArray()).Single();
        Assert.Equal(new[] { "adm-256", "1", "none", "bfloat16", "6.0000", "3.0000", "2.00", "4000", "2600", "0.65" }, Pair("none"));
        Assert.Equal(new[] { "adm-256", "1", "pag-mid", "bfloat16", "9.9000", "4.2000", "2.36", "5000", "3000", "0.60" }, Pair("pag-mid"));
        Assert.DoesNotContain("| adm-256 | 1 | cfg |", md);
    }

    [Fact]
    public void CpuInfo_ListsMatrixFeatures_AndSaysWhenThereIsNoAmx()
    {
        var cpu = CpuInfo.Parse(new[] { "model name\t: AMD EPYC", "flags\t\t: fpu avx avx2 fma avx512f avx512_vnni avx512_bf16 avx512vbmi", "model name\t: other" });
        Assert.Equal("AMD EPYC", cpu.ModelName);
        Assert.Equal(new[] { "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16" }, cpu.MatrixFeatures);
        Assert.Equal("AMD EPYC (avx2, fma, avx512f, avx512_vnni, avx512_bf16; no AMX)", cpu.ToString());
        Assert.Equal("?", CpuInfo.Parse(Array.Empty<string>()).ModelName);
    }

    [Fact]
    public void Splice_ReplacesOnlyTheGeneratedPart()
    {
        string first = BenchCommand.Splice("", "## Table\n\n| a |\n");
        Assert.StartsWith("# Performance\n\n" + BenchCommand.BeginMarker, first);
        string edited = "# Performance\n\nintro note\n\n" + first[first.IndexOf(BenchCommand.BeginMarker, StringComparison.Ordinal)..] + "\n## Notes by hand\n\nkept\n";
        string second = BenchCommand.Splice(edited, "## Table\n\n| b |\n");
        Assert.Contains("intro note", second);
        Assert.Contains("## Notes by hand\n\nkept\n", second);
        Assert.Contains("| b |", second);
        Assert.DoesNotContain("| a |", second);
        Assert.Equal(second, BenchCommand.Splice(second, "## Table\n\n| b |\n")); // idempotent
        // A report from before the markers: its text is kept after the new generated part, under its title.
        string old = BenchCommand.Splice("# Performance\n\nold generated text\n\n### Hand-written\n", "| c |\n");
        Assert.StartsWith("# Performance\n\n" + BenchCommand.BeginMarker, old);
        Assert.EndsWith(BenchCommand.EndMarker + "\n\nold generated text\n\n### Hand-written\n", old);
    }

    [Fact]
    public void GemmThroughput_CountsNCubedMultiplyAdds()
    {
        var g = GemmThroughput.Measure(TorchSharp.torch.ScalarType.Float32, 32, warmup: 0, repetitions: 4);
        var c = GemmThroughput.Measure(TorchSharp.torch.ScalarType.Float32, 32, warmup: 0, repetitions: 3, kernel: GemmThroughput.Conv1x1);
        Assert.Equal(4, g.Seconds.Count);
        Assert.Equal(3, c.Seconds.Count);
        Assert.Equal(32.0 * 32 * 32, g.Macs);
        Assert.Equal(g.Macs / g.MedianSeconds, g.MacsPerSecond);
        Assert.Equal(Math.Max(g.MacsPerSecond, c.MacsPerSecond), GemmThroughput.Peak(new[] { g, c }, TorchSharp.torch.ScalarType.Float32));
        Assert.Null(GemmThroughput.Peak(new[] { g, c }, TorchSharp.torch.ScalarType.BFloat16));
        Assert.Throws<PagSharpException>(() => GemmThroughput.Measure(TorchSharp.torch.ScalarType.Float32, 8, kernel: "gemv"));
        Assert.Equal(2.5, GemmThroughput.Median(new[] { 4.0, 1, 2, 3 }));
        Assert.Throws<PagSharpException>(() => GemmThroughput.Measure(TorchSharp.torch.ScalarType.Float32, 0));
    }

    [Fact]
    public void Child_UnknownMethod_Exits2()
    {
        var (exit, output) = Pag.Run("bench", "--child", "{\"Model\":\"mnist\",\"Batch\":1,\"Steps\":1,\"Method\":\"pag-everywhere\"}", "--runs", "1");
        Assert.True(exit == 2, output);
        Assert.Contains("pag-everywhere", output);
    }

    [Fact]
    public void Only_NamesModels_AndNeedsItsOwnReport()
    {
        Assert.Null(BenchCommand.ParseOnly(null));
        Assert.Equal(new[] { "mnist", "sdxl" }, BenchCommand.ParseOnly(" sdxl, mnist ")!.Order());
        var unknown = Assert.Throws<PagSharpException>(() => BenchCommand.ParseOnly("sdxl,sd-2.1"));
        Assert.Contains("'sd-2.1'", unknown.Message);
        Assert.Contains("mnist, adm-256, sd-1.5, sdxl, gemm", unknown.Message);
        Assert.Throws<PagSharpException>(() => BenchCommand.ParseOnly(" , "));

        // A partial run must not overwrite the full run's report: without --output it stops before timing anything.
        var (exit, output) = Pag.Run("bench", "--only", "mnist");
        Assert.True(exit != 0, output);
        Assert.Contains("--output", output);
        (exit, output) = Pag.Run("bench", "--only", "adm-256", "--quick", "--output", Path.Combine(Path.GetTempPath(), "never-written.md"));
        Assert.True(exit != 0, output);
        Assert.Contains("nothing to time", output);
        (exit, output) = Pag.Run("bench", "--only", "mnist", "--methods", "cfg,pag-mid");
        Assert.True(exit != 0, output);
        Assert.Contains("--output", output);
        (exit, output) = Pag.Run("bench", "--only", "sd-1.5", "--methods", "apg", "--output", Path.Combine(Path.GetTempPath(), "never-written.md"));
        Assert.True(exit != 0, output);
        Assert.Contains("no row 'apg'", output); // APG is timed on the built-in model only
        (exit, output) = Pag.Run("bench", "--xl-rounds", "0");
        Assert.True(exit != 0, output);
        Assert.Contains("--xl-rounds", output);
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
