using PagSharp.IO;
using PagSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Metrics;

#pragma warning disable IDE1006 // field names are the checkpoint's state-dict keys

/// <summary>
/// The InceptionV3 variant that standard FID uses (pytorch-fid's <c>FIDInceptionA/C/E</c> blocks, a port of the
/// TensorFlow graph <c>inception-2015-12-05</c>): average pooling that ignores padding, max pooling in the last block,
/// and a 1008-class <c>fc</c>. Module names equal the state-dict keys of pytorch-fid's
/// <c>pt_inception-2015-12-05-6726825d.pth</c> (<c>Conv2d_1a_3x3.conv.weight</c>, <c>Mixed_5b.branch1x1.bn.running_mean</c>,
/// …, <c>fc.weight</c>), so that file loads strictly.
/// </summary>
/// <remarks>
/// Input: [B,3,H,W] in [-1, 1] with H, W ≥ 75 (299×299 for standard FID; <see cref="InceptionFeatureNetwork"/>
/// resizes). Output: the 2048-d global-average-pooled features ("pool3", the FID features) and the 1008 logits of
/// <c>fc</c> (softmax of these gives the Inception Score's class probabilities).
/// </remarks>
public sealed class InceptionV3 : Module<Tensor, Tensor>
{
    /// <summary>Input side of standard FID.</summary>
    public const int ImageSize = 299;

    /// <summary>Smallest input side the network accepts.</summary>
    public const int MinImageSize = 75;

    /// <summary>Pool3 feature dimension.</summary>
    public const int FeatureDim = 2048;

    /// <summary>Classes of <c>fc</c> (1000 ImageNet classes plus 8 unused, as in the TensorFlow graph).</summary>
    public const int NumClasses = 1008;

    private readonly BasicConv2d Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3;
    private readonly InceptionA Mixed_5b, Mixed_5c, Mixed_5d;
    private readonly InceptionB Mixed_6a;
    private readonly InceptionC Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e;
    private readonly InceptionD Mixed_7a;
    private readonly InceptionE Mixed_7b, Mixed_7c;
    private readonly Linear fc;

    /// <summary>A randomly initialised network in eval mode (BatchNorm at its defaults: identity statistics).</summary>
    public InceptionV3() : base(nameof(InceptionV3))
    {
        Conv2d_1a_3x3 = new BasicConv2d(3, 32, 3, stride: 2);
        Conv2d_2a_3x3 = new BasicConv2d(32, 32, 3);
        Conv2d_2b_3x3 = new BasicConv2d(32, 64, 3, padding: 1);
        Conv2d_3b_1x1 = new BasicConv2d(64, 80, 1);
        Conv2d_4a_3x3 = new BasicConv2d(80, 192, 3);
        Mixed_5b = new InceptionA(192, 32);
        Mixed_5c = new InceptionA(256, 64);
        Mixed_5d = new InceptionA(288, 64);
        Mixed_6a = new InceptionB(288);
        Mixed_6b = new InceptionC(768, 128);
        Mixed_6c = new InceptionC(768, 160);
        Mixed_6d = new InceptionC(768, 160);
        Mixed_6e = new InceptionC(768, 192);
        Mixed_7a = new InceptionD(768);
        Mixed_7b = new InceptionE(1280, maxPool: false);
        Mixed_7c = new InceptionE(2048, maxPool: true);
        fc = Linear(FeatureDim, NumClasses);
        RegisterComponents();
        eval();
    }

    /// <summary>Pool3 features [B,2048] of images [B,3,H,W] in [-1, 1] (H, W ≥ 75).</summary>
    public Tensor Features(Tensor x)
    {
        if (x.dim() != 4 || x.shape[1] != 3 || x.shape[2] < MinImageSize || x.shape[3] < MinImageSize)
            throw new PagSharpException($"InceptionV3 takes images [B,3,H,W] with H, W ≥ {MinImageSize}; got [{string.Join(",", x.shape)}]");
        using var scope = NewDisposeScope();
        var h = Conv2d_2b_3x3.forward(Conv2d_2a_3x3.forward(Conv2d_1a_3x3.forward(x)));
        h = functional.max_pool2d(h, 3, stride: 2);
        h = Conv2d_4a_3x3.forward(Conv2d_3b_1x1.forward(h));
        h = functional.max_pool2d(h, 3, stride: 2);
        foreach (var block in new Module<Tensor, Tensor>[] { Mixed_5b, Mixed_5c, Mixed_5d, Mixed_6a, Mixed_6b, Mixed_6c, Mixed_6d, Mixed_6e, Mixed_7a, Mixed_7b, Mixed_7c })
            h = block.forward(h);
        return functional.adaptive_avg_pool2d(h, [1, 1]).flatten(1).MoveToOuterDisposeScope();
    }

    /// <summary>The 1008 logits of pool3 features.</summary>
    public Tensor Head(Tensor features) => fc.forward(features);

    /// <summary>The 1008 logits of images [B,3,H,W] in [-1, 1].</summary>
    public override Tensor forward(Tensor x)
    {
        using var f = Features(x);
        return Head(f);
    }

    /// <summary>
    /// Loads weights strictly from pytorch-fid's <c>pt_inception-2015-12-05-*.pth</c> (a PyTorch zip checkpoint, read
    /// without executing pickled code) or a safetensors file with the same keys. BatchNorm's
    /// <c>num_batches_tracked</c> counters, which older checkpoints lack and inference never reads, are filled in
    /// when absent. A checkpoint in the legacy (pre-1.6) torch.save format is refused with a one-line Python
    /// conversion.
    /// </summary>
    public static InceptionV3 Load(string path)
    {
        if (!File.Exists(path)) throw new PagSharpException($"InceptionV3 weights '{path}' do not exist; download pytorch-fid's pt_inception-2015-12-05-6726825d.pth");
        var model = new InceptionV3();
        StateDictLoader.LoadFile(model, path, "Expected pytorch-fid's FID InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth).", weights =>
        {
            foreach (var (key, t) in model.state_dict())
                if (key.EndsWith(".num_batches_tracked", StringComparison.Ordinal) && !weights.ContainsKey(key))
                    weights[key] = zeros_like(t);
        });
        model.eval();
        return model;
    }
}
#pragma warning restore IDE1006

/// <summary>
/// InceptionV3 as the standard-FID feature network: images resized to 299×299 (bilinear, half-pixel centres, as
/// pytorch-fid), grayscale repeated to RGB, values in [-1, 1]; 2048-d pool3 features and 1008 logits.
/// </summary>
public sealed class InceptionFeatureNetwork(InceptionV3 model) : IFeatureNetwork
{
    /// <summary>The name stored in feature statistics.</summary>
    public const string Name = "inception-v3-fid/pool3-2048";

    /// <summary>The wrapped network.</summary>
    public InceptionV3 Model { get; } = model;

    /// <inheritdoc/>
    public string FeatureName => Name;
    /// <inheritdoc/>
    public int FeatureDim => InceptionV3.FeatureDim;
    /// <inheritdoc/>
    public int NumClasses => InceptionV3.NumClasses;
    /// <inheritdoc/>
    public int InputChannels => 3;
    /// <inheritdoc/>
    public int InputSize { get; init; } = InceptionV3.ImageSize;

    /// <inheritdoc/>
    public (Tensor Features, Tensor Logits) Forward(Tensor images)
    {
        var f = Model.Features(images);
        return (f, Model.Head(f));
    }

    /// <summary>Releases the network.</summary>
    public void Dispose() => Model.Dispose();
}
