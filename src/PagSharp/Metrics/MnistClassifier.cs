using PagSharp.IO;
using PagSharp.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Metrics;

/// <summary>
/// The project's MNIST digit classifier, the feature network of the built-in benchmark: three 3×3 convolutions
/// (1→32→64→128 channels, each followed by ReLU and 2×2 max pooling: 32→16→8→4 pixels), a dense layer 2048→128 with
/// ReLU (the 128-d penultimate features used for FID and precision/recall) and a dense layer 128→10 (the logits
/// used for the Inception Score). Input: [B,1,32,32] in [-1, 1], as <see cref="Training.Datasets.MnistDataset"/>
/// gives. 356,234 parameters. Field names are the checkpoint keys.
/// </summary>
public sealed class MnistClassifier : Module<Tensor, Tensor>
{
    /// <summary>Input side in pixels.</summary>
    public const int ImageSize = 32;

    /// <summary>Penultimate feature dimension.</summary>
    public const int FeatureDim = 128;

    /// <summary>Number of classes.</summary>
    public const int NumClasses = 10;

    /// <summary>Folder of the committed weights, relative to the program (and to the repository root).</summary>
    public const string BuiltInFolder = "models/mnist-classifier";

#pragma warning disable IDE1006 // field names are checkpoint keys
    private readonly Conv2d conv1;
    private readonly Conv2d conv2;
    private readonly Conv2d conv3;
    private readonly Linear fc1;
    private readonly Linear fc2;
#pragma warning restore IDE1006

    /// <summary>A randomly initialised classifier (PyTorch's default initialisation, from torch's global generator).</summary>
    public MnistClassifier() : base(nameof(MnistClassifier))
    {
        conv1 = Conv2d(1, 32, 3, padding: 1);
        conv2 = Conv2d(32, 64, 3, padding: 1);
        conv3 = Conv2d(64, 128, 3, padding: 1);
        fc1 = Linear(128 * 4 * 4, FeatureDim);
        fc2 = Linear(FeatureDim, NumClasses);
        RegisterComponents();
    }

    /// <summary>
    /// Re-draws every parameter from <paramref name="generator"/> with PyTorch's default distribution for conv and
    /// linear layers, U(−1/√fan_in, 1/√fan_in), so that initialisation does not depend on torch's global generator
    /// (which other threads may draw from).
    /// </summary>
    public void Initialise(Generator generator)
    {
        using var _ = no_grad();
        foreach (var (layer, fanIn) in new (Module, long)[] { (conv1, 1 * 9), (conv2, 32 * 9), (conv3, 64 * 9), (fc1, 128 * 4 * 4), (fc2, FeatureDim) })
            foreach (var p in layer.parameters())
            {
                double bound = 1 / Math.Sqrt(fanIn);
                using var u = rand(p.shape, generator: generator);
                p.copy_(u * (2 * bound) - bound);
            }
    }

    /// <summary>Penultimate features [B,128] (after ReLU).</summary>
    public Tensor Features(Tensor x)
    {
        if (x.dim() != 4 || x.shape[1] != 1 || x.shape[2] != ImageSize || x.shape[3] != ImageSize)
            throw new PagSharpException($"the MNIST classifier takes images [B,1,{ImageSize},{ImageSize}]; got [{string.Join(",", x.shape)}]");
        using var scope = NewDisposeScope();
        var h = functional.max_pool2d(functional.relu(conv1.forward(x)), 2);
        h = functional.max_pool2d(functional.relu(conv2.forward(h)), 2);
        h = functional.max_pool2d(functional.relu(conv3.forward(h)), 2);
        return functional.relu(fc1.forward(h.flatten(1))).MoveToOuterDisposeScope();
    }

    /// <summary>Class logits [B,10] from penultimate features.</summary>
    public Tensor Head(Tensor features) => fc2.forward(features);

    /// <summary>Class logits [B,10].</summary>
    public override Tensor forward(Tensor x)
    {
        using var f = Features(x);
        return Head(f);
    }

    /// <summary>The committed weights: next to the program, else found by walking up from the working folder.</summary>
    /// <exception cref="PagSharpException">Not found.</exception>
    public static string BuiltInPath()
    {
        string name = Path.Combine(BuiltInFolder, Models.Adm.ModelStore.WeightsFile);
        foreach (string start in new[] { AppContext.BaseDirectory, Directory.GetCurrentDirectory() })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                string candidate = Path.Combine(dir.FullName, name);
                if (File.Exists(candidate)) return candidate;
            }
        throw new PagSharpException($"the MNIST classifier weights ({name}) were not found next to the program; train them (MnistClassifierTraining; pag train-classifier), or give the classifier file");
    }

    /// <summary>Loads weights strictly (names and shapes) from a .safetensors or PyTorch zip file; the model is in eval mode.</summary>
    public static MnistClassifier Load(string path)
    {
        var model = StateDictLoader.LoadFile(new MnistClassifier(), path, "Expected the weights of PagSharp's MNIST classifier (pag train-classifier).");
        model.eval();
        return model;
    }
}

/// <summary>The MNIST classifier as a feature network: 128-d penultimate features, 10 logits.</summary>
public sealed class MnistFeatureNetwork(MnistClassifier model) : IFeatureNetwork
{
    /// <summary>The name stored in feature statistics.</summary>
    public const string Name = "mnist-classifier/penultimate-128";

    /// <summary>The wrapped classifier.</summary>
    public MnistClassifier Model { get; } = model;

    /// <summary>The committed classifier.</summary>
    public static MnistFeatureNetwork LoadBuiltIn() => new(MnistClassifier.Load(MnistClassifier.BuiltInPath()));

    /// <inheritdoc/>
    public string FeatureName => Name;
    /// <inheritdoc/>
    public int FeatureDim => MnistClassifier.FeatureDim;
    /// <inheritdoc/>
    public int NumClasses => MnistClassifier.NumClasses;
    /// <inheritdoc/>
    public int InputChannels => 1;
    /// <inheritdoc/>
    public int InputSize => MnistClassifier.ImageSize;

    /// <inheritdoc/>
    public (Tensor Features, Tensor Logits) Forward(Tensor images)
    {
        var f = Model.Features(images);
        return (f, Model.Head(f));
    }

    /// <summary>Releases the model.</summary>
    public void Dispose() => Model.Dispose();
}
