using PagSharp.Runtime;
using PagSharp.Runs;
using PagSharp.Guidance;
using PagSharp.Denoisers;
using PagSharp.Pipelines;
using PagSharp.Diffusion;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.Diffusion.Schedulers;
using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Sampling;
using Spectre.Console;
using Spectre.Console.Cli;
using static TorchSharp.torch;
using Grid = PagSharp.Imaging.Grid;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag txt2img</c>: Stable Diffusion 1.x/2.x text-to-image from a diffusers folder with CFG and PAG, as diffusers'
/// StableDiffusionPAGPipeline. Like <c>pag sample</c>: one PNG per image, grid.png, run.json with every setting and
/// per-image seed, progress, resume into the same folder (finished batches are skipped; a folder holding a different
/// run is refused, with the differing settings listed), shards.
/// </summary>
public sealed class Txt2ImgCommand : Command<Txt2ImgSettings>
{
    public const string RunFile = RunFolder.ManifestFile;
    public const string LatentsFile = "latents.npy";
    public const string ControlFile = "control.png";
    public const string CompareFile = "compare.png";

    public override int Execute(CommandContext context, Txt2ImgSettings s, CancellationToken cancellationToken)
    {
        if (s.Model is null) throw new PagSharpException("pag txt2img needs --model DIR (a diffusers Stable Diffusion folder)");
        bool latentOut = s.LatentOutput;
        if ((s.Prompt is null) == (s.PromptEmbeds is null)) throw new PagSharpException("give either --prompt TEXT or --prompt-embeds TENSOR");
        if (s.NegativePrompt is not null && s.NegativePromptEmbeds is not null) throw new PagSharpException("give --negative-prompt or --negative-prompt-embeds, not both");
        if (s.SaveTensor is not null && !s.SaveTensor.EndsWith(".npy", StringComparison.OrdinalIgnoreCase))
            throw new PagSharpException($"--save-tensor '{s.SaveTensor}' must be a .npy file");
        if (s.BatchSize < 1) throw new PagSharpException($"--batch-size must be ≥ 1 (got {s.BatchSize})");
        if (s.Scheduler is not null) Schedulers.Check(s.Scheduler);
        var (shardK, shardN) = SampleCommand.ParseShard(s.Shard);
        var methods = s.Compare is null ? null : CompareMethods(s.Compare);
        if (methods is not null && latentOut) throw new PagSharpException("--compare writes an image grid; it cannot be combined with --output-type latent");
        if (methods is not null && s.Shard is not null) throw new PagSharpException("--compare cannot be sharded");
        bool cfg = methods is null ? s.GuidanceScale > 1 : methods.Any(m => m.Cfg > 1);
        // A ControlNet pipeline folder (StableDiffusionControlNetPipeline) carries its ControlNet in controlnet/.
        string? controlNetPath = s.ControlNet ?? (s.ControlImage is not null && Directory.Exists(Path.Combine(s.Model, "controlnet")) ? Path.Combine(s.Model, "controlnet") : null);
        if (s.ControlImage is not null && controlNetPath is null) throw new PagSharpException($"--control-image needs --controlnet PATH (a diffusers ControlNet); {Path.Combine(s.Model, "controlnet")} does not exist either");
        if (s.ControlNet is not null && s.ControlImage is null) throw new PagSharpException("--controlnet needs --control-image FILE (PNG, or a prepared tensor)");
        if (s.Canny && s.ControlImage is null) throw new PagSharpException("--canny needs --control-image FILE.png (the photo to take edges of)");
        bool needText = s.Prompt is not null || (cfg && s.NegativePromptEmbeds is null);
        bool auto = methods is null ? s.AutoguidanceScale is > 0 : methods.Any(m => m.Auto > 0);
        if (auto && s.GuidanceModel is null) throw new PagSharpException("--autoguidance-scale (or an auto:S column) needs --guidance-model DIR (a diffusers folder with a weaker version of the model's unet/)");
        if (s.GuidanceModel is not null && !auto) throw new PagSharpException("--guidance-model needs --autoguidance-scale S (or auto:S columns in --compare)");

        using var sd = StableDiffusion.Load(s.Model, new SdComponents(Vae: !latentOut, TextEncoder: needText));
        string scheduler = s.Scheduler ?? sd.Folder.NativeSchedulerName ?? "ddim";
        sd.KarrasSigmas = s.KarrasSigmas;
        var computeType = ComputeType.Parse(s.Dtype);
        ComputeType.Apply(sd.Unet, computeType);
        if (s.GuidanceModel is not null)
        {
            sd.LoadGuide(s.GuidanceModel);
            ComputeType.Apply(sd.Guide!, computeType);
        }
        // With --compare each column builds (and checks) its own settings; the --seg-*/--slg-* layer options serve its tokens.
        var guidance = methods is null ? s.BuildGuidance(sd.Unet.AttentionLayers)
            : methods.Select(m => m.Apply(s.BuildGuidance(sd.Unet.AttentionLayers, m.Cfg, m.Pag, m.Sag, m.Seg, m.Slg), s.ApgFromOptions())).ToArray()[0];
        using var controlNet = controlNetPath is null ? null : LoadControlNet(controlNetPath, sd);
        if (controlNet is not null) ComputeType.Apply(controlNet, computeType);
        using var controlImage = controlNet is null ? null : LoadControlImage(s, sd, controlNet);
        var control = controlNet is null ? null : new SdControl(controlNet, controlImage!)
        {
            ConditioningScale = s.ControlNetScale,
            GuidanceStart = s.ControlGuidanceStart,
            GuidanceEnd = s.ControlGuidanceEnd,
            GuessMode = s.GuessMode,
        };
        control?.Validate();
        Schedulers.Create(scheduler, sd.SchedulerFor(control), s.Steps, s.Eta); // steps and settings checked before anything is written

        using var init = s.InitNoise is null ? null : TensorSpec.Load(s.InitNoise).to_type(ScalarType.Float32);
        int count = s.Count ?? (int?)init?.shape[0] ?? 4;
        if (count < 1) throw new PagSharpException($"--count must be ≥ 1 (got {count})");
        int f = sd.VaeScaleFactor;
        if (init is not null && (init.dim() != 4 || init.shape[1] != sd.Unet.Config.InChannels))
            throw new PagSharpException($"--init-noise has shape [{string.Join(",", init.shape)}]; this UNet expects [N,{sd.Unet.Config.InChannels},H/{f},W/{f}]");
        if (init is not null && init.shape[0] != count)
            throw new PagSharpException($"--init-noise holds {init.shape[0]} latents but --count is {count}");
        // With a control image the generation size is the (prepared) image's, as diffusers' ControlNet pipelines.
        int height = controlImage is not null ? (int)controlImage.shape[2] : s.Height ?? (init is not null ? (int)init.shape[2] * f : sd.DefaultSize);
        int width = controlImage is not null ? (int)controlImage.shape[3] : s.Width ?? (init is not null ? (int)init.shape[3] * f : sd.DefaultSize);
        if (controlImage is not null && controlImage.shape[0] != 1 && controlImage.shape[0] != count)
            throw new PagSharpException($"--control-image '{s.ControlImage}' holds {controlImage.shape[0]} images but --count is {count}; give one, or one per image");
        var latentShape = sd.LatentShape(height, width);
        var (fitting, perImage, budget) = sd.PlanMemory(guidance, latentShape, s.BatchSize);
        if (fitting < s.BatchSize)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] batches of {s.BatchSize} need about {MemoryBudget.Format(perImage * s.BatchSize)} of U-Net activations but {MemoryBudget.Format(budget ?? 0)} is available; --batch-size {fitting} fits");
        if (init is not null && !init.shape[1..].SequenceEqual(latentShape))
            throw new PagSharpException($"--init-noise has shape [{string.Join(",", init.shape)}]; for {width}×{height} images this model expects [{count},{string.Join(",", latentShape)}]");

