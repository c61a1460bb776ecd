using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using PagSharp.Diffusion;
using PagSharp.IO;
using PagSharp.Models;
using PagSharp.Models.Adm;
using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Training;

/// <summary>
/// Trains an <see cref="AdmUNet"/> with the improved-DDPM hybrid objective, AdamW, EMA, gradient clipping, uniform
/// timesteps and label dropout to a null class. All randomness of step k comes from a generator seeded by
/// (seed, k), so a run resumed from a checkpoint continues exactly as an uninterrupted run would.
/// </summary>
public sealed class Trainer : IDisposable
{
    public const string CheckpointName = "checkpoint.safetensors";

    private readonly TrainOptions _o;
    private readonly Tensor _images;
    private readonly Tensor? _labels;
    private readonly GaussianDiffusion _diffusion;
    private readonly (string Name, Tensor Param)[] _params;
    /// <summary>With <see cref="TrainOptions.Precision"/> bfloat16: the bfloat16 working copy that runs forward and backward.</summary>
    private readonly AdmUNet? _work;
    private readonly (Tensor Master, Tensor Work)[] _workPairs = [];

    public AdmUNet Model { get; }
    public AdamW Optimizer { get; }
    public Ema Ema { get; }
    public long Step { get; private set; }
    /// <summary>Wall-clock seconds spent in <see cref="Run"/> over the whole run, across resumes.</summary>
    public double TrainSeconds { get; private set; }
    /// <summary>(step, mean loss) every <see cref="LossLogEvery"/> steps.</summary>
    public List<(long Step, double Loss, double Mse, double Vb)> LossHistory { get; } = new();
    public const int LossLogEvery = 50;
    private double _accLoss, _accMse, _accVb;
    private int _accN;

    /// <param name="options">Run settings.</param>
    /// <param name="images">Training images [N,C,H,W] in [−1,1].</param>
    /// <param name="labels">Class labels [N] (int64) or null for unconditional data.</param>
    public Trainer(TrainOptions options, Tensor images, Tensor? labels)
    {
        options.Validate();
        var cfg = options.Model;
        if (images.dim() != 4 || images.shape[1] != cfg.InChannels || images.shape[2] != cfg.ImageSize || images.shape[3] != cfg.ImageSize)
            throw new PagSharpException($"training images have shape [{string.Join(",", images.shape)}]; the model expects [N,{cfg.InChannels},{cfg.ImageSize},{cfg.ImageSize}]");
        if (cfg.ResolvedNumClasses is int nc)
        {
            if (labels is null) throw new PagSharpException("a class-conditional model needs labelled data");
            long max = labels.max().item<long>();
            if (cfg.NullClass is null) throw new PagSharpException("training a class-conditional model needs null_class in the config (for label dropout)");
            if (max >= nc || max == cfg.NullClass) throw new PagSharpException($"labels reach {max}, but the model has {nc} classes with null class {cfg.NullClass}");
        }
        _o = options;
        _images = images;
        _labels = cfg.ResolvedNumClasses is null ? null : labels;
        _diffusion = GaussianDiffusion.Create(cfg.NoiseSchedule, cfg.DiffusionSteps, "", cfg.LearnSigma ? VarianceType.LearnedRange : VarianceType.FixedSmall);
        torch.manual_seed(options.Seed);
        Model = new AdmUNet(cfg);
        _params = Model.named_parameters().Select(p => (p.name, (Tensor)p.parameter)).ToArray();
        Optimizer = new AdamW(_params, options.LearningRate) { WeightDecay = options.WeightDecay };
        Ema = new Ema(_params, options.EmaRate);
        if (options.ComputeDtype != ScalarType.Float32)
        {
            // Mixed precision without autocast: float32 master weights (optimizer, EMA, checkpoints), a low-precision
            // copy refreshed from them before every forward; its gradients are up-cast into the masters' .grad.
            _work = new AdmUNet(cfg);
            _work.to(options.ComputeDtype);
            var work = _work.named_parameters().ToDictionary(p => p.name, p => (Tensor)p.parameter);
            _workPairs = _params.Select(p => (p.Param, work[p.Name])).ToArray();
        }
    }

