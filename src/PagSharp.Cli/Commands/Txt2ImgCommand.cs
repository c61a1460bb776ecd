using TorchSharp;
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
using PagSharp.Cli.Hosting;
using PagSharp.Cli.Methods;

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag txt2img</c>: Stable Diffusion 1.x/2.x and SDXL text-to-image from a diffusers folder with CFG and PAG, as
/// diffusers' StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline (and the shared run of <c>pag img2img</c> and
/// <c>pag inpaint</c>). Like <c>pag sample</c>: one PNG per image, grid.png, run.json with every setting and
/// per-image seed, progress, resume into the same folder (finished batches are skipped; a folder holding a different
/// run is refused, with the differing settings listed), shards.
/// </summary>
public sealed partial class Txt2ImgCommand : Command<Txt2ImgSettings>
{
    public const string RunFile = RunFolder.ManifestFile;
    public const string LatentsFile = "latents.npy";
    public const string ControlFile = "control.png";
    public const string CompareFile = "compare.png";

    public override int Execute(CommandContext context, Txt2ImgSettings s, CancellationToken cancellationToken) => Run(s, "txt2img", cancellationToken);

    /// <summary>
    /// The one run of txt2img, img2img and inpaint (<paramref name="mode"/>): options checked before anything is
    /// loaded or written, the model (SD 1.x/2.x or SDXL, from model_index.json), prompts or embeddings, and the
    /// batches into the run folder — or the comparison grid.
    /// </summary>
    public static int Run(Txt2ImgSettings s, string mode, CancellationToken cancellationToken)
    {
        var e = s as Img2ImgSettings;
        var ip = s as InpaintSettings;
        bool editing = e is not null;
        string output = s.Output ?? Path.Combine("out", mode);
        var device = DeviceSpec.Parse(s.Device);
        if (s.Model is null) throw new PagSharpException($"pag {mode} needs --model DIR (a diffusers Stable Diffusion or SDXL folder)");
        if (editing && e!.Image is null) throw new PagSharpException($"pag {mode} needs --image IMAGE (PNG/JPEG, or a tensor)");
        if (ip is not null && ip.MaskImage is null) throw new PagSharpException("pag inpaint needs --mask-image MASK (white = repaint)");

        if (ip is not null && (double.IsNaN(ip.MaskBlur) || ip.MaskBlur < 0)) throw new PagSharpException($"--mask-blur must be ≥ 0 (got {ip.MaskBlur})");
        if (ip?.PaddingMaskCrop is { } pmc)
        {
            if (pmc < 0) throw new PagSharpException($"--padding-mask-crop must be ≥ 0 (got {pmc})");
            if (IsTensorSpec(ip.Image!) || IsTensorSpec(ip.MaskImage!))
                throw new PagSharpException("--padding-mask-crop needs a PNG/JPEG --image and --mask-image (as diffusers, which crops PIL images)");
            if (s.LatentOutput || s.Compare is not null) throw new PagSharpException("--padding-mask-crop pastes images back: it cannot be combined with --output-type latent or --compare");
        }
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
        bool auto = methods is null ? s.AutoguidanceScale is > 0 : methods.Any(m => m.Auto > 0);
        if (auto && s.GuidanceModel is null) throw new PagSharpException("--autoguidance-scale (or an auto:S column) needs --guidance-model DIR (a diffusers folder with a weaker version of the model's unet/)");
        if (s.GuidanceModel is not null && !auto) throw new PagSharpException("--guidance-model needs --autoguidance-scale S (or auto:S columns in --compare)");

        using var single = File.Exists(s.Model) ? SdSingleFile.Open(s.Model) : null;
        if (single is null && (s.Config is not null || s.Tokenizer is not null))
            throw new PagSharpException("--config and --tokenizer apply to single-file checkpoints (--model FILE.safetensors); a diffusers folder carries its own");
        var folder = single is null ? DiffusersFolder.Open(s.Model)
            : DiffusersFolder.ForSingleFile(single, s.Config ?? SdSingleFile.BuiltInConfigDir(single.Family)
                ?? throw new PagSharpException($"{s.Model} is a {single.Family} checkpoint, for which PagSharp has no built-in configs; give --config DIR (a diffusers folder with its model_index.json and component configs)"), s.Tokenizer);
        bool xlFolder = folder.IsXl;
        var xlOnly = s.XlOnlyOptions().Concat(e?.DenoisingStart is not null ? ["--denoising-start"] : []).ToList();
        if (!xlFolder && xlOnly.Count > 0)
            throw new PagSharpException($"{string.Join(", ", xlOnly)} apply to SDXL models only; {s.Model} is a {folder.PipelineClass ?? "Stable Diffusion"} folder");
        // diffusers' ControlNet PAG pipelines: txt2img (SD, SDXL), inpainting (SD), image-to-image (SDXL).
        if (editing && (s.ControlNet is not null || s.ControlImage is not null) && (mode == "img2img") != xlFolder)
            throw new PagSharpException(xlFolder
                ? "--controlnet/--control-image work with SDXL in pag txt2img and pag img2img (diffusers' StableDiffusionXLControlNetPAG(Img2Img)Pipeline); there is no SDXL ControlNet inpainting PAG pipeline"
                : "--controlnet/--control-image work with SD 1.x/2.x in pag txt2img and pag inpaint (diffusers' StableDiffusionControlNetPAG(Inpaint)Pipeline); there is no ControlNet image-to-image PAG pipeline for them");
        var micro = s.MicroConditioning();
        // SDXL without a negative prompt: zero negative embeddings (force_zeros_for_empty_prompt) need no text encoder.
        bool zeroNegative = xlFolder && folder.ForceZerosForEmptyPrompt && s.NegativePrompt is null && s.NegativePromptEmbeds is null;
        bool needText = s.Prompt is not null || (cfg && s.NegativePromptEmbeds is null && !zeroNegative);
        if (xlFolder && s.PromptEmbeds is not null && s.PooledPromptEmbeds is null)
            throw new PagSharpException("--prompt-embeds on an SDXL model needs --pooled-prompt-embeds too (as diffusers)");
        if (xlFolder && cfg && s.NegativePromptEmbeds is not null && s.NegativePooledPromptEmbeds is null)
            throw new PagSharpException("--negative-prompt-embeds on an SDXL model needs --negative-pooled-prompt-embeds too (as diffusers)");

        // A tensor image is read first: image latents need no VAE when the output is latent too.
        Tensor? imageTensor = editing && IsTensorSpec(e!.Image!) ? LoadImageTensor(e.Image!) : null;
        bool imageIsLatents = imageTensor is not null && imageTensor.shape[1] != 3;
        bool needVae = !latentOut || (editing && !imageIsLatents);
        var computeType = ComputeType.Parse(s.Dtype);
        using var sd = StableDiffusion.Load(folder, new SdComponents(Vae: needVae, TextEncoder: needText, UnetType: computeType));
        using var imageOwner = imageTensor;
        if (s.Embedding is { Length: > 0 } && !needText)
            throw new PagSharpException("--embedding changes how prompts are encoded; give --prompt (with prompt embeddings it has nothing to do)");
        foreach (var spec in s.Embedding ?? [])
        {
            int colon = spec.LastIndexOf(':');
            var (file, token) = colon > 0 && File.Exists(spec[..colon]) ? (spec[..colon], spec[(colon + 1)..]) : (spec, (string?)null);
            if (!File.Exists(file)) throw new PagSharpException($"--embedding '{spec}': the file does not exist");
            AnsiConsole.MarkupLine($"embedding {Markup.Escape(Path.GetFileName(file))} → {Markup.Escape(sd.LoadEmbedding(file, token))}");
        }
        foreach (var (file, scale) in (s.Lora ?? []).Select(ParseLora).ToList())
        {
            using var lora = SdLora.Load(file, sd.Unet, sd.TextEncoder, sd.TextEncoder2);
            var merged = lora.Merge(scale, sd.Unet, sd.TextEncoder, sd.TextEncoder2);
            AnsiConsole.MarkupLine($"LoRA {Markup.Escape(Path.GetFileName(file))} merged at scale {scale.ToString(System.Globalization.CultureInfo.InvariantCulture)}: {merged.Count} weights");
        }
        StartupTrace.Mark("model-loaded"); // and LoRA merged; a guide model or ControlNet loads below
        if (sd.Vae is not null) sd.Vae.Tiling = s.VaeTiling;
        if (device.type != TorchSharp.DeviceType.CPU) sd.ToDevice(device);
        string scheduler = s.Scheduler ?? sd.Folder.NativeSchedulerName ?? "ddim";
        sd.KarrasSigmas = s.KarrasSigmas;
        ComputeType.Apply(sd.Unet, computeType); // already in that type: built so by the loader
        if (s.GuidanceModel is not null)
        {
            sd.LoadGuide(s.GuidanceModel);
            ComputeType.Apply(sd.Guide!, computeType);
            if (device.type != TorchSharp.DeviceType.CPU) sd.Guide!.to(device);
        }
        // With --compare each column builds (and checks) its own settings; the --seg-*/--slg-* layer options serve its tokens.
        var guidance = methods is null ? s.BuildGuidance(sd.Unet.AttentionLayers)
            : methods.Select(m => m.Apply(s.BuildGuidance(sd.Unet.AttentionLayers, m.Cfg, m.Pag, m.Sag, m.Seg, m.Slg), s.ApgFromOptions())).ToArray()[0];
        using var controlNet = controlNetPath is null ? null : LoadControlNet(controlNetPath, sd);
        if (controlNet is not null) { ComputeType.Apply(controlNet, computeType); if (device.type != TorchSharp.DeviceType.CPU) controlNet.to(device); }
        using var controlImage = controlNet is null ? null : LoadControlImage(s, sd, controlNet);
        var control = controlNet is null ? null : new SdControl(controlNet, controlImage!)
        {
            ConditioningScale = s.ControlNetScale ?? (mode switch { "inpaint" => 0.5, "img2img" => 0.8, _ => 1.0 }),
            GuidanceStart = s.ControlGuidanceStart,
            GuidanceEnd = s.ControlGuidanceEnd,
            GuessMode = s.GuessMode,
        };
        control?.Validate();
        var probe = Schedulers.Create(scheduler, sd.SchedulerFor(control), s.Steps, s.Eta); // steps and settings checked before anything is written
        double strength = e?.Strength ?? (ip is not null ? (sd.IsXl ? 0.9999 : 1.0) : sd.IsXl ? 0.3 : 0.8);
        var (firstStep, endStep) = StableDiffusion.EditSteps(probe.Timesteps, sd.SchedulerFor(control).NumTrainTimesteps, editing ? strength : 1.0,
            e?.DenoisingStart, s.DenoisingEnd);
        (probe as IDisposable)?.Dispose();

        // The input image (pixels [1 or N,3,H,W] in [0, 1], or latents) and the mask at its size.
        int f = sd.VaeScaleFactor;
        // diffusers' inpainting pipelines default to the UNet's size (the image is resized to it); img2img to the image's.
        int? defaultW = ip is not null ? s.Width ?? sd.DefaultSize : s.Width, defaultH = ip is not null ? s.Height ?? sd.DefaultSize : s.Height;
        var crop = ip?.PaddingMaskCrop is { } padding ? PrepareCrop(ip, defaultW!.Value, defaultH!.Value, padding) : null;
        using var image = !editing ? null : crop is not null ? crop.Image : imageTensor is not null ? CheckTensorImage(imageTensor, e!.Image!, s, sd)
            : ControlImage.Load(e!.Image!, defaultW, defaultH, f);
        if (image is not null && !imageIsLatents) sd.CheckSize((int)image.shape[2], (int)image.shape[3]);
        using var init = s.InitNoise is null ? null : TensorSpec.Load(s.InitNoise).to_type(ScalarType.Float32);
        int count = s.Count ?? (int?)init?.shape[0] ?? (image is { } im0 && im0.shape[0] > 1 ? (int?)im0.shape[0] : null) ?? 4;
        if (count < 1) throw new PagSharpException($"--count must be ≥ 1 (got {count})");
        if (image is not null && image.shape[0] != 1 && image.shape[0] != count)
            throw new PagSharpException($"--image '{e!.Image}' holds {image.shape[0]} images but --count is {count}; give one, or one per image");
        long latentC = sd.Unet.Config.OutChannels;
        if (init is not null && (init.dim() != 4 || init.shape[1] != latentC))
            throw new PagSharpException($"--init-noise has shape [{string.Join(",", init.shape)}]; this model expects [N,{latentC},H/{f},W/{f}]");
        if (init is not null && init.shape[0] != count)
            throw new PagSharpException($"--init-noise holds {init.shape[0]} latents but --count is {count}");
        // The generation size: the image's (editing), the control image's (ControlNet), or --width/--height.
        if (image is not null && controlImage is not null && (controlImage.shape[2] != image.shape[2] * (imageIsLatents ? f : 1) || controlImage.shape[3] != image.shape[3] * (imageIsLatents ? f : 1)))
            throw new PagSharpException($"the control image is {controlImage.shape[3]}×{controlImage.shape[2]} but the image {image.shape[3] * (imageIsLatents ? f : 1)}×{image.shape[2] * (imageIsLatents ? f : 1)}; give both at the same size (or --width/--height to resize PNGs)");
        int height = image is not null ? (int)image.shape[2] * (imageIsLatents ? f : 1)
            : controlImage is not null ? (int)controlImage.shape[2] : s.Height ?? (init is not null ? (int)init.shape[2] * f : sd.DefaultSize);
        int width = image is not null ? (int)image.shape[3] * (imageIsLatents ? f : 1)
            : controlImage is not null ? (int)controlImage.shape[3] : s.Width ?? (init is not null ? (int)init.shape[3] * f : sd.DefaultSize);
        using var mask = ip is null ? null : crop is not null ? crop.Mask : LoadMask(ip, height, width, count);
        using var maskedLatents = ip?.MaskedImageLatents is null ? null : TensorSpec.Load(ip.MaskedImageLatents).to_type(ScalarType.Float32);
        if (controlImage is not null && controlImage.shape[0] != 1 && controlImage.shape[0] != count)
            throw new PagSharpException($"--control-image '{s.ControlImage}' holds {controlImage.shape[0]} images but --count is {count}; give one, or one per image");
        var latentShape = sd.LatentShape(height, width);
        var (fitting, perImage, budget) = sd.PlanMemory(guidance, latentShape, s.BatchSize);
        if (fitting < s.BatchSize)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] batches of {s.BatchSize} need about {MemoryBudget.Format(perImage * s.BatchSize)} of U-Net activations but {MemoryBudget.Format(budget ?? 0)} is available; --batch-size {fitting} fits");
        if (init is not null && !init.shape[1..].SequenceEqual(latentShape))
            throw new PagSharpException($"--init-noise has shape [{string.Join(",", init.shape)}]; for {width}×{height} images this model expects [{count},{string.Join(",", latentShape)}]");