        using var promptEmb = s.Prompt is not null ? Encode(sd, s.Prompt, s.ClipSkip) : LoadEmbeds(s.PromptEmbeds!, "--prompt-embeds", sd, count);
        using var negEmb = !cfg ? null
            : s.NegativePromptEmbeds is not null ? LoadEmbeds(s.NegativePromptEmbeds, "--negative-prompt-embeds", sd, count)
            : Encode(sd, s.NegativePrompt ?? "", 0); // diffusers applies clip_skip to the prompt only
        if (negEmb is not null && !negEmb.shape[1..].SequenceEqual(promptEmb.shape[1..]))
            throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", negEmb.shape)}] but the prompt embeddings [{string.Join(",", promptEmb.shape)}]; they must match");

        if (methods is not null)
            return RunCompare(s, sd, scheduler, methods, promptEmb, negEmb, init, latentShape, count, control, cancellationToken);

        int bs = s.BatchSize;
        var settings = Settings(s, sd, scheduler, guidance, count, width, height, control, controlNetPath);
        if (s.SaveTensor is not null) SampleCommand.CheckOutputFile(s.SaveTensor, "--save-tensor");
        using var run = RunFolder.Open(s.Output, settings, count, bs, (shardK, shardN),
            i => new JsonObject { ["index"] = i, ["seed"] = s.Seed + i, ["file"] = latentOut ? null : RunFolder.FileName(i) });
        var myBatches = run.Batches;

        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, App.CtrlC()).Token;
        int written = 0, skipped = 0;
        bool keepTensor = latentOut || s.SaveTensor is not null;
        try
        {
            AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("txt2img", maxValue: Math.Max(1, myBatches.Count * s.Steps));
                    for (int bi = 0; bi < myBatches.Count; bi++)
                    {
                        int b = myBatches[bi];
                        var idx = run.IndicesOf(b);
                        if (run.IsDone(b, images: !latentOut, tensor: keepTensor))
                        {
                            skipped += idx.Length;
                            task.Value = (bi + 1) * s.Steps;
                            continue;
                        }
                        using var scope = NewDisposeScope();
                        var seeds = idx.Select(i => s.Seed + i).ToArray();
                        using var source = new NoiseSource(seeds);
                        var xT = init is not null ? init.narrow(0, idx[0], idx.Length) : source.Randn(latentShape);
                        var sw = System.Diagnostics.Stopwatch.StartNew();
                        int batchNo = bi;
                        var latents = sd.Denoise(scheduler, s.Steps, s.Eta, xT, source, Rows(promptEmb, idx), negEmb is null ? null : Rows(negEmb, idx),
                            guidance, seeds[0], st =>
                            {
                                task.Value = batchNo * s.Steps + st.Index + 1;
                                task.Description = $"batch {batchNo + 1}/{myBatches.Count} step {st.Index + 1}/{st.Count} {(st.Index + 1) / Math.Max(sw.Elapsed.TotalSeconds, 1e-9):F2} it/s";
                            }, ct, control is null ? null : control with { Image = Rows(controlImage!, idx) });
                        if (latentOut) run.SaveBatch(b, null, latents);
                        else
                        {
                            var images = sd.Decode(latents);
                            run.SaveBatch(b, images * 2 - 1, s.SaveTensor is null ? null : images);
                            if (bi == 0 && controlImage is not null && controlImage.shape[1] is 1 or 3)
                                Png.Save(Path.Combine(s.Output, ControlFile), controlImage[0].clamp(0, 1) * 2 - 1);
                        }
                        latents.Dispose();
                        written += idx.Length;
                        task.Value = (bi + 1) * s.Steps;
                    }
                });
        }
        catch (OperationCanceledException)
        {
            AnsiConsole.MarkupLine($"[yellow]stopped: {written} images written this time ({skipped} were already there); rerun the same command to resume[/]");
            return App.ExitCancelled;
        }

        if (!latentOut) run.SaveGrid(3);
        string? tensorOut = s.SaveTensor ?? (latentOut ? Path.Combine(s.Output, LatentsFile) : null);
        if (tensorOut is not null)
        {
            using var all = run.CollectTensors();
            Npy.Save(tensorOut, all);
        }
        AnsiConsole.MarkupLine(latentOut
            ? $"{written} latents computed, {skipped} already present → {Markup.Escape(tensorOut!)} ({RunFile} in {Markup.Escape(s.Output)})"
            : $"{written} images written, {skipped} already present → {Markup.Escape(s.Output)} (grid.png, {RunFile})");
        return 0;
    }

    /// <summary>--compare methods: none, cfg:W, pag:S, sag:S, seg:S, slg:S, apg:W, cfgzero:W and their + combinations.</summary>
    private static IReadOnlyList<CompareCommand.Method> CompareMethods(string spec)
    {
        var methods = CompareCommand.ParseMethods(spec);
        if (methods.Count == 0) throw new PagSharpException("--compare is empty; give methods such as none,cfg:7.5,pag:3,cfg:7.5+pag:3");
        return methods;
    }

    /// <summary>
    /// The comparison grid: for every method the same seeds (rows) and initial noise, in one batch per method; the
    /// first column is the control image when there is one. Writes OUTPUT/compare.png (and --save-tensor: the
    /// images in [0, 1], row-major).
    /// </summary>
    private static int RunCompare(Txt2ImgSettings s, StableDiffusion sd, string scheduler, IReadOnlyList<CompareCommand.Method> methods,
                                  Tensor promptEmb, Tensor? negEmb, Tensor? init, long[] latentShape, int count, SdControl? control,
                                  CancellationToken cancellationToken)
    {
        var guidances = methods.Select(m => m.Apply(s.BuildGuidance(sd.Unet.AttentionLayers, m.Cfg, m.Pag, m.Sag, m.Seg, m.Slg), s.ApgFromOptions())).ToArray();
        var idx = Enumerable.Range(0, count).ToArray();
        var seeds = idx.Select(i => s.Seed + i).ToArray();
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, App.CtrlC()).Token;
        var columns = new List<Tensor>();
        var labels = new List<string>();
        if (control is not null && control.Image.shape[1] is 1 or 3)
        {
            var img = Rows(control.Image, idx);
            columns.Add(img.shape[1] == 1 ? img.expand(-1, 3, -1, -1) : img);
            labels.Add("control");
        }
        try
        {
            AnsiConsole.Progress().Start(ctx =>
            {
                for (int c = 0; c < methods.Count; c++)
                {
                    var task = ctx.AddTask(methods[c].Label, maxValue: s.Steps);
                    using var scope = NewDisposeScope();
                    using var source = new NoiseSource(seeds);
                    var xT = init is not null ? init : source.Randn(latentShape);
                    var g = guidances[c];
                    var latents = sd.Denoise(scheduler, s.Steps, s.Eta, xT, source, Rows(promptEmb, idx), g.UsesCfg ? Rows(negEmb!, idx) : null,
                        g, seeds[0], st => task.Value = st.Index + 1, ct, control is null ? null : control with { Image = Rows(control.Image, idx) });
                    columns.Add(sd.Decode(latents).MoveToOuterDisposeScope());
                    labels.Add(methods[c].Label);
                }
            });
        }
        catch (OperationCanceledException)
        {
            foreach (var t in columns) t.Dispose();
            AnsiConsole.MarkupLine("[yellow]stopped: nothing written[/]");
            return App.ExitCancelled;
        }
        Directory.CreateDirectory(s.Output);
        using var grid = stack(columns.ToArray(), 1).flatten(0, 1); // row-major: (seed r, column c) at r * cols + c
        string file = Path.Combine(s.Output, CompareFile);
        Grid.SaveLabelled(file, grid * 2 - 1, count, columns.Count, labels, seeds.Select(x => $"seed {x}").ToArray(), 1);
        if (s.SaveTensor is not null) Npy.Save(s.SaveTensor, grid);
        foreach (var t in columns) t.Dispose();
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(file)} ({count} seeds × {labels.Count} columns: {Markup.Escape(string.Join(", ", labels))})");
        return 0;
    }

    private static Tensor Encode(StableDiffusion sd, string prompt, int clipSkip)
    {
        var e = sd.EncodePrompt(prompt, clipSkip, out var warning);
        if (warning is not null) AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(warning)}");
        return e;
    }

    /// <summary>Embeddings [1 or count, S, D] from a tensor spec, checked against the UNet.</summary>
    private static Tensor LoadEmbeds(string spec, string option, StableDiffusion sd, int count)
    {
        var t = TensorSpec.Load(spec);
        if (!t.is_floating_point()) throw new PagSharpException($"{option} '{spec}' holds {t.dtype} values; expected floating-point embeddings");
        t = t.to_type(ScalarType.Float32);
        long d = sd.Unet.Config.CrossAttentionDim[0];
        if (t.dim() == 2) t = t.unsqueeze(0);
        if (t.dim() != 3 || t.shape[2] != d || (t.shape[0] != 1 && t.shape[0] != count))
            throw new PagSharpException($"{option} '{spec}' has shape [{string.Join(",", t.shape)}]; this model expects [1,S,{d}] or [{count},S,{d}] (cross_attention_dim {d}; one row, or one per image)");
        return t;
    }

    private static Tensor Rows(Tensor emb, int[] idx) =>
        emb.shape[0] == 1 ? emb.expand(Enumerable.Repeat(-1L, (int)emb.dim()).Select((v, i) => i == 0 ? idx.Length : v).ToArray()).contiguous()
                          : emb.narrow(0, idx[0], idx.Length);

    /// <summary>The ControlNet, checked against the model's UNet (latent channels, cross-attention width, residuals).</summary>
    private static SdControlNet LoadControlNet(string path, StableDiffusion sd)
    {
        var net = SdControlNet.Load(path);
        try
        {
            string cfg = Directory.Exists(path) ? Path.Combine(path, "config.json") : Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, "config.json");
            net.Config.CheckFits(sd.Unet.Config, cfg, Path.Combine(sd.Folder.Root, "unet", "config.json"));
            if (net.Config.ConditioningFactor != sd.VaeScaleFactor)
                throw new PagSharpException($"{cfg}: conditioning_embedding_out_channels downsample the control image by {net.Config.ConditioningFactor} but the model's VAE scale factor is {sd.VaeScaleFactor}; this ControlNet does not belong to {sd.Folder.Root}");
            return net;
        }
        catch
        {
            net.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The control image as [1 or N, C, H, W] float32: a PNG/JPEG prepared as diffusers does (RGB, Lanczos-resized to
    /// --width/--height when given, else the image's size rounded down to the VAE scale factor, values 0..1), or a
    /// tensor at the generation size, used as it is.
    /// </summary>
    private static Tensor LoadControlImage(Txt2ImgSettings s, StableDiffusion sd, SdControlNet net)
    {
        string spec = s.ControlImage!;
        int f = sd.VaeScaleFactor, cc = net.Config.ConditioningChannels;
        string ext = Path.GetExtension(spec).ToLowerInvariant();
        bool tensorSpec = ext is not (".png" or ".jpg" or ".jpeg");
        Tensor img;
        if (tensorSpec)
        {
            if (s.Canny) throw new PagSharpException($"--canny takes edges of a PNG/JPEG photo; '{spec}' is a tensor");
            var t = TensorSpec.Load(spec);
            if (!t.is_floating_point()) throw new PagSharpException($"--control-image '{spec}' holds {t.dtype} values; expected floating-point values (0..1)");
            img = t.dim() == 3 ? t.unsqueeze(0) : t;
            img = img.to_type(ScalarType.Float32);
            if (img.dim() != 4 || img.shape[1] != cc)
                throw new PagSharpException($"--control-image '{spec}' has shape [{string.Join(",", t.shape)}]; this ControlNet expects [1 or N,{cc},H,W] (conditioning_channels {cc})");
            if ((s.Height is { } h && h != img.shape[2]) || (s.Width is { } w && w != img.shape[3]))
                throw new PagSharpException($"--control-image '{spec}' is {img.shape[3]}×{img.shape[2]} but --width/--height ask for {s.Width ?? (int)img.shape[3]}×{s.Height ?? (int)img.shape[2]}; a tensor control image must already have the generation size (give a PNG to have it resized)");
            if (img.shape[2] % f != 0 || img.shape[3] % f != 0)
                throw new PagSharpException($"--control-image '{spec}' is {img.shape[3]}×{img.shape[2]}; the generation size must be a multiple of the VAE scale factor {f}");
        }
        else
        {
            if (cc != 3)
                throw new PagSharpException($"this ControlNet takes {cc}-channel control images (conditioning_channels {cc}); a PNG gives 3 (RGB): give a prepared tensor [1,{cc},H,W] instead");
            img = ControlImage.Load(spec, s.Width, s.Height, f, s.Canny ? ControlPreprocessor.Canny : ControlPreprocessor.None, s.CannyLow, s.CannyHigh);
        }
        sd.CheckSize((int)img.shape[2], (int)img.shape[3]);
        return img;
    }

    private static JsonObject Settings(Txt2ImgSettings s, StableDiffusion sd, string scheduler, GuidanceSettings g, int count, int width, int height,
                                       SdControl? control, string? controlNetPath)
    {
        var o = BaseSettings(s, sd, scheduler, g, count, width, height, control);
        foreach (var (key, value) in RunManifest.Guidance(g, sd.Unet.AttentionLayers)) o[key] = value;
        if (control is null) return o;
        // Only ControlNet runs carry these, so run.json of earlier runs still matches on resume.
        o["controlnet"] = FullSpec(controlNetPath!);
        o["control_image"] = FullSpec(s.ControlImage!);
        o["control_preprocessor"] = s.Canny ? $"canny:{s.CannyLow}:{s.CannyHigh}" : "none";
        o["controlnet_conditioning_scale"] = control.ConditioningScale;
        o["control_guidance_start"] = control.GuidanceStart;
        o["control_guidance_end"] = control.GuidanceEnd;
        o["guess_mode"] = control.EffectiveGuessMode;
        return o;
    }

    private static JsonObject BaseSettings(Txt2ImgSettings s, StableDiffusion sd, string scheduler, GuidanceSettings g, int count, int width, int height, SdControl? control) => new()
    {
        ["model"] = Path.GetFullPath(s.Model!),
        ["pipeline"] = sd.Folder.PipelineClass,
        ["prompt"] = s.Prompt,
        ["negative_prompt"] = s.NegativePrompt,
        ["prompt_embeds"] = s.PromptEmbeds is null ? null : FullSpec(s.PromptEmbeds),
        ["negative_prompt_embeds"] = s.NegativePromptEmbeds is null ? null : FullSpec(s.NegativePromptEmbeds),
        ["clip_skip"] = s.ClipSkip,
        ["scheduler"] = scheduler,
        ["dtype"] = s.Dtype,
        ["scheduler_config"] = JsonSerializer.SerializeToNode(sd.SchedulerFor(control)),
        ["num_inference_steps"] = s.Steps,
        ["eta"] = s.Eta,
        ["width"] = width,
        ["height"] = height,
        ["seed"] = s.Seed,
        ["count"] = count,
        ["batch_size"] = s.BatchSize,
        ["output_type"] = s.LatentOutput ? "latent" : "pil",
        ["init_noise"] = s.InitNoise is null ? null : FullSpec(s.InitNoise),
        ["shard"] = s.Shard ?? "0/1",
    };

    private static string FullSpec(string spec)
    {
        int colon = spec.LastIndexOf(':');
        return colon > 1 && File.Exists(spec[..colon]) ? Path.GetFullPath(spec[..colon]) + spec[colon..] : Path.GetFullPath(spec);
    }
}