    /// <summary>
    /// Starts training from existing weights (e.g. the previous built-in model): the model and its EMA both take them;
    /// the optimizer starts fresh. Strict name + shape match.
    /// </summary>
    public void InitializeFrom(IReadOnlyDictionary<string, Tensor> weights, string source)
    {
        if (Step != 0) throw new PagSharpException($"weights can only be loaded into a new run (this one is at step {Step})");
        StateDictLoader.LoadStrict(Model, weights, source);
        using (no_grad())
            foreach (var (n, p) in _params) Ema.Shadow[n].copy_(p);
    }

    /// <summary>One optimiser step on a random batch drawn from the step's seed; returns (loss, mse, vb).</summary>
    public (double Loss, double Mse, double Vb) TrainStep()
    {
        long step = Step + 1;
        using var scope = NewDisposeScope();
        // Batch, labels, timesteps and noise come from a generator of (seed, step) alone, so a resumed run repeats
        // them exactly (and other users of the global generator cannot interfere). Dropout uses the global one.
        ulong stepSeed = unchecked((ulong)(_o.Seed * 1_000_003 + step));
        torch.manual_seed((long)stepSeed);
        using var g = new Generator(stepSeed);
        long n = _images.shape[0], b = _o.BatchSize;
        var idx = randint(0, n, new[] { b }, dtype: ScalarType.Int64, generator: g);
        var x0 = _images.index_select(0, idx);
        Tensor? y = null;
        if (_labels is not null)
        {
            y = _labels.index_select(0, idx);
            var drop = rand(new[] { b }, generator: g) < _o.LabelDropProb;
            y = where(drop, full_like(y, _o.Model.NullClass!.Value), y);
        }
        var t = randint(0, _diffusion.NumSteps, new[] { b }, dtype: ScalarType.Int64, generator: g);
        var noise = randn(x0.shape, generator: g);
        return TrainOn(x0, y, t, noise);
    }

    /// <summary>The hybrid loss (mean over the batch) and its terms for a given batch, timesteps and noise.</summary>
    public (Tensor Loss, Tensor Mse, Tensor Vb) ComputeLoss(Tensor x0, Tensor? y, Tensor t, Tensor noise)
    {
        var xt = _diffusion.QSample(x0, t, noise);
        ModelOutput output;
        if (_work is null) output = Split(Model.Forward(xt, t, y, null), xt.shape[1]);
        else
        {
            using (no_grad())
                foreach (var (master, work) in _workPairs) work.copy_(master);
            var low = Split(_work.Forward(xt.to_type(_o.ComputeDtype), t, y, null), xt.shape[1]);
            // The loss (and the diffusion arithmetic inside it) stays in float32.
            output = new ModelOutput(low.Output.to_type(ScalarType.Float32), low.VarValues?.to_type(ScalarType.Float32));
        }
        var (mse, vb) = Losses.Hybrid(_diffusion, x0, xt, t, noise, output.Output, output.VarValues);
        return ((mse + _o.VlbWeight * (_diffusion.NumSteps / 1000.0) * vb).mean(), mse.mean(), vb.mean());
    }

    /// <summary>ε, and the variance values of a learned-variance model (the second half of the channels).</summary>
    private ModelOutput Split(Tensor o, long channels)
    {
        if (!_o.Model.LearnSigma) return new ModelOutput(o, null);
        var parts = o.split(channels, 1);
        return new ModelOutput(parts[0], parts[1]);
    }

    /// <summary>One optimiser step (clip, AdamW, EMA) on the given batch.</summary>
    public (double Loss, double Mse, double Vb) TrainOn(Tensor x0, Tensor? y, Tensor t, Tensor noise)
    {
        using var scope = NewDisposeScope();
        Model.train();
        _work?.train();
        var (loss, mse, vb) = ComputeLoss(x0, y, t, noise);
        Optimizer.ZeroGrad();
        foreach (var (_, work) in _workPairs) work.grad?.zero_();
        loss.backward();
        foreach (var (master, work) in _workPairs)
        {
            if (work.grad is not { } g) continue;
            if (master.grad is null) master.grad = g.to_type(ScalarType.Float32).DetachFromDisposeScope();
            else master.grad.copy_(g);
        }
        Optimizer.ClipGradNorm(_o.GradClip);
        Optimizer.StepUpdate();
        Ema.Update(_params);
        Step++;

        double l = loss.item<float>(), m = mse.item<float>(), v = vb.item<float>();
        _accLoss += l; _accMse += m; _accVb += v; _accN++;
        if (Step % LossLogEvery == 0)
        {
            LossHistory.Add((Step, _accLoss / _accN, _accMse / _accN, _accVb / _accN));
            _accLoss = _accMse = _accVb = 0; _accN = 0;
        }
        return (l, m, v);
    }

