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

namespace PagSharp.Cli.Commands;

/// <summary>
/// <c>pag txt2img</c>: Stable Diffusion 1.x/2.x and SDXL text-to-image from a diffusers folder with CFG and PAG, as
/// diffusers' StableDiffusionPAGPipeline / StableDiffusionXLPAGPipeline (and the shared run of <c>pag img2img</c> and
/// <c>pag inpaint</c>). Like <c>pag sample</c>: one PNG per image, grid.png, run.json with every setting and
/// per-image seed, progress, resume into the same folder (finished batches are skipped; a folder holding a different
/// run is refused, with the differing settings listed), shards.
/// </summary>
public sealed class Txt2ImgCommand : Command<Txt2ImgSettings>
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

        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, App.CtrlC()).Token;
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
            return App.ExitCancelled;
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

    /// <summary>"FILE" or "FILE:SCALE" (the scale after the last colon, when what precedes it is a file).</summary>
    internal static (string File, double Scale) ParseLora(string spec)
    {
        int colon = spec.LastIndexOf(':');
        if (colon > 0 && File.Exists(spec[..colon]))
        {
            string v = spec[(colon + 1)..];
            return double.TryParse(v, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double sc) && double.IsFinite(sc)
                ? (spec[..colon], sc)
                : throw new PagSharpException($"--lora '{spec}': '{v}' is not a scale (a number such as 0.8)");
        }
        return File.Exists(spec) ? (spec, 1.0) : throw new PagSharpException($"--lora '{spec}': the file does not exist");
    }

    /// <summary>Prompt embeddings (and SDXL's pooled ones) for the run, from text or tensors, checked against the model.</summary>
    private sealed record Texts(Tensor Prompt, Tensor? Negative, Tensor? Pooled, Tensor? NegativePooled) : IDisposable
    {
        public void Dispose()
        {
            Prompt.Dispose();
            Negative?.Dispose();
            Pooled?.Dispose();
            NegativePooled?.Dispose();
        }
    }

    private static Texts EncodeTexts(Txt2ImgSettings s, StableDiffusion sd, bool cfg, int count)
    {
        if (!sd.IsXl)
        {
            var pe = s.Prompt is not null ? Encode(sd, s.Prompt, s.ClipSkip) : LoadEmbeds(s.PromptEmbeds!, "--prompt-embeds", sd, count);
            var ne = !cfg ? null
                : s.NegativePromptEmbeds is not null ? LoadEmbeds(s.NegativePromptEmbeds, "--negative-prompt-embeds", sd, count)
                : Encode(sd, s.NegativePrompt ?? "", 0); // diffusers applies clip_skip to the prompt only
            if (ne is not null && !ne.shape[1..].SequenceEqual(pe.shape[1..]))
                throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", ne.shape)}] but the prompt embeddings [{string.Join(",", pe.shape)}]; they must match");
            return new Texts(pe, ne, null, null);
        }
        Tensor prompt, pooled;
        if (s.Prompt is not null)
        {
            (prompt, pooled) = sd.EncodePromptXl(s.Prompt, s.Prompt2, s.ClipSkip, out var warning);
            if (warning is not null) AnsiConsole.MarkupLine($"[yellow]warning:[/] {Markup.Escape(warning)}");
        }
        else
        {
            prompt = LoadEmbeds(s.PromptEmbeds!, "--prompt-embeds", sd, count);
            pooled = LoadPooled(s.PooledPromptEmbeds!, "--pooled-prompt-embeds", count);
        }
        Tensor? neg = null, negPooled = null;
        if (cfg && s.NegativePromptEmbeds is not null)
        {
            neg = LoadEmbeds(s.NegativePromptEmbeds, "--negative-prompt-embeds", sd, count);
            negPooled = LoadPooled(s.NegativePooledPromptEmbeds!, "--negative-pooled-prompt-embeds", count);
        }
        else if (cfg && s.NegativePrompt is null && sd.Folder.ForceZerosForEmptyPrompt)
            (neg, negPooled) = (zeros_like(prompt), zeros_like(pooled));
        else if (cfg)
            (neg, negPooled) = sd.EncodePromptXl(s.NegativePrompt ?? "", s.NegativePrompt2, 0, out _);
        if (neg is not null && !neg.shape[1..].SequenceEqual(prompt.shape[1..]))
            throw new PagSharpException($"negative prompt embeddings have shape [{string.Join(",", neg.shape)}] but the prompt embeddings [{string.Join(",", prompt.shape)}]; they must match");
        if (negPooled is not null && negPooled.shape[1] != pooled.shape[1])
            throw new PagSharpException($"negative pooled prompt embeddings have width {negPooled.shape[1]} but the pooled prompt embeddings {pooled.shape[1]}; they must match");
        return new Texts(prompt, neg, pooled, negPooled);
    }

    /// <summary>Pooled embeddings [1 or count, P] from a tensor spec.</summary>
    private static Tensor LoadPooled(string spec, string option, int count)
    {
        var t = TensorSpec.Load(spec);
        if (!t.is_floating_point()) throw new PagSharpException($"{option} '{spec}' holds {t.dtype} values; expected floating-point embeddings");
        if (t.dim() == 1) t = t.unsqueeze(0);
        if (t.dim() != 2 || (t.shape[0] != 1 && t.shape[0] != count))
            throw new PagSharpException($"{option} '{spec}' has shape [{string.Join(",", t.shape)}]; expected [1,P] or [{count},P] (one row, or one per image)");
        return t.to_type(ScalarType.Float32);
    }

    private static bool IsTensorSpec(string spec) => Path.GetExtension(spec.Split(':')[0]).ToLowerInvariant() is not (".png" or ".jpg" or ".jpeg")
        || !File.Exists(spec) && spec.Contains(':');

    private static Tensor LoadImageTensor(string spec)
    {
        var t = TensorSpec.Load(spec);
        if (!t.is_floating_point()) throw new PagSharpException($"--image '{spec}' holds {t.dtype} values; expected floating-point values (pixels in [0, 1], or latents)");
        if (t.dim() == 3) t = t.unsqueeze(0);
        if (t.dim() != 4) throw new PagSharpException($"--image '{spec}' has shape [{string.Join(",", t.shape)}]; expected [N,3,H,W] (pixels) or [N,C,h,w] (latents)");
        return t.to_type(ScalarType.Float32);
    }

    /// <summary>A tensor image checked against the model: 3 channels (pixels at the generation size) or the latent channels.</summary>
    private static Tensor CheckTensorImage(Tensor t, string spec, Txt2ImgSettings s, StableDiffusion sd)
    {
        long c = sd.Unet.Config.OutChannels;
        if (t.shape[1] != 3 && t.shape[1] != c)
            throw new PagSharpException($"--image '{spec}' has {t.shape[1]} channels; expected 3 (pixels in [0, 1]) or {c} (image latents of this model)");
        int f = t.shape[1] == 3 ? 1 : sd.VaeScaleFactor;
        if ((s.Height is { } h && h != t.shape[2] * f) || (s.Width is { } w && w != t.shape[3] * f))
            throw new PagSharpException($"--image '{spec}' gives {t.shape[3] * f}×{t.shape[2] * f} images but --width/--height ask for {s.Width ?? (int)(t.shape[3] * f)}×{s.Height ?? (int)(t.shape[2] * f)}; a tensor image must already have the generation size (give a PNG to have it resized)");
        return t.alias();
    }

    /// <summary>
    /// The inpainting mask [1 or N, 1, H, W] in [0, 1]: a PNG/JPEG converted to grey (ITU-R 601 luma, as PIL's "L") and
    /// Lanczos-resized to the image size, or a tensor at the image size; blurred with --mask-blur (before the pipeline binarises it).
    /// </summary>
    private static Tensor LoadMask(InpaintSettings s, int height, int width, int count)
    {
        string spec = s.MaskImage!;
        Tensor m;
        if (IsTensorSpec(spec))
        {
            var t = TensorSpec.Load(spec);
            if (!t.is_floating_point()) throw new PagSharpException($"--mask-image '{spec}' holds {t.dtype} values; expected floating-point values in [0, 1]");
            m = t.dim() == 2 ? t.unsqueeze(0).unsqueeze(0) : t.dim() == 3 ? t.unsqueeze(1) : t;
            m = m.to_type(ScalarType.Float32);
        }
        else
        {
            var rgb = ControlImage.Load(spec, width, height, 1);
            m = (rgb[.., 0..1] * 0.299 + rgb[.., 1..2] * 0.587 + rgb[.., 2..3] * 0.114);
        }
        if (m.dim() != 4 || m.shape[1] != 1 || m.shape[2] != height || m.shape[3] != width)
            throw new PagSharpException($"--mask-image '{spec}' has shape [{string.Join(",", m.shape)}]; the mask must be one channel at the image size: [1 or {count},1,{height},{width}]");
        if (m.shape[0] != 1 && m.shape[0] != count)
            throw new PagSharpException($"--mask-image '{spec}' holds {m.shape[0]} masks but --count is {count}; give one, or one per image");
        if (s.MaskBlur > 0)
        {
            int k = 2 * (int)Math.Ceiling(3 * s.MaskBlur) + 1;
            k = Math.Min(k, 2 * (Math.Min(height, width) / 2) - 1);
            if (k >= 3) m = GaussianBlur.Apply(m, k, s.MaskBlur);
        }
        return m;
    }

    /// <summary>diffusers' padding_mask_crop: the full image and mask, the crop region, and the crop at the generation size.</summary>
    private sealed record MaskCrop(byte[] Original, byte[] MaskL, int W, int H, (int X1, int Y1, int X2, int Y2) Region, Tensor Image, Tensor Mask)
    {
        /// <summary>Generated images [N, 3, h, w] in [0, 1] pasted back into the original: [N, 3, H, W].</summary>
        public Tensor PasteBack(Tensor images)
        {
            var rows = new List<Tensor>();
            for (int i = 0; i < images.shape[0]; i++)
            {
                var bytes = InpaintCrop.ToBytes(images[i]);
                var merged = InpaintCrop.Overlay(Original, MaskL, W, H, bytes, (int)images.shape[3], (int)images.shape[2], Region);
                rows.Add(InpaintCrop.ToTensor(merged, W, H, 3));
            }
            return cat(rows.ToArray(), 0);
        }
    }

    private static MaskCrop PrepareCrop(InpaintSettings s, int width, int height, int pad)
    {
        var rgb = Png.LoadRgb8(s.Image!, out int w, out int h);
        var maskRgb = Png.LoadRgb8(s.MaskImage!, out int mw, out int mh);
        if (mw != w || mh != h)
            throw new PagSharpException($"--mask-image '{s.MaskImage}' is {mw}×{mh} but --image is {w}×{h}; with --padding-mask-crop the mask must have the image's size");
        var maskL = InpaintCrop.Luma(maskRgb, w, h);
        var region = InpaintCrop.Region(maskL, w, h, width, height, pad);
        int cw = region.X2 - region.X1, ch = region.Y2 - region.Y1;
        var img = InpaintCrop.ToTensor(InpaintCrop.ResizeAndFill(InpaintCrop.Crop(rgb, w, 3, region), cw, ch, 3, width, height), width, height, 3);
        var m = InpaintCrop.ToTensor(InpaintCrop.ResizeAndFill(InpaintCrop.Crop(maskL, w, 1, region), cw, ch, 1, width, height), width, height, 1);
        if (s.MaskBlur > 0) m = GaussianBlur.Apply(m, Math.Min(2 * (int)Math.Ceiling(3 * s.MaskBlur) + 1, 2 * (Math.Min(height, width) / 2) - 1), s.MaskBlur);
        AnsiConsole.MarkupLine($"padding mask crop: region x {region.X1}..{region.X2}, y {region.Y1}..{region.Y2} of the {w}×{h} image, inpainted at {width}×{height}");
        return new MaskCrop(rgb, maskL, w, h, region, img, m);
    }

    /// <summary>The input-image column of a comparison grid ([count, 3, H, W] in [0, 1]); image latents are decoded.</summary>
    private static Tensor InputColumn(StableDiffusion sd, Tensor image, int count)
    {
        var idx = Enumerable.Range(0, count).ToArray();
        var img = image.shape[1] == 3 ? image.clamp(0, 1) : sd.Decode(image);
        return Rows(img, idx);
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
    /// first column is the input image (img2img, inpaint) or the control image when there is one. Writes
    /// OUTPUT/compare.png (and --save-tensor: the images in [0, 1], row-major).
    /// </summary>
    private static int RunCompare(Txt2ImgSettings s, StableDiffusion sd, string output, IReadOnlyList<CompareCommand.Method> methods, int count,
                                  Func<int[], NoiseSource, GuidanceSettings, Action<LoopStep>?, CancellationToken, Tensor> generate,
                                  Tensor? inputColumn, SdControl? control, CancellationToken cancellationToken)
    {
        var guidances = methods.Select(m => m.Apply(s.BuildGuidance(sd.Unet.AttentionLayers, m.Cfg, m.Pag, m.Sag, m.Seg, m.Slg), s.ApgFromOptions())).ToArray();
        var idx = Enumerable.Range(0, count).ToArray();
        var seeds = idx.Select(i => s.Seed + i).ToArray();
        var ct = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, App.CtrlC()).Token;
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
            return App.ExitCancelled;
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

    private static JsonObject Settings(Txt2ImgSettings s, string mode, StableDiffusion sd, string scheduler, GuidanceSettings g, int count, int width, int height,
                                       SdControl? control, string? controlNetPath, double strength)
    {
        var o = BaseSettings(s, sd, scheduler, g, count, width, height, control);
        foreach (var (key, value) in RunManifest.Guidance(g, sd.Unet.AttentionLayers)) o[key] = value;
        // Only SDXL and editing runs carry these, so run.json of earlier runs still matches on resume.
        if (sd.IsXl)
        {
            var m = s.MicroConditioning();
            static JsonNode? Pair((int, int)? p) => p is { } v ? new JsonArray(v.Item1, v.Item2) : null;
            o["prompt_2"] = s.Prompt2;
            o["negative_prompt_2"] = s.NegativePrompt2;
            o["pooled_prompt_embeds"] = s.PooledPromptEmbeds is null ? null : FullSpec(s.PooledPromptEmbeds);
            o["negative_pooled_prompt_embeds"] = s.NegativePooledPromptEmbeds is null ? null : FullSpec(s.NegativePooledPromptEmbeds);
            o["original_size"] = Pair(m.OriginalSize);
            o["crops_coords_top_left"] = Pair(m.CropsCoordsTopLeft);
            o["target_size"] = Pair(m.TargetSize);
            o["negative_original_size"] = Pair(m.NegativeOriginalSize);
            o["negative_crops_coords_top_left"] = Pair(m.NegativeCropsCoordsTopLeft);
            o["negative_target_size"] = Pair(m.NegativeTargetSize);
            o["force_zeros_for_empty_prompt"] = sd.Folder.ForceZerosForEmptyPrompt;
            if (sd.Folder.RequiresAestheticsScore)
            {
                o["aesthetic_score"] = m.AestheticScore;
                o["negative_aesthetic_score"] = m.NegativeAestheticScore;
            }
            o["denoising_end"] = s.DenoisingEnd;
        }
        if (s.VaeTiling) o["vae_tiling"] = true;
        if (s.Embedding is { Length: > 0 }) o["embeddings"] = new JsonArray(s.Embedding.Select(e => (JsonNode)e).ToArray());
        if (s.Lora is { Length: > 0 })
            o["lora"] = new JsonArray(s.Lora.Select(l => { var (f, sc) = ParseLora(l); return (JsonNode)new JsonObject { ["file"] = Path.GetFullPath(f), ["scale"] = sc }; }).ToArray());
        if (sd.Folder.SingleFile is { } single)
        {
            o["single_file_family"] = single.Family.ToString();
            o["config"] = Path.GetFullPath(sd.Folder.Root);
            o["tokenizer"] = s.Tokenizer is null ? null : Path.GetFullPath(s.Tokenizer);
        }
        if (s is Img2ImgSettings e)
        {
            o["mode"] = mode;
            o["image"] = FullSpec(e.Image!);
            o["strength"] = strength;
            o["denoising_start"] = e.DenoisingStart;
            if (e is InpaintSettings ip)
            {
                o["mask_image"] = FullSpec(ip.MaskImage!);
                o["masked_image_latents"] = ip.MaskedImageLatents is null ? null : FullSpec(ip.MaskedImageLatents);
                o["mask_blur"] = ip.MaskBlur;
                o["padding_mask_crop"] = ip.PaddingMaskCrop;
            }
        }
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

/// <summary><c>pag img2img</c>: image-to-image with CFG and PAG, as diffusers' StableDiffusion(XL)PAGImg2ImgPipeline.</summary>
public sealed class Img2ImgCommand : Command<Img2ImgSettings>
{
    public override int Execute(CommandContext context, Img2ImgSettings s, CancellationToken cancellationToken) => Txt2ImgCommand.Run(s, "img2img", cancellationToken);
}

/// <summary><c>pag inpaint</c>: inpainting with CFG and PAG, as diffusers' StableDiffusion(XL)PAGInpaintPipeline (9-channel and 4-channel UNets).</summary>
public sealed class InpaintCommand : Command<InpaintSettings>
{
    public override int Execute(CommandContext context, InpaintSettings s, CancellationToken cancellationToken) => Txt2ImgCommand.Run(s, "inpaint", cancellationToken);
}
