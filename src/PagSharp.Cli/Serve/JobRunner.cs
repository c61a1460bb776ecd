using System.Diagnostics;
using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Denoisers;
using PagSharp.Diffusion;
using PagSharp.Guidance;
using PagSharp.Imaging;
using PagSharp.Models.Adm;
using PagSharp.Pipelines;
using PagSharp.Runs;
using PagSharp.Sampling;
using TorchSharp;
using static TorchSharp.torch;
using Grid = PagSharp.Imaging.Grid;

namespace PagSharp.Cli.Serve;

/// <summary>
/// Runs a job column by column (every column from the same seeds, so the same initial noise), with step progress and
/// previews, then writes one PNG per image, the labelled grid (rows = seeds, columns = methods), run.json and a zip
/// of them into the staging folder.
/// </summary>
public sealed class JobRunner(ModelRegistry models) : IJobRunner
{
    public const string GridFile = "grid.png", RunFile = "run.json", ZipFile = "results.zip";
    private const string PreviewFile = ".preview.png";

    /// <summary>About this many previews per column.</summary>
    public int PreviewsPerColumn { get; init; } = 12;

    public JobResult Run(Job job, string staging, IJobReporter reporter, CancellationToken cancellation)
    {
        var plan = job.Plan;
        var columns = new List<Tensor>();
        var sw = Stopwatch.StartNew();
        string previewPath = Path.Combine(staging, PreviewFile);
        void Preview(Tensor images)
        {
            // [N,C,H,W] in [-1, 1] → one row of tiles.
            using var grid = Grid.Make(images.clamp(-1, 1), nrow: (int)images.shape[0]);
            Png.Save(previewPath, grid);
            reporter.Preview(File.ReadAllBytes(previewPath));
        }
        try
        {
            for (int c = 0; c < plan.Columns.Count; c++)
            {
                int column = c;
                reporter.Step(column, 0, plan.Steps);
                columns.Add(plan.Model switch
                {
                    AdmServeModel adm => SampleAdm(adm, plan, plan.Columns[c].Guidance, (step, steps) => reporter.Step(column, step, steps), Preview, cancellation),
                    SdServeModel sd => SampleSd(models.Acquire(sd), plan, plan.Columns[c].Guidance, (step, steps) => reporter.Step(column, step, steps), Preview, cancellation),
                    _ => throw new InvalidOperationException("unknown model family"),
                });
                if (!columns[^1].isfinite().all().item<bool>())
                    throw new PagSharpException($"method '{plan.Columns[c].Token}' diverged: its images hold NaN or infinite values (check the scales; some schedulers need more steps)");
            }
            cancellation.ThrowIfCancellationRequested();
            if (File.Exists(previewPath)) File.Delete(previewPath);
            return Write(job, staging, columns, sw.Elapsed.TotalSeconds);
        }
        finally
        {
            foreach (var t in columns) t.Dispose();
        }
    }