        using var texts = EncodeTexts(s, sd, cfg, count);
        var (promptEmb, negEmb) = (texts.Prompt, texts.Negative);
        SdXlConditioning? XlFor(int[] idx) => !sd.IsXl ? null
            : sd.XlConditioning(Rows(texts.Pooled!, idx), texts.NegativePooled is null ? null : Rows(texts.NegativePooled, idx), height, width, micro, editing);
        SdImageEdit? EditFor(int[] idx, Tensor? noise) => !editing ? null : new SdImageEdit
        {
            Image = Rows(image!, idx),
            Mask = mask is null ? null : Rows(mask, idx),
            MaskedImageLatents = maskedLatents is null ? null : Rows(maskedLatents, idx),
            Strength = strength,
            DenoisingStart = e!.DenoisingStart,
            DenoisingEnd = s.DenoisingEnd,
            Noise = noise,
        };
        var range = new LoopRange(firstStep, endStep);
        Tensor Generate(int[] idx, NoiseSource source, GuidanceSettings g, Action<LoopStep>? onStep, CancellationToken ct)
        {
            var seeds = idx.Select(i => s.Seed + i).ToArray();
            var noise = init?.narrow(0, idx[0], idx.Length);
            if (editing)
                return sd.Edit(scheduler, s.Steps, s.Eta, EditFor(idx, noise)!, source, Rows(promptEmb, idx), g.UsesCfg ? Rows(negEmb!, idx) : null,
                    g, seeds[0], XlFor(idx), onStep, ct, control is null ? null : control with { Image = Rows(control.Image, idx) });
            var xT = noise ?? source.Randn(latentShape);
            return sd.Denoise(scheduler, s.Steps, s.Eta, xT, source, Rows(promptEmb, idx), g.UsesCfg ? Rows(negEmb!, idx) : null,
                g, seeds[0], onStep, ct, control is null ? null : control with { Image = Rows(control.Image, idx) }, XlFor(idx), range);
        }