    /// <summary>Runs until <see cref="TrainOptions.Steps"/> or cancellation, checkpointing every N steps and at the end.</summary>
    public void Run(string outputDir, IProgress<TrainProgress>? progress, Action<Trainer>? onSample, CancellationToken cancellation)
    {
        var sw = Stopwatch.StartNew();
        long startStep = Step;
        double before = TrainSeconds;
        while (Step < _o.Steps && !cancellation.IsCancellationRequested)
        {
            var (l, m, v) = TrainStep();
            TrainSeconds = before + sw.Elapsed.TotalSeconds;
            double rate = (Step - startStep) / Math.Max(sw.Elapsed.TotalSeconds, 1e-9);
            progress?.Report(new TrainProgress(Step, _o.Steps, l, m, v, rate));
            if (_o.SnapshotSteps.Contains(Step)) SaveSnapshot(outputDir);
            if (Step % _o.CheckpointEvery == 0) SaveCheckpoint(outputDir);
            if (onSample is not null && Step % _o.SampleEvery == 0) onSample(this);
        }
        SaveCheckpoint(outputDir);
    }

    /// <summary>Folder (inside a run folder) of the EMA snapshots taken at <see cref="TrainOptions.SnapshotSteps"/>.</summary>
    public const string SnapshotFolder = "snapshots";

    /// <summary>Path of the EMA snapshot of <paramref name="step"/> in run folder <paramref name="dir"/>.</summary>
    public static string SnapshotPath(string dir, long step) => Path.Combine(dir, SnapshotFolder, $"ema_step_{step:D7}.safetensors");

    /// <summary>Writes the current EMA weights atomically to <see cref="SnapshotPath"/>.</summary>
    public void SaveSnapshot(string dir)
    {
        Directory.CreateDirectory(Path.Combine(dir, SnapshotFolder));
        SafeTensors.Save(SnapshotPath(dir, Step), Ema.Shadow, new Dictionary<string, string>
        {
            ["step"] = Step.ToString(CultureInfo.InvariantCulture),
            ["config"] = _o.Model.ToJson(),
        });
    }

    /// <summary>Writes model, EMA, optimizer state, step and loss history atomically to <c>checkpoint.safetensors</c>.</summary>
    public void SaveCheckpoint(string dir)
    {
        var tensors = new List<KeyValuePair<string, Tensor>>();
        foreach (var (n, p) in _params) tensors.Add(new("model." + n, p.detach()));
        foreach (var (n, p) in Ema.Shadow) tensors.Add(new("ema." + n, p));
        foreach (var (n, p) in Optimizer.ExpAvg) tensors.Add(new("adam_m." + n, p));
        foreach (var (n, p) in Optimizer.ExpAvgSq) tensors.Add(new("adam_v." + n, p));
        var meta = new Dictionary<string, string>
        {
            ["step"] = Step.ToString(CultureInfo.InvariantCulture),
            ["adam_step"] = Optimizer.Step.ToString(CultureInfo.InvariantCulture),
            ["train_seconds"] = TrainSeconds.ToString("R", CultureInfo.InvariantCulture),
            ["config"] = _o.Model.ToJson(),
            ["options"] = JsonSerializer.Serialize(_o),
            ["loss_history"] = JsonSerializer.Serialize(LossHistory.Select(h => new[] { h.Step, h.Loss, h.Mse, h.Vb })),
            ["loss_acc"] = JsonSerializer.Serialize(new[] { _accLoss, _accMse, _accVb, _accN }),
        };
        Directory.CreateDirectory(dir);
        SafeTensors.Save(Path.Combine(dir, CheckpointName), tensors, meta);
    }

    /// <summary>The model config a checkpoint was trained with.</summary>
    public static AdmConfig ConfigOf(string checkpointPath) =>
        AdmConfig.FromJson(SafeTensors.ReadMetadata(checkpointPath)["config"], checkpointPath);

