using PagSharp.IO;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// <c>pag img2img</c> and <c>pag inpaint</c> on the complete tiny SD folder: what the pipelines guarantee by
/// construction (a 4-channel inpainting run keeps the unmasked latents, the strength selects the steps), and bad input.
/// Parity with diffusers is in <see cref="SdEditParityTests"/>.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class EditCliTests : IDisposable
{
    private readonly TinySdFolder _sd = new();
    private static string Sampling => SdFixtures.Unet("sampling.safetensors");

    public void Dispose() => _sd.Dispose();

    /// <summary>Image latents [1,4,32,32] (the tiny UNet's sample size) and their 64×64 pixel size (VAE scale factor 2).</summary>
    private string Latents(out int pixels)
    {
        string file = _sd.Dir.File("image_latents.npy");
        using var gen = new TorchSharp.torch.Generator(5);
        using var lat = randn(new long[] { 1, 4, 32, 32 }, generator: gen);
        Npy.Save(file, lat);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: false, TextEncoder: false));
        pixels = 32 * sd.VaeScaleFactor;
        return file;
    }

    private string Mask(int pixels, out Tensor mask)
    {
        string file = _sd.Dir.File("mask.npy");
        mask = zeros(1, 1, pixels, pixels);
        mask[.., .., (pixels / 4)..(pixels / 2), (pixels / 8)..(3 * pixels / 4)] = tensor(1f);
        Npy.Save(file, mask);
        return file;
    }

    private string[] Common(string outDir, string tensorOut) =>
        ["--model", _sd.Root, "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds",
         "--guidance-scale", "5", "--pag-scale", "3", "--steps", "5", "--scheduler", "ddim", "--count", "1",
         "--output-type", "latent", "--save-tensor", tensorOut, "--output", outDir];

    [Theory]
    [InlineData("1.0")]
    [InlineData("0.6")]
    public void Inpaint_WithAFourChannelUNet_KeepsTheUnmaskedLatentsExactly(string strength)
    {
        string image = Latents(out int pixels);
        string maskFile = Mask(pixels, out var mask);
        string outFile = _sd.Dir.File("inpaint.npy");
        var (exit, log) = Pag.Run([.. new[] { "inpaint", "--image", image, "--mask-image", maskFile, "--strength", strength },
            .. Common(_sd.Dir.File("out_inpaint"), outFile)]);
        Assert.True(exit == 0, log);
        using var result = Npy.Load(outFile);
        using var original = Npy.Load(image);
        using var keep = nn.functional.interpolate(mask, new long[] { 32, 32 }, mode: InterpolationMode.Nearest) < 0.5;
        using var kept = keep.expand(1, 4, 32, 32);
        // The last blend takes the clean image latents wherever the mask is black.
        Assert.True(result.masked_select(kept).eq(original.masked_select(kept)).all().item<bool>(), "unmasked latents changed");
        // … and the white region was denoised.
        Assert.False(result.masked_select(kept.logical_not()).allclose(original.masked_select(kept.logical_not())), "the masked region was not repainted");
    }

    [Fact]
    public void Img2Img_StrengthSelectsTheLastSteps()
    {
        // At strength 0.4 of 5 DDIM steps the run is the last 2 steps: the same as strength 0.5 (⌊5·0.5⌋ = 2), and
        // different from strength 0.6 (3 steps).
        string image = Latents(out _);
        Tensor Run(string strength)
        {
            string f = _sd.Dir.File($"i2i_{strength}.npy");
            var (exit, log) = Pag.Run([.. new[] { "img2img", "--image", image, "--strength", strength }, .. Common(_sd.Dir.File("out_" + strength), f)]);
            Assert.True(exit == 0, log);
            return Npy.Load(f);
        }
        using var a = Run("0.4");
        using var b = Run("0.5");
        using var c = Run("0.6");
        Assert.True(a.eq(b).all().item<bool>());
        Assert.False(a.allclose(c));
    }

    [Theory]
    [InlineData("img2img", "--strength", "1.5", "Strength must be in (0, 1]")]
    [InlineData("img2img", "--strength", "0", "Strength must be in (0, 1]")]
    [InlineData("img2img", "--strength", "0.1", "leaves ⌊5·0.1⌋ = 0 steps")]
    [InlineData("img2img", "--denoising-start", "0.5", "apply to SDXL models only")]
    [InlineData("inpaint", "--mask-blur", "-1", "--mask-blur must be ≥ 0")]
    public void BadSettings_FailBeforeWritingAnything(string command, string option, string value, string message)
    {
        string image = Latents(out int pixels);
        string outDir = _sd.Dir.File("out_bad");
        var args = new List<string> { command, "--image", image, option, value };
        if (command == "inpaint") args.AddRange(["--mask-image", Mask(pixels, out _)]);
        args.AddRange(Common(outDir, _sd.Dir.File("bad.npy")));
        var (exit, log) = Pag.Run(args.ToArray());
        Assert.NotEqual(0, exit);
        Assert.Contains(message, log);
        Assert.DoesNotContain("   at ", log);
        Assert.False(Directory.Exists(outDir), "output written for a refused run");
    }

    [Fact]
    public void AMaskOfAnotherSize_IsRefused()
    {
        string image = Latents(out int pixels);
        string maskFile = _sd.Dir.File("small_mask.npy");
        using (var m = ones(1, 1, pixels / 2, pixels)) Npy.Save(maskFile, m);
        string outDir = _sd.Dir.File("out_mask");
        var (exit, log) = Pag.Run([.. new[] { "inpaint", "--image", image, "--mask-image", maskFile }, .. Common(outDir, _sd.Dir.File("m.npy"))]);
        Assert.NotEqual(0, exit);
        Assert.Contains($"the mask must be one channel at the image size: [1 or 1,1,{pixels},{pixels}]", log);
        Assert.False(Directory.Exists(outDir));
    }

    [Fact]
    public void AnImageThatIsNotAnImage_IsRefused()
    {
        string fake = _sd.Dir.File("photo.png");
        File.WriteAllText(fake, "this is not a PNG");
        string outDir = _sd.Dir.File("out_fake");
        var (exit, log) = Pag.Run([.. new[] { "img2img", "--image", fake }, .. Common(outDir, _sd.Dir.File("f.npy"))]);
        Assert.NotEqual(0, exit);
        Assert.Contains("photo.png", log);
        Assert.DoesNotContain("   at ", log);
        Assert.False(Directory.Exists(outDir));
    }

    [Fact]
    public void InpaintWithoutAMask_AndImg2ImgWithoutAnImage_AreRefused()
    {
        string image = Latents(out _);
        var (exit, log) = Pag.Run([.. new[] { "inpaint", "--image", image }, .. Common(_sd.Dir.File("o1"), _sd.Dir.File("a.npy"))]);
        Assert.NotEqual(0, exit);
        Assert.Contains("pag inpaint needs --mask-image", log);
        (exit, log) = Pag.Run(["img2img", .. Common(_sd.Dir.File("o2"), _sd.Dir.File("b.npy"))]);
        Assert.NotEqual(0, exit);
        Assert.Contains("pag img2img needs --image", log);
    }

    [Fact]
    public void APngMask_AndAPngImage_GiveTheSameRunAsTheirTensors()
    {
        // A black/white PNG mask is grey 0 or 1 after the luma conversion, so it must reproduce the tensor mask run;
        // the image PNG holds the 8-bit values of the tensor image.
        _ = Latents(out int pixels);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: false, TextEncoder: false));
        string maskNpy = Mask(pixels, out var mask), maskPng = _sd.Dir.File("mask.png");
        PagSharp.Imaging.Png.Save(maskPng, mask[0].expand(3, -1, -1) * 2 - 1);
        using var gen = new TorchSharp.torch.Generator(9);
        using var img = (rand(new long[] { 1, 3, pixels, pixels }, generator: gen) * 255).round() / 255;
        string imgNpy = _sd.Dir.File("img.npy"), imgPng = _sd.Dir.File("img.png");
        Npy.Save(imgNpy, img);
        PagSharp.Imaging.Png.Save(imgPng, img[0] * 2 - 1);
        Tensor Run(string image, string maskFile, string name)
        {
            string f = _sd.Dir.File(name + ".npy");
            var (exit, log) = Pag.Run([.. new[] { "inpaint", "--image", image, "--mask-image", maskFile, "--strength", "0.8" }, .. Common(_sd.Dir.File("out_" + name), f)]);
            Assert.True(exit == 0, log);
            return Npy.Load(f);
        }
        using var fromTensors = Run(imgNpy, maskNpy, "tensors");
        using var fromPngs = Run(imgPng, maskPng, "pngs");
        Models.Close.Assert(fromTensors, fromPngs, 1e-5, "PNG inputs");
    }

    [Fact]
    public void Compare_StartsWithTheInputImage()
    {
        string image = Latents(out int pixels);
        string outDir = _sd.Dir.File("out_cmp");
        var (exit, log) = Pag.Run("img2img", "--model", _sd.Root, "--image", image, "--strength", "0.6", "--prompt-embeds", Sampling + ":prompt_embeds",
            "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds", "--steps", "5", "--scheduler", "ddim", "--count", "2",
            "--compare", "none,cfg:5+pag:3", "--output", outDir);
        Assert.True(exit == 0, log);
        Assert.Contains("3 columns: input, none, cfg:5+pag:3", log);
        Assert.True(File.Exists(Path.Combine(outDir, "compare.png")));
    }

    [Fact]
    public void CropRegion_FollowsDiffusersGetCropRegion()
    {
        // Mask pixels in x 40..59, y 45..49 of a 100×100 image, pad 2 → (38, 43, 62, 52), 24×9; grown to the 1:1
        // generation size: height 24, centred (diff 15: 7 above, 8 below) → (38, 36, 62, 60).
        var m = new byte[100 * 100];
        for (int y = 45; y < 50; y++) for (int x = 40; x < 60; x++) m[y * 100 + x] = 255;
        Assert.Equal((38, 36, 62, 60), PagSharp.Imaging.InpaintCrop.Region(m, 100, 100, 64, 64, 2));
        // Near the border the region is shifted back inside the image.
        var edge = new byte[100 * 100];
        for (int y = 95; y < 100; y++) for (int x = 0; x < 30; x++) edge[y * 100 + x] = 255;
        var (x1, y1, x2, y2) = PagSharp.Imaging.InpaintCrop.Region(edge, 100, 100, 64, 64, 0);
        Assert.Equal((0, 70, 30, 100), (x1, y1, x2, y2));
        Assert.Throws<PagSharpException>(() => PagSharp.Imaging.InpaintCrop.Region(new byte[100 * 100], 100, 100, 64, 64, 0));
    }

    [Fact]
    public void PaddingMaskCrop_InpaintsTheCropAndKeepsTheRestOfTheImage()
    {
        _ = Latents(out int pixels);
        // A 96×80 photo (width × height) with a white rectangle to repaint; generation at the UNet's size.
        int w = 96, h = 80;
        using var gen = new TorchSharp.torch.Generator(3);
        using var photo = rand(new long[] { 3, h, w }, generator: gen);
        using var maskT = zeros(3, h, w);
        maskT[.., 30..50, 40..70] = tensor(1f);
        string photoPng = _sd.Dir.File("photo.png"), maskPng = _sd.Dir.File("crop_mask.png"), outDir = _sd.Dir.File("out_crop");
        PagSharp.Imaging.Png.Save(photoPng, photo * 2 - 1);
        PagSharp.Imaging.Png.Save(maskPng, maskT * 2 - 1);
        var (exit, log) = Pag.Run("inpaint", "--model", _sd.Root, "--image", photoPng, "--mask-image", maskPng, "--padding-mask-crop", "4",
            "--prompt-embeds", Sampling + ":prompt_embeds", "--negative-prompt-embeds", Sampling + ":negative_prompt_embeds",
            "--steps", "5", "--scheduler", "ddim", "--count", "1", "--output", outDir);
        Assert.True(exit == 0, log);
        Assert.Contains($"inpainted at {pixels}×{pixels}", log);
        var original = PagSharp.Imaging.Png.LoadRgb8(photoPng, out _, out _);
        var result = PagSharp.Imaging.Png.LoadRgb8(Path.Combine(outDir, "00000.png"), out int rw, out int rh);
        Assert.Equal((w, h), (rw, rh));
        int changed = 0, changedOutside = 0;
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
            {
                bool inMask = y >= 30 && y < 50 && x >= 40 && x < 70;
                bool diff = Enumerable.Range(0, 3).Any(c => original[(y * w + x) * 3 + c] != result[(y * w + x) * 3 + c]);
                if (diff && inMask) changed++;
                if (diff && !inMask) changedOutside++;
            }
        Assert.Equal(0, changedOutside);
        Assert.True(changed > 20 * 30 / 2, $"only {changed} of the {20 * 30} masked pixels changed");
    }

    [Fact]
    public void TheLibrarysOneCall_GivesWhatTheCliGives()
    {
        // StableDiffusion.ImageToImage (prompt encoding in the library) and pag img2img (the CLI's own) on the same
        // prompt, image, seeds and guidance: identical latents.
        string image = Latents(out _);
        string t = _sd.Dir.File("cli.npy");
        var (exit, log) = Pag.Run("img2img", "--model", _sd.Root, "--prompt", "hello cat", "--image", image, "--strength", "0.6",
            "--guidance-scale", "5", "--pag-scale", "3", "--steps", "5", "--scheduler", "ddim", "--seed", "3", "--count", "2",
            "--output-type", "latent", "--save-tensor", t, "--output", _sd.Dir.File("o_cli"));
        Assert.True(exit == 0, log);
        using var sd = PagSharp.Pipelines.StableDiffusion.Load(_sd.Root, new PagSharp.Pipelines.SdComponents(Vae: true, TextEncoder: true));
        var g = new PagSharp.Guidance.GuidanceSettings
        {
            GuidanceScale = 5, PagScale = new PagSharp.Guidance.ScaleSchedule.Constant(3),
            PagLayers = PagSharp.Attention.DiffusersLayerSpec.Resolve("mid", sd.Unet.AttentionLayers),
        };
        using var img = Npy.Load(image);
        using var lib = sd.ImageToImage("hello cat", img, [3, 4], g, strength: 0.6, steps: 5, decode: false);
        using var cli = Npy.Load(t);
        Assert.True(lib.eq(cli).all().item<bool>(), "library and CLI differ");
    }
}
