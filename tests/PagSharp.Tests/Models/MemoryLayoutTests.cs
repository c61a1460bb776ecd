using PagSharp.Attention;
using PagSharp.Models;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Models;

public class MemoryLayoutTests
{
    [Fact]
    public void ChannelsLastKeepsShapeAndValues_ChangesStrides()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 3, 4, 5);
        var cl = MemoryLayout.ChannelsLast(x);
        Assert.Equal(x.shape, cl.shape);
        Assert.True(MemoryLayout.IsChannelsLast(cl));
        Assert.False(MemoryLayout.IsChannelsLast(x));
        Assert.Equal(new long[] { 60, 1, 15, 3 }, cl.stride());
        Assert.True((x == cl).all().item<bool>());
        var v = randn(3);
        Assert.Same(v, MemoryLayout.ChannelsLast(v));
    }

    /// <summary>Model A with channels-last weights and input gives the fixture outputs (unperturbed and PAG) within the parity bound.</summary>
    [Fact]
    public void ChannelsLastModelMatchesFixture()
    {
        var cases = AdmA.Tensors("cases.safetensors");
        try
        {
            using var net = AdmA.Load();
            MemoryLayout.ToChannelsLast(net);
            Assert.All(net.parameters().Where(p => p.dim() == 4 && p.shape[1] > 1), p => Assert.True(MemoryLayout.IsChannelsLast(p)));
            using var _ = no_grad();
            using var scope = NewDisposeScope();
            var x = MemoryLayout.ChannelsLast(cases["x"]);
            Close.Assert(cases["out_none"], net.Forward(x, cases["t"]), 1e-4, "channels-last out_none");
            var plan = PerturbationPlan.Perturb(new[] { "middle_block.1" }, IdentityPerturbation.Instance);
            Close.Assert(cases["out_pag_mid"], net.Forward(x, cases["t"], null, plan), 1e-4, "channels-last out_pag_mid");
        }
        finally
        {
            TensorAssert.DisposeAll(cases);
        }
    }
}