    /// <summary>Restores a checkpoint written by <see cref="SaveCheckpoint"/> (its config must equal this run's).</summary>
    public void LoadCheckpoint(string dir)
    {
        string path = Path.Combine(dir, CheckpointName);
        var meta = SafeTensors.ReadMetadata(path);
        var saved = AdmConfig.FromJson(meta["config"], path);
        if (saved.WithoutRecommendations() != _o.Model.WithoutRecommendations())
            throw new PagSharpException($"{path} was trained with a different model config; resume with the same config or start a new output folder.\n saved: {saved.ToJson()}\n now: {_o.Model.ToJson()}");
        if (meta.TryGetValue("options", out var optJson))
        {
            // A resumed run must continue the same optimisation; only its length and the I/O intervals may change.
            using var doc = JsonDocument.Parse(optJson);
            var was = doc.RootElement;
            var diffs = new List<string>();
            void Same(string name, object now)
            {
                string nowText = Convert.ToString(now, CultureInfo.InvariantCulture)!;
                string? wasText = was.TryGetProperty(name, out var v) ? v.ValueKind == JsonValueKind.String ? v.GetString() : v.GetRawText() : null;
                if (wasText is null && name == nameof(TrainOptions.Precision)) wasText = "float32"; // runs before the option
                if (wasText is not null && now is double d && double.TryParse(wasText, CultureInfo.InvariantCulture, out double w) && w == d) return;
                if (wasText != nowText) diffs.Add($"{name} {wasText ?? "(absent)"} (now {nowText})");
            }
            Same(nameof(TrainOptions.BatchSize), _o.BatchSize);
            Same(nameof(TrainOptions.LearningRate), _o.LearningRate);
            Same(nameof(TrainOptions.WeightDecay), _o.WeightDecay);
            Same(nameof(TrainOptions.EmaRate), _o.EmaRate);
            Same(nameof(TrainOptions.GradClip), _o.GradClip);
            Same(nameof(TrainOptions.LabelDropProb), _o.LabelDropProb);
            Same(nameof(TrainOptions.VlbWeight), _o.VlbWeight);
            Same(nameof(TrainOptions.Seed), _o.Seed);
            Same(nameof(TrainOptions.Precision), _o.Precision);
            if (diffs.Count > 0)
                throw new PagSharpException($"{path} was trained with different settings: {string.Join("; ", diffs)}. Resume with the run's settings or start a new output folder.");
        }
        var all = SafeTensors.Load(path);
        Dictionary<string, Tensor> Part(string prefix) => all.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value);
        StateDictLoader.LoadStrict(Model, Part("model."), path);
        using (no_grad())
        {
            foreach (var (prefix, target) in new[] { ("ema.", Ema.Shadow), ("adam_m.", Optimizer.ExpAvg), ("adam_v.", Optimizer.ExpAvgSq) })
            {
                var part = Part(prefix);
                foreach (var (n, t) in target)
                    target[n].copy_(part.TryGetValue(n, out var v) ? v : throw new PagSharpException($"{path}: missing tensor '{prefix}{n}'"));
            }
        }
        Step = long.Parse(meta["step"], CultureInfo.InvariantCulture);
        Optimizer.Step = long.Parse(meta["adam_step"], CultureInfo.InvariantCulture);
        TrainSeconds = meta.TryGetValue("train_seconds", out var secs) ? double.Parse(secs, CultureInfo.InvariantCulture) : 0;
        LossHistory.Clear();
        foreach (var h in JsonSerializer.Deserialize<double[][]>(meta["loss_history"])!)
            LossHistory.Add(((long)h[0], h[1], h[2], h[3]));
        var acc = JsonSerializer.Deserialize<double[]>(meta["loss_acc"])!;
        (_accLoss, _accMse, _accVb, _accN) = (acc[0], acc[1], acc[2], (int)acc[3]);
        foreach (var t in all.Values) t.Dispose();
    }

    /// <summary>A copy of the model carrying the EMA weights, in eval mode.</summary>
    public AdmUNet EmaModel()
    {
        var m = new AdmUNet(_o.Model);
        StateDictLoader.LoadStrict(m, Ema.Shadow, "EMA weights");
        m.eval();
        return m;
    }

    public void Dispose()
    {
        Model.Dispose();
        _work?.Dispose();
    }
}
