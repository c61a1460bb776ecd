using PagSharp.Attention;

namespace PagSharp.Tests.Attention;

public class PerturbationSpecTests
{
    [Theory]
    [InlineData("identity", typeof(IdentityPerturbation), "identity")]
    [InlineData("mask:0.5", typeof(MaskPerturbation), "mask:0.5")]
    [InlineData("mask-nodiag:0.25", typeof(MaskPerturbation), "mask-nodiag:0.25")]
    [InlineData("noise:1.0", typeof(NoisePerturbation), "noise:1")]
    [InlineData("noise-logits:2", typeof(NoisePerturbation), "noise-logits:2")]
    [InlineData("blur:1.5", typeof(BlurPerturbation), "blur:1.5")]
    [InlineData(" soft:0.5 ", typeof(SoftPerturbation), "soft:0.5")]
    [InlineData("mask:1", typeof(MaskPerturbation), "mask:1")]
    [InlineData("soft:0", typeof(SoftPerturbation), "soft:0")]
    public void ParsesEveryForm(string spec, Type type, string canonical)
    {
        var p = PerturbationSpec.Parse(spec);
        Assert.IsType(type, p);
        Assert.Equal(canonical, p.Spec);
        Assert.Equal(canonical, PerturbationSpec.Parse(p.Spec).Spec);
    }

    [Fact]
    public void ParsedValuesReachThePolicies()
    {
        var m = Assert.IsType<MaskPerturbation>(PerturbationSpec.Parse("mask-nodiag:0.3"));
        Assert.Equal(0.3, m.DropRate);
        Assert.False(m.RetainDiagonal);
        Assert.True(Assert.IsType<MaskPerturbation>(PerturbationSpec.Parse("mask:0.3")).RetainDiagonal);
        Assert.Equal(NoiseTarget.Probabilities, Assert.IsType<NoisePerturbation>(PerturbationSpec.Parse("noise:1")).Target);
        Assert.Equal(NoiseTarget.Logits, Assert.IsType<NoisePerturbation>(PerturbationSpec.Parse("noise-logits:1")).Target);
        Assert.Equal(0.7, Assert.IsType<SoftPerturbation>(PerturbationSpec.Parse("soft:0.7")).Lambda);
        Assert.Equal(2.0, Assert.IsType<BlurPerturbation>(PerturbationSpec.Parse("blur:2")).Sigma);
    }

    [Theory]
    [InlineData("", "empty perturbation")]
    [InlineData("attention", "unknown perturbation 'attention'")]
    [InlineData("mask", "needs a value")]
    [InlineData("blur", "needs a value")]
    [InlineData("drop:0.5", "unknown perturbation 'drop'")]
    [InlineData("mask:abc", "'abc' is not a number")]
    [InlineData("mask:0,5", "is not a number")]
    [InlineData("noise:nan", "is not a number")]
    [InlineData("mask:1.5", "drop rate must be in [0, 1]")]
    [InlineData("mask-nodiag:-0.1", "drop rate must be in [0, 1]")]
    [InlineData("noise:-1", "noise σ must be")]
    [InlineData("blur:0", "blur σ must be")]
    [InlineData("soft:1.2", "soft λ must be in [0, 1]")]
    [InlineData("soft:-0.5", "soft λ must be in [0, 1]")]
    public void RejectsBadSpecs_ListingTheValidForms(string spec, string expected)
    {
        var e = Assert.Throws<PagSharpException>(() => PerturbationSpec.Parse(spec));
        Assert.Contains(expected, e.Message);
        foreach (var form in new[] { "identity", "mask:R", "mask-nodiag:R", "noise:S", "blur:S", "soft:L" })
            Assert.Contains(form, e.Message);
    }
}
