using PagSharp.Attention;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Guidance;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;
using PagSharp.Runtime;
using PagSharp.Tests.IO;
using PagSharp.Tests.Models;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// How far a bfloat16 UNet moves Stable Diffusion's results from diffusers' float32 reference (fixtures README §5.2):
/// the tiny SD UNet's output and the final latents of 5-step DDIM runs without guidance, with CFG, PAG and both, and
/// the tiny SDXL pipeline's 5-step Euler runs with CFG, PAG and both (§12). The
/// deviation is max|reference − ours| ÷ max(1, max|reference|), printed per case (recorded in
/// <c>docs/results/bf16-quality.md</c>). float32 must stay at parity; bfloat16 must deviate measurably (so the
/// half path really ran) but stay within 5%.
/// </summary>
public sealed class ReducedPrecisionDeviationTests(ITestOutputHelper output)
{
    private static double Deviation(Tensor expected, Tensor actual)
    {
        using var scale = expected.abs().max();
        using var diff = (expected - actual.to_type(ScalarType.Float32)).abs().max();
        return diff.item<float>() / Math.Max(1.0, scale.item<float>());
    }

    /// <summary>Prints both deviations; float32 must be at parity, bfloat16 measurably off (the half path ran) but within 5%.</summary>
    private void Check(string what, Dictionary<ScalarType, double> deviation)
    {
        double full = deviation[ScalarType.Float32], half = deviation[ScalarType.BFloat16];
        output.WriteLine($"{what}: float32 {full:E2}, bfloat16 {half:E2}");
        Assert.True(full <= 1e-4, $"{what}: float32 {full:E2}");
        Assert.InRange(half, 10 * Math.Max(full, 1e-7), 5e-2);
    }

    private static SdUNet Unet(ScalarType type) => ComputeType.Apply(SdFixtures.LoadUnet(), type);

    [Fact]
    public void UnetOutput_Float32AtParity_Bfloat16WithinFivePercent()
    {
        var cases = SdFixtures.Tensors(SdFixtures.Unet("cases.safetensors"));
        var deviation = new Dictionary<ScalarType, double>();
        try
        {
            using var t = cases["t"].reshape(Array.Empty<long>());
            using var _ = no_grad();
            foreach (var type in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                using var unet = Unet(type);
                using var o = unet.Forward(cases["x"].to_type(type), t, cases["encoder_hidden_states"].to_type(type));
                deviation[type] = Deviation(cases["out_none"], o);
            }
        }
        finally { TensorAssert.DisposeAll(cases); }
        Check("UNet output", deviation);
    }

    public static TheoryData<string, double, double> Runs => new()
    {
        { "final_none", 1, 0 },
        { "final_cfg5", 5, 0 },
        { "final_pag3_mid", 1, 3 },
        { "final_cfg5_pag3_mid", 5, 3 },
    };

    [Theory]
    [MemberData(nameof(Runs))]
    public void PipelineFinalLatents_Float32AtParity_Bfloat16WithinFivePercent(string key, double g, double s)
    {
        var f = SdFixtures.Tensors(SdFixtures.Unet("sampling.safetensors"));
        var deviation = new Dictionary<ScalarType, double>();
        try
        {
            foreach (var type in new[] { ScalarType.Float32, ScalarType.BFloat16 })
            {
                using var unet = Unet(type);
                var guidance = new GuidanceSettings
                {
                    GuidanceScale = g, PagScale = SdFixtures.Pag(s),
                    PagLayers = DiffusersLayerSpec.Resolve("mid", unet.AttentionLayers),
                };
                using var final = StableDiffusionPipeline.Denoise(unet, new DdimScheduler(SdPipelineParityTests.FixtureScheduler(), 5), f["latents_T"],
                    f["prompt_embeds"], f["negative_prompt_embeds"], guidance);
                Assert.Equal(ScalarType.Float32, final.dtype); // the sampler's arithmetic stays float32
                deviation[type] = Deviation(f[key], final);
            }
        }
        finally { TensorAssert.DisposeAll(f); }
        Check(key, deviation);
    }

    [Theory]
    [InlineData("t2i_euler_cfg5", 5, 0)]
    [InlineData("t2i_euler_pag3_mid", 1, 3)]
    [InlineData("t2i_euler_cfg5_pag3_mid", 5, 3)]
    public void SdxlFinalLatents_Float32AtParity_Bfloat16WithinFivePercent(string run, double g, double s)
    {
        var deviation = new Dictionary<ScalarType, double>();
        foreach (var type in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            using var sd = SdxlParityTests.Load();
            ComputeType.Apply(sd.Unet, type);
            using var latents = SdxlParityTests.Txt2Img(sd, "euler", SdxlParityTests.Guidance(g, s, "mid", sd.Unet.AttentionLayers));
            Assert.Equal(ScalarType.Float32, latents.dtype);
            deviation[type] = Deviation(SdxlParityTests.Get(run + ".final"), latents);
        }
        Check("SDXL " + run, deviation);
    }
}