        if (methods is not null)
            return RunCompare(s, sd, output, methods, count, Generate, editing ? InputColumn(sd, image!, count) : null, control, cancellationToken);

        int bs = s.BatchSize;
        var settings = Settings(s, mode, sd, scheduler, guidance, count, width, height, control, controlNetPath, strength);
        if (s.SaveTensor is not null) SampleCommand.CheckOutputFile(s.SaveTensor, "--save-tensor");
        using var run = RunFolder.Open(output, settings, count, bs, (shardK, shardN),
            i => new JsonObject { ["index"] = i, ["seed"] = s.Seed + i, ["file"] = latentOut ? null : RunFolder.FileName(i) });
        var myBatches = run.Batches;
        int stepsRun = endStep - firstStep;

        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        int written = 0, skipped = 0;
        bool keepTensor = latentOut || s.SaveTensor is not null;
        try
        {
            AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask(mode, maxValue: Math.Max(1, myBatches.Count * stepsRun));
                    for (int bi = 0; bi < myBatches.Count; bi++)
                    {
                        int b = myBatches[bi];
                        var idx = run.IndicesOf(b);
                        if (run.IsDone(b, images: !latentOut, tensor: keepTensor))
                        {
                            skipped += idx.Length;
                            task.Value = (bi + 1) * stepsRun;
                            continue;
                        }
                        using var scope = NewDisposeScope();
                        using var source = new NoiseSource(idx.Select(i => s.Seed + i));
                        var sw = System.Diagnostics.Stopwatch.StartNew();
                        int batchNo = bi;
                        var latents = Generate(idx, source, guidance, st =>
                        {
                            StartupTrace.FirstStep();
                            int done = st.Index + 1 - firstStep;
                            task.Value = batchNo * stepsRun + done;
                            task.Description = $"batch {batchNo + 1}/{myBatches.Count} step {done}/{stepsRun} {done / Math.Max(sw.Elapsed.TotalSeconds, 1e-9):F2} it/s";
                        }, ct);
                        if (latentOut) run.SaveBatch(b, null, latents);
                        else
                        {
                            var images = sd.Decode(latents);
                            if (crop is not null) images = crop.PasteBack(images);
                            run.SaveBatch(b, images * 2 - 1, s.SaveTensor is null ? null : images);
                            if (bi == 0 && controlImage is not null && controlImage.shape[1] is 1 or 3)
                                Png.Save(Path.Combine(output, ControlFile), controlImage[0].clamp(0, 1) * 2 - 1);
                        }
                        latents.Dispose();
                        written += idx.Length;
                        task.Value = (bi + 1) * stepsRun;
                    }
                });
        }
        catch (OperationCanceledException)
        {
            AnsiConsole.MarkupLine($"[yellow]stopped: {written} images written this time ({skipped} were already there); rerun the same command to resume[/]");
            return ExitCodes.Cancelled;
        }

        if (!latentOut) run.SaveGrid(3);
        string? tensorOut = s.SaveTensor ?? (latentOut ? Path.Combine(output, LatentsFile) : null);
        if (tensorOut is not null)
        {
            using var all = run.CollectTensors();
            Npy.Save(tensorOut, all);
        }
        AnsiConsole.MarkupLine(latentOut
            ? $"{written} latents computed, {skipped} already present → {Markup.Escape(tensorOut!)} ({RunFile} in {Markup.Escape(output)})"
            : $"{written} images written, {skipped} already present → {Markup.Escape(output)} (grid.png, {RunFile})");
        return 0;
    }

    /// <summary>--compare methods: none, cfg:W, pag:S, sag:S, seg:S, slg:S, apg:W, cfgzero:W and their + combinations.</summary>
    private static IReadOnlyList<MethodToken> CompareMethods(string spec)
    {
        var methods = MethodTokens.Parse(spec);
        if (methods.Count == 0) throw new PagSharpException("--compare is empty; give methods such as none,cfg:7.5,pag:3,cfg:7.5+pag:3");
        return methods;
    }

    /// <summary>
    /// The comparison grid: for every method the same seeds (rows) and initial noise, in one batch per method; the
    /// first column is the input image (img2img, inpaint) or the control image when there is one. Writes
    /// OUTPUT/compare.png (and --save-tensor: the images in [0, 1], row-major).
    /// </summary>
    private static int RunCompare(Txt2ImgSettings s, StableDiffusion sd, string output, IReadOnlyList<MethodToken> methods, int count,
                                  Func<int[], NoiseSource, GuidanceSettings, Action<LoopStep>?, CancellationToken, Tensor> generate,
                                  Tensor? inputColumn, SdControl? control, CancellationToken cancellationToken)
    {
        var guidances = methods.Select(m => m.Apply(s.BuildGuidance(sd.Unet.AttentionLayers, m.Cfg, m.Pag, m.Sag, m.Seg, m.Slg), s.ApgFromOptions())).ToArray();
        var idx = Enumerable.Range(0, count).ToArray();
        var seeds = idx.Select(i => s.Seed + i).ToArray();
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, ConsoleCancellation.CtrlC()).Token;
        var columns = new List<Tensor>();
        var labels = new List<string>();
        if (inputColumn is not null)
        {
            columns.Add(inputColumn);
            labels.Add("input");
        }
        else if (control is not null && control.Image.shape[1] is 1 or 3)
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
                    var latents = generate(idx, source, guidances[c], st => task.Value = st.Index + 1, ct);
                    columns.Add(sd.Decode(latents).MoveToOuterDisposeScope());
                    labels.Add(methods[c].Label);
                }
            });
        }
        catch (OperationCanceledException)
        {
            foreach (var t in columns) t.Dispose();
            AnsiConsole.MarkupLine("[yellow]stopped: nothing written[/]");
            return ExitCodes.Cancelled;
        }
        Directory.CreateDirectory(output);
        using var grid = stack(columns.ToArray(), 1).flatten(0, 1); // row-major: (seed r, column c) at r * cols + c
        string file = Path.Combine(output, CompareFile);
        Grid.SaveLabelled(file, grid * 2 - 1, count, columns.Count, labels, seeds.Select(x => $"seed {x}").ToArray(), 1);
        if (s.SaveTensor is not null) Npy.Save(s.SaveTensor, grid);
        foreach (var t in columns) t.Dispose();
        AnsiConsole.MarkupLine($"wrote {Markup.Escape(file)} ({count} seeds × {labels.Count} columns: {Markup.Escape(string.Join(", ", labels))})");
        return 0;
    }
}
