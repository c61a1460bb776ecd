using PagSharp.Pipelines;
using System.Text.Json;
using PagSharp.Diffusion;
using PagSharp.Sampling;
using PagSharp.Tests.Models;

namespace PagSharp.Tests.Diffusion;

/// <summary>
/// guided-diffusion's <c>space_timesteps</c>, with expected values derived by hand from its documented algorithm:
/// <c>ddimN</c> takes the first stride s ≥ 1 with len(range(0, T, s)) = N; otherwise T is cut into len(counts)
/// near-equal sections (the first T mod n one longer) and section i keeps round(k·(size−1)/(count−1)), k = 0..count−1,
/// with Python's round-half-to-even.
/// </summary>
public class RespacingTests
{
    [Fact]
    public void Ddim25_Of1000_IsStride40()
    {
        // len(range(0, 1000, s)) = ceil(1000 / s): 26 for s = 39, 25 first at s = 40.
        Assert.Equal(Enumerable.Range(0, 25).Select(k => 40 * k), Respacing.SpaceTimesteps(1000, "ddim25"));
    }

    [Fact]
    public void Ddim10_Of1000_IsStride100() =>
        Assert.Equal(new[] { 0, 100, 200, 300, 400, 500, 600, 700, 800, 900 }, Respacing.SpaceTimesteps(1000, "ddim10"));

    [Fact]
    public void ThreeSectionsOfTen_Of300()
    {
        // Sections [0,100), [100,200), [200,300); each: stride (100−1)/(10−1) = 11, so offsets 0, 11, …, 99.
        var expected = new[] { 0, 100, 200 }.SelectMany(start => Enumerable.Range(0, 10).Select(k => start + 11 * k));
        Assert.Equal(expected, Respacing.SpaceTimesteps(300, "10,10,10"));
    }

    [Fact]
    public void Fifty_Of1000()
    {
        // One section of 1000, stride 999/49: k·999/49 rounded. 49 is odd, so no value is a tie: nearest integer.
        var expected = Enumerable.Range(0, 50).Select(k => (2 * 999 * k + 49) / 98).ToArray();
        Assert.Equal(new[] { 0, 20, 41, 61, 82 }, expected[..5]);
        Assert.Equal(new[] { 489, 510 }, expected[24..26]);
        Assert.Equal(new[] { 979, 999 }, expected[^2..]);
        Assert.Equal(expected, Respacing.SpaceTimesteps(1000, "50"));
    }

    [Theory]
    // Uneven sections: 11 = 6 + 5. Section 0 (0..5): 2 steps, stride 5 → 0, 5. Section 1 (6..10): 3 steps, stride 2 → 6, 8, 10.
    [InlineData(11, "2,3", new[] { 0, 5, 6, 8, 10 })]
    // Ties round half to even: stride 2.5 → 0, round(2.5) = 2, 5.
    [InlineData(6, "3", new[] { 0, 2, 5 })]
    // stride 1.5 → 0, round(1.5) = 2, round(3.0) = 3.
    [InlineData(4, "3", new[] { 0, 2, 3 })]
    // A section of count 1 keeps only its first step.
    [InlineData(10, "5,1", new[] { 0, 1, 2, 3, 4, 5 })]
    [InlineData(7, "", new[] { 0, 1, 2, 3, 4, 5, 6 })]
    [InlineData(10, "ddim10", new[] { 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 })]
    // ceil(10/s) = 3 first at s = 4.
    [InlineData(10, "ddim3", new[] { 0, 4, 8 })]
    public void SmallCases(int steps, string spec, int[] expected) => Assert.Equal(expected, Respacing.SpaceTimesteps(steps, spec));

    [Theory]
    [InlineData(10, "ddim7")]  // ceil(10/s) is 10, 5, 4, 3, … never 7
    [InlineData(1000, "ddim1")] // guided-diffusion tries strides 1..T−1 only
    [InlineData(10, "ddim0")]
    [InlineData(10, "11")]
    [InlineData(10, "3,x")]
    [InlineData(10, "0")]
    public void InvalidSpecs_Throw(int steps, string spec)
    {
        var e = Assert.Throws<PagSharpException>(() => Respacing.SpaceTimesteps(steps, spec));
        Assert.Contains(spec, e.Message);
    }

    [Fact]
    public void FullChain_MatchesFixtureSchedule()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(AdmA.File("sampling.json")));
        var ac = doc.RootElement.GetProperty("schedule").GetProperty("respaced_alphas_cumprod_float64").EnumerateArray().Select(e => e.GetDouble()).ToArray();
        var full = GaussianDiffusion.Create("linear", 1000, "", VarianceType.LearnedRange);
        Assert.Equal(1000, full.NumSteps);
        Assert.Equal(Enumerable.Range(0, 1000), full.TimestepMap);
        Assert.Equal(1e-4, full.Betas[0], 15);
        Assert.Equal(0.02, full.Betas[999], 15);
        for (int i = 0; i < 10; i++)
            Assert.True(Math.Abs(ac[i] - full.AlphasCumprod[100 * i]) <= 1e-12, $"alphas_cumprod[{100 * i}]");
    }

    [Theory]
    [InlineData("ddim", 10, new[] { 0, 100, 200, 300, 400, 500, 600, 700, 800, 900 })]
    [InlineData("ddim", 25, null)]
    [InlineData("ddim", 1, new[] { 0 })]
    [InlineData("ddim", 1000, null)]
    [InlineData("ddpm", 50, null)]
    public void SamplingSteps_ResolveToAValidRespacing(string sampler, int steps, int[]? expected)
    {
        var o = new SamplingOptions { Scheduler = sampler, Steps = steps };
        var used = Respacing.SpaceTimesteps(1000, o.ResolvedRespacing(1000));
        Assert.Equal(steps, used.Length);
        if (expected is not null) Assert.Equal(expected, used);
        if (sampler == "ddim" && steps == 25) Assert.Equal(Respacing.SpaceTimesteps(1000, "ddim25"), used);
        if (sampler == "ddpm") Assert.Equal(Respacing.SpaceTimesteps(1000, "50"), used);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-3)]
    [InlineData(1001)]
    public void SamplingSteps_OutOfRange_Throw(int steps) =>
        Assert.Throws<PagSharpException>(() => new SamplingOptions { Steps = steps }.ResolvedRespacing(1000));
}
