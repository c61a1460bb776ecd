using PagSharp.Attention;
using PagSharp.Diffusion;
using PagSharp.Models.Adm;
using static TorchSharp.torch;

namespace PagSharp.Denoisers;

/// <summary>
/// guided-diffusion's U-Net (k-diffusion's <c>OpenAIDenoiser</c> idea) on the denoiser contract: ε, and for
/// learned-variance models the variance values (the second half of the output channels); class labels as the condition
/// and the null class (a model trained with label dropout) as the unconditional branch. Timesteps reach the network
/// as int64 when they are whole numbers (DDPM, DDIM) and as float32 otherwise (σ-based schedulers). A network held in
/// bfloat16 or float16 gets its input in that type; its output is handed back in the sample's type (float32).
/// </summary>
public sealed class AdmDenoiser : IDenoiserModel
{
    private readonly Tensor? _labels;
    private readonly ScalarType _dtype;
    private readonly Dictionary<(string Blocks, bool InferenceMode), Tensor?> _labelsFor = new();

    /// <param name="net">The network.</param>
    /// <param name="labels">Class labels [B] of the samples (for unconditional sampling from a class-conditional model,
    /// its null class); null for an unconditional model.</param>
    /// <param name="batchSize">Number of samples B (needed when <paramref name="labels"/> is null).</param>
    public AdmDenoiser(AdmUNet net, Tensor? labels, long? batchSize = null)
    {
        Net = net;
        if (net.IsClassConditional && labels is null)
            throw new PagSharpException($"this model is class-conditional: give labels (0..{net.Config.ResolvedNumClasses - 1})");
        if (!net.IsClassConditional && labels is not null)
            throw new PagSharpException("this model is unconditional: it takes no labels");
        if (labels is not null && (labels.dim() != 1 || labels.dtype != ScalarType.Int64))
            throw new PagSharpException($"labels must be an int64 vector [B] (got {labels.dtype} [{string.Join(",", labels.shape)}])");
        if (labels is not null && net.Config.ResolvedNumClasses is int nc && labels.numel() > 0)
        {
            long lo = labels.min().item<long>(), hi = labels.max().item<long>();
            if (lo < 0 || hi >= nc)
                throw new PagSharpException($"label {(lo < 0 ? lo : hi)} is out of range; valid labels are 0..{nc - 1}" + (net.Config.NullClass is int nul ? $" ({nul} = no class)" : ""));
        }
        _labels = labels;
        _dtype = net.parameters().First().dtype;
        BatchSize = labels?.shape[0] ?? batchSize ?? throw new PagSharpException("give the batch size of an unconditional model's samples");
    }

    public AdmUNet Net { get; }
    public IReadOnlyList<AttentionLayerInfo> AttentionLayers => Net.AttentionLayers;
    public long BatchSize { get; }

    public string? WhyNoUnconditional => Net.Config.NullClass is null
        ? "this model has no null class (a class-conditional model trained with label dropout has one; set null_class in its config)"
        : null;

    public ModelOutput Forward(Tensor x, StepContext step, IReadOnlyList<Branch> blocks, PerturbationPlan? plan)
    {
        long n = x.shape[0];
        using var t = step.Timestep == Math.Floor(step.Timestep)
            ? full(n, (long)step.Timestep, dtype: ScalarType.Int64, device: x.device)
            : full(n, step.Timestep, dtype: ScalarType.Float32, device: x.device);
        // A reduced-precision network (bfloat16, float16) computes in its own type; guidance and the scheduler stay float32.
        var o = Net.Forward(x.dtype == _dtype ? x : x.to_type(_dtype), t, LabelsFor(blocks), plan);
        if (o.dtype != x.dtype) o = o.to_type(x.dtype);
        if (!Net.Config.LearnSigma) return new ModelOutput(o, null);
        var parts = o.split(x.shape[1], 1);
        return new ModelOutput(parts[0], parts[1]);
    }

    /// <summary>The labels of a block layout, made on first use and kept (keyed on inference mode too, so labels made
    /// there never enter autograd later, as in DPS).</summary>
    private Tensor? LabelsFor(IReadOnlyList<Branch> blocks)
    {
        if (_labels is null) return null;
        var key = (string.Concat(blocks.Select(b => b == Branch.Conditional ? 'c' : 'u')), is_inference_mode_enabled());
        if (_labelsFor.TryGetValue(key, out var cached)) return cached;
        if (blocks.Contains(Branch.Unconditional) && WhyNoUnconditional is { } why)
            throw new PagSharpException($"an unconditional branch was asked for, but {why}");
        using var nullLabels = blocks.Contains(Branch.Unconditional)
            ? full(BatchSize, Net.Config.NullClass!.Value, dtype: ScalarType.Int64, device: _labels.device) : null;
        var parts = blocks.Select(b => b == Branch.Conditional ? _labels : nullLabels!).ToArray();
        var labels = (parts.Length == 1 ? parts[0].alias() : cat(parts, 0)).DetachFromDisposeScope();
        return _labelsFor[key] = labels;
    }
}
