using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Metrics;

#pragma warning disable IDE1006 // field names are the checkpoint's state-dict keys

/// <summary>Conv (no bias) → BatchNorm (ε = 0.001) → ReLU; keys <c>conv.weight</c> and <c>bn.*</c>.</summary>
internal sealed class BasicConv2d : Module<Tensor, Tensor>
{
    private readonly Conv2d conv;
    private readonly BatchNorm2d bn;

    public BasicConv2d(long inChannels, long outChannels, (long, long) kernel, (long, long)? stride = null, (long, long)? padding = null)
        : base(nameof(BasicConv2d))
    {
        conv = Conv2d(inChannels, outChannels, kernel, stride: stride ?? (1, 1), padding: padding ?? (0, 0), bias: false);
        bn = BatchNorm2d(outChannels, eps: 0.001);
        // PyTorch's defaults, set explicitly (TorchSharp leaves some normalisation parameters uninitialised).
        using (no_grad())
        {
            bn.weight!.fill_(1);
            bn.bias!.zero_();
            bn.running_mean!.zero_();
            bn.running_var!.fill_(1);
        }
        RegisterComponents();
    }

    public BasicConv2d(long inChannels, long outChannels, long kernel, long stride = 1, long padding = 0)
        : this(inChannels, outChannels, (kernel, kernel), (stride, stride), (padding, padding)) { }

    public override Tensor forward(Tensor x)
    {
        using var c = conv.forward(x);
        using var b = bn.forward(c);
        return functional.relu(b);
    }
}

/// <summary>Pooling helpers of the FID Inception blocks.</summary>
internal static class InceptionPool
{
    /// <summary>3×3 average pooling, stride 1, padding 1, padded cells not counted (the FID network's variant).</summary>
    public static Tensor Average(Tensor x) => functional.avg_pool2d(x, 3, stride: 1, padding: 1, count_include_pad: false);

    /// <summary>3×3 max pooling with stride 2, no padding.</summary>
    public static Tensor MaxStride2(Tensor x) => functional.max_pool2d(x, 3, stride: 2);
}

/// <summary>Inception-A (Mixed_5b/c/d): 1×1, 5×5, double 3×3 and pooled 1×1 branches.</summary>
internal sealed class InceptionA : Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch1x1, branch5x5_1, branch5x5_2, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3, branch_pool;

    public InceptionA(long inChannels, long poolFeatures) : base(nameof(InceptionA))
    {
        branch1x1 = new BasicConv2d(inChannels, 64, 1);
        branch5x5_1 = new BasicConv2d(inChannels, 48, 1);
        branch5x5_2 = new BasicConv2d(48, 64, 5, padding: 2);
        branch3x3dbl_1 = new BasicConv2d(inChannels, 64, 1);
        branch3x3dbl_2 = new BasicConv2d(64, 96, 3, padding: 1);
        branch3x3dbl_3 = new BasicConv2d(96, 96, 3, padding: 1);
        branch_pool = new BasicConv2d(inChannels, poolFeatures, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var b1 = branch1x1.forward(x);
        var b5 = branch5x5_2.forward(branch5x5_1.forward(x));
        var b3 = branch3x3dbl_3.forward(branch3x3dbl_2.forward(branch3x3dbl_1.forward(x)));
        var bp = branch_pool.forward(InceptionPool.Average(x));
        return cat([b1, b5, b3, bp], 1).MoveToOuterDisposeScope();
    }
}

/// <summary>Inception-B (Mixed_6a): grid reduction 35→17.</summary>
internal sealed class InceptionB : Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch3x3, branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3;

    public InceptionB(long inChannels) : base(nameof(InceptionB))
    {
        branch3x3 = new BasicConv2d(inChannels, 384, 3, stride: 2);
        branch3x3dbl_1 = new BasicConv2d(inChannels, 64, 1);
        branch3x3dbl_2 = new BasicConv2d(64, 96, 3, padding: 1);
        branch3x3dbl_3 = new BasicConv2d(96, 96, 3, stride: 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var b3 = branch3x3.forward(x);
        var bd = branch3x3dbl_3.forward(branch3x3dbl_2.forward(branch3x3dbl_1.forward(x)));
        var bp = InceptionPool.MaxStride2(x);
        return cat([b3, bd, bp], 1).MoveToOuterDisposeScope();
    }
}