    /// <summary>
    /// One ADM column: exactly <see cref="Sampler.Sample"/>'s batches (seeds, labels, stochastic-policy generator,
    /// scheduler; the memory check may split the batch), with the guided denoiser wrapped so that every few steps the
    /// predicted x̂0 becomes a preview. Returns [Count, C, H, W] in model space.
    /// </summary>
    public Tensor SampleAdm(AdmServeModel model, JobPlan plan, GuidanceSettings guidance, Action<int, int>? step, Action<Tensor>? preview, CancellationToken cancellation)
    {
        var net = model.Net;
        var options = JobRequest.Options(guidance, plan.Label, plan.Seed, plan.Count, plan.Scheduler, plan.Steps);
        options.Validate();
        Sampler.Validate(net, options);
        var cfg = net.Config;
        var spec = DiffusionSpec.Of(cfg);
        long[] sampleShape = [cfg.InChannels, cfg.ImageSize, cfg.ImageSize];
        int forward = Sampler.PlanMemory(net, options).ForwardBatch;
        if (forward < options.BatchSize) options = options with { BatchSize = forward };
        var diffusion = GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, options.ResolvedRespacing(spec.DiffusionSteps), spec.Variance);
        double[] alphasCumprod = GaussianDiffusion.Create(spec.NoiseSchedule, spec.DiffusionSteps, "", spec.Variance).AlphasCumprod;
        var indices = Enumerable.Range(0, plan.Count).Select(i => (long)i).ToArray();
        int batches = (indices.Length + options.BatchSize - 1) / options.BatchSize;
        var results = new List<Tensor>();
        try
        {
            using (inference_mode())
            {
                for (int bi = 0; bi < batches; bi++)
                {
                    var batch = indices.Skip(bi * options.BatchSize).Take(options.BatchSize).ToArray();
                    using var scope = NewDisposeScope();
                    using var noise = new NoiseSource(batch.Select(options.SampleSeed));
                    var xT = noise.Randn(sampleShape);
                    Tensor? labels = null;
                    if (net.IsClassConditional)
                        labels = tensor(batch.Select(i => (long)(options.Labels is { } l ? l[(int)(i % l.Count)] : cfg.NullClass!.Value)).ToArray());
                    using var policyGen = new Generator((ulong)options.SampleSeed(batch[0]) ^ 0x5bd1e995UL);
                    var denoiser = Sampler.CreateDenoiser(new AdmDenoiser(net, labels, batch.Length), spec, options, policyGen);
                    var scheduler = Sampler.CreateScheduler(options, spec, diffusion);
                    int every = Math.Max(1, plan.Steps / Math.Max(1, PreviewsPerColumn));
                    var watched = new PreviewDenoiser(denoiser, alphasCumprod, cfg.PredictXstart, every, preview);
                    int done = bi;
                    try
                    {
                        var x = SamplingLoop.Run(scheduler, watched, xT, noise, s => step?.Invoke(done * s.Count + s.Index + 1, batches * s.Count), cancellation);
                        results.Add(x.MoveToOuterDisposeScope());
                    }
                    finally
                    {
                        (denoiser as IDisposable)?.Dispose();
                        (scheduler as IDisposable)?.Dispose();
                    }
                }
            }
            var all = results.Count == 1 ? results[0].clone() : cat(results.ToArray(), 0);
            return all;
        }
        finally
        {
            foreach (var r in results) r.Dispose();
        }
    }

    /// <summary>
    /// One Stable Diffusion column: the job's seeds in batches that fit in memory, each as <c>pag txt2img</c> runs
    /// it (per-image generators, prompt embeddings repeated, the library's denoising loop), decoded one image at a
    /// time. The preview is the current latent mapped to RGB (a linear approximation, no VAE). Returns [Count, 3, H, W] in [−1, 1].
    /// </summary>
    public static Tensor SampleSd(StableDiffusion sd, JobPlan plan, GuidanceSettings guidance, Action<int, int>? step, Action<Tensor>? preview, CancellationToken cancellation)
    {
        var shape = sd.LatentShape(plan.Height, plan.Width);
        int fit = sd.PlanMemory(guidance, shape, plan.Count).FittingBatch;
        int batches = (plan.Count + fit - 1) / fit;
        int every = Math.Max(1, plan.Steps / 8);
        var images = new List<Tensor>();
        try
        {
            for (int bi = 0; bi < batches; bi++)
            {
                int start = bi * fit, n = Math.Min(fit, plan.Count - start);
                var seeds = Enumerable.Range(start, n).Select(i => plan.Seed + i).ToArray();
                using var scope = NewDisposeScope();
                var (pe, ne, xl) = sd.EncodeForGeneration(plan.Prompt ?? "", plan.NegativePrompt, 0, guidance.UsesCfg, n, plan.Height, plan.Width, null, imageToImage: false);
                using var source = new NoiseSource(seeds);
                var xT = source.Randn(shape);
                int done = bi;
                void OnStep(LoopStep s)
                {
                    step?.Invoke(done * s.Count + s.Index + 1, batches * s.Count);
                    if (preview is not null && ((s.Index + 1) % every == 0 || s.Index + 1 == s.Count))
                    {
                        using var inner = NewDisposeScope();
                        preview(LatentPreview(s.Sample));
                    }
                }
                var latents = sd.Denoise(plan.Scheduler, plan.Steps, 0, xT, source, pe, guidance.UsesCfg ? ne : null, guidance, seeds[0], OnStep, cancellation, null, xl);
                for (int i = 0; i < n; i++)
                {
                    cancellation.ThrowIfCancellationRequested();
                    images.Add((sd.Decode(latents.narrow(0, i, 1)) * 2 - 1).MoveToOuterDisposeScope());
                }
            }
            return cat(images.ToArray(), 0);
        }
        finally
        {
            foreach (var t in images) t.Dispose();
        }
    }

    /// <summary>
    /// A quick RGB picture of latents [N, C, h, w]: each image scaled to unit standard deviation, then Stable
    /// Diffusion 1.x's linear latent → RGB factors for 4-channel latents (others: the first channels as grey or RGB).
    /// </summary>
    public static Tensor LatentPreview(Tensor latents)
    {
        var x = latents.to_type(ScalarType.Float32);
        var centred = x - x.mean([1, 2, 3], keepdim: true);
        var unit = centred / (centred.pow(2).mean([1, 2, 3], keepdim: true).sqrt() + 1e-6);
        if (unit.shape[1] == 4)
        {
            using var factors = tensor(new float[] { 0.3512f, 0.2297f, 0.3227f, 0.3250f, 0.4974f, 0.2350f, -0.2829f, 0.1762f, 0.2721f, -0.2120f, -0.2616f, -0.7177f }).reshape(4, 3);
            return unit.permute(0, 2, 3, 1).matmul(factors).permute(0, 3, 1, 2).clamp(-1, 1);
        }
        return (unit.shape[1] >= 3 ? unit.narrow(1, 0, 3) : unit.narrow(1, 0, 1)).mul(0.5).clamp(-1, 1);
    }

    private static JobResult Write(Job job, string staging, IReadOnlyList<Tensor> columns, double seconds)
    {
        var plan = job.Plan;
        int rows = plan.Count, cols = columns.Count;
        var seeds = plan.Seeds.ToArray();
        var labels = plan.Columns.Select(c => c.Token).ToArray();
        var images = new string[rows][];
        var imageList = new JsonArray();
        for (int r = 0; r < rows; r++)
        {
            images[r] = new string[cols];
            for (int c = 0; c < cols; c++)
            {
                string name = $"seed{seeds[r]}_{c}_{FileSlug(labels[c])}.png";
                using (var img = columns[c][r]) Png.Save(Path.Combine(staging, name), img);
                images[r][c] = name;
                imageList.Add(new JsonObject { ["row"] = r, ["column"] = c, ["seed"] = seeds[r], ["method"] = labels[c], ["file"] = name });
            }
        }
        using (var stacked = stack(columns.ToArray(), 1).flatten(0, 1)) // row-major: (seed r, column c) at r * cols + c
        {
            var rowLabels = seeds.Select(s => $"seed {s}" + (plan.Label is int l ? $" y={l}" : "")).ToArray();
            int scale = Math.Max(1, Math.Min(4, 128 / Math.Max(plan.Width, plan.Height)));
            Grid.SaveLabelled(Path.Combine(staging, GridFile), stacked, rows, cols, labels, rowLabels, scale);
        }
        var layers = plan.Model.AttentionLayers;
        var run = new JsonObject
        {
            ["tool"] = "pag serve",
            ["version"] = typeof(JobRunner).Assembly.GetName().Version?.ToString(3),
            ["job"] = job.Id,
            ["created"] = job.Created.ToString("O"),
            ["finished"] = DateTimeOffset.UtcNow.ToString("O"),
            ["seconds"] = Math.Round(seconds, 3),
            ["model"] = plan.Model.Manifest(),
            ["request"] = plan.Request.DeepClone(),
            ["seeds"] = new JsonArray(seeds.Select(s => (JsonNode)s!).ToArray()),
            ["columns"] = new JsonArray(plan.Columns.Select(c =>
            {
                var guidance = new JsonObject();
                foreach (var (key, value) in RunManifest.Guidance(c.Guidance, layers)) guidance[key] = value;
                return (JsonNode)new JsonObject { ["method"] = c.Token, ["guidance"] = guidance };
            }).ToArray()),
            ["images"] = imageList,
            ["grid"] = GridFile,
        };
        File.WriteAllText(Path.Combine(staging, RunFile), run.ToJsonString(new JsonSerializerOptions(ServeApp.JsonOut) { WriteIndented = true }) + "\n");
        var files = images.SelectMany(r => r).Append(GridFile).Append(RunFile).ToArray();
        string zipTemp = Path.Combine(staging, "." + ZipFile);
        using (var zip = System.IO.Compression.ZipFile.Open(zipTemp, ZipArchiveMode.Create))
            foreach (var f in files) zip.CreateEntryFromFile(Path.Combine(staging, f), f, CompressionLevel.Fastest);
        File.Move(zipTemp, Path.Combine(staging, ZipFile));
        return new JobResult(seeds, labels, images, GridFile, RunFile, ZipFile);
    }

    /// <summary>A method token as part of a file name: <c>cfg:3+pag:2</c> → <c>cfg-3_pag-2</c>.</summary>
    public static string FileSlug(string token)
    {
        var s = new string(token.ToLowerInvariant().Select(c => c == ':' || c == '=' ? '-' : char.IsAsciiLetterOrDigit(c) || c is '.' or '-' ? c : '_').ToArray());
        return s.Length > 40 ? s[..40] : s;
    }

    /// <summary>
    /// The guided denoiser with a look at its prediction: every <c>every</c> steps (and at the last) the predicted
    /// x̂0 = (x − √(1 − ᾱ_t)·ε) / √ᾱ_t of the (VP-scaled) input at model timestep t goes to <c>preview</c>.
    /// </summary>
    private sealed class PreviewDenoiser(IGuidedDenoiser inner, double[] alphasCumprod, bool predictsX0, int every, Action<Tensor>? preview) : IGuidedDenoiser
    {
        public ModelOutput Predict(Tensor x, StepContext step)
        {
            var output = inner.Predict(x, step);
            if (preview is not null && ((step.Index + 1) % every == 0 || step.Index + 1 == step.Count))
            {
                using var scope = NewDisposeScope();
                if (predictsX0) preview(output.Output);
                else
                {
                    double a = AlphaAt(step.Timestep);
                    preview((x - Math.Sqrt(1 - a) * output.Output) / Math.Sqrt(a));
                }
            }
            return output;
        }

        private double AlphaAt(double t)
        {
            t = Math.Clamp(t, 0, alphasCumprod.Length - 1);
            int lo = (int)Math.Floor(t), hi = Math.Min(lo + 1, alphasCumprod.Length - 1);
            return alphasCumprod[lo] + (alphasCumprod[hi] - alphasCumprod[lo]) * (t - lo);
        }
    }
}