/// <summary>Inception-C (Mixed_6b–6e): factorised 7×7 branches with <c>c7</c> channels.</summary>
internal sealed class InceptionC : Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch1x1, branch7x7_1, branch7x7_2, branch7x7_3,
        branch7x7dbl_1, branch7x7dbl_2, branch7x7dbl_3, branch7x7dbl_4, branch7x7dbl_5, branch_pool;

    public InceptionC(long inChannels, long c7) : base(nameof(InceptionC))
    {
        branch1x1 = new BasicConv2d(inChannels, 192, 1);
        branch7x7_1 = new BasicConv2d(inChannels, c7, 1);
        branch7x7_2 = new BasicConv2d(c7, c7, (1, 7), padding: (0, 3));
        branch7x7_3 = new BasicConv2d(c7, 192, (7, 1), padding: (3, 0));
        branch7x7dbl_1 = new BasicConv2d(inChannels, c7, 1);
        branch7x7dbl_2 = new BasicConv2d(c7, c7, (7, 1), padding: (3, 0));
        branch7x7dbl_3 = new BasicConv2d(c7, c7, (1, 7), padding: (0, 3));
        branch7x7dbl_4 = new BasicConv2d(c7, c7, (7, 1), padding: (3, 0));
        branch7x7dbl_5 = new BasicConv2d(c7, 192, (1, 7), padding: (0, 3));
        branch_pool = new BasicConv2d(inChannels, 192, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var b1 = branch1x1.forward(x);
        var b7 = branch7x7_3.forward(branch7x7_2.forward(branch7x7_1.forward(x)));
        var bd = branch7x7dbl_1.forward(x);
        bd = branch7x7dbl_5.forward(branch7x7dbl_4.forward(branch7x7dbl_3.forward(branch7x7dbl_2.forward(bd))));
        var bp = branch_pool.forward(InceptionPool.Average(x));
        return cat([b1, b7, bd, bp], 1).MoveToOuterDisposeScope();
    }
}

/// <summary>Inception-D (Mixed_7a): grid reduction 17→8.</summary>
internal sealed class InceptionD : Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch3x3_1, branch3x3_2, branch7x7x3_1, branch7x7x3_2, branch7x7x3_3, branch7x7x3_4;

    public InceptionD(long inChannels) : base(nameof(InceptionD))
    {
        branch3x3_1 = new BasicConv2d(inChannels, 192, 1);
        branch3x3_2 = new BasicConv2d(192, 320, 3, stride: 2);
        branch7x7x3_1 = new BasicConv2d(inChannels, 192, 1);
        branch7x7x3_2 = new BasicConv2d(192, 192, (1, 7), padding: (0, 3));
        branch7x7x3_3 = new BasicConv2d(192, 192, (7, 1), padding: (3, 0));
        branch7x7x3_4 = new BasicConv2d(192, 192, 3, stride: 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var b3 = branch3x3_2.forward(branch3x3_1.forward(x));
        var b7 = branch7x7x3_4.forward(branch7x7x3_3.forward(branch7x7x3_2.forward(branch7x7x3_1.forward(x))));
        var bp = InceptionPool.MaxStride2(x);
        return cat([b3, b7, bp], 1).MoveToOuterDisposeScope();
    }
}

/// <summary>
/// Inception-E (Mixed_7b, Mixed_7c): expanded 3×3 branches. The FID network pools with a 3×3 average that does not
/// count padding in Mixed_7b and with a 3×3 max pool (stride 1, padding 1) in Mixed_7c, as the TensorFlow graph did.
/// </summary>
internal sealed class InceptionE : Module<Tensor, Tensor>
{
    private readonly BasicConv2d branch1x1, branch3x3_1, branch3x3_2a, branch3x3_2b,
        branch3x3dbl_1, branch3x3dbl_2, branch3x3dbl_3a, branch3x3dbl_3b, branch_pool;
    private readonly bool _maxPool;

    public InceptionE(long inChannels, bool maxPool) : base(nameof(InceptionE))
    {
        _maxPool = maxPool;
        branch1x1 = new BasicConv2d(inChannels, 320, 1);
        branch3x3_1 = new BasicConv2d(inChannels, 384, 1);
        branch3x3_2a = new BasicConv2d(384, 384, (1, 3), padding: (0, 1));
        branch3x3_2b = new BasicConv2d(384, 384, (3, 1), padding: (1, 0));
        branch3x3dbl_1 = new BasicConv2d(inChannels, 448, 1);
        branch3x3dbl_2 = new BasicConv2d(448, 384, 3, padding: 1);
        branch3x3dbl_3a = new BasicConv2d(384, 384, (1, 3), padding: (0, 1));
        branch3x3dbl_3b = new BasicConv2d(384, 384, (3, 1), padding: (1, 0));
        branch_pool = new BasicConv2d(inChannels, 192, 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var b1 = branch1x1.forward(x);
        var b3 = branch3x3_1.forward(x);
        b3 = cat([branch3x3_2a.forward(b3), branch3x3_2b.forward(b3)], 1);
        var bd = branch3x3dbl_2.forward(branch3x3dbl_1.forward(x));
        bd = cat([branch3x3dbl_3a.forward(bd), branch3x3dbl_3b.forward(bd)], 1);
        var pooled = _maxPool ? functional.max_pool2d(x, 3, stride: 1, padding: 1) : InceptionPool.Average(x);
        var bp = branch_pool.forward(pooled);
        return cat([b1, b3, bd, bp], 1).MoveToOuterDisposeScope();
    }
}
#pragma warning restore IDE1006
