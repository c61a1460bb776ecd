using System.Text.Json.Nodes;
using PagSharp.IO;
using PagSharp.Models.Sd;
using PagSharp.Pipelines;
using PagSharp.Tests.Cli;
using PagSharp.Tests.IO;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// Original single-file checkpoints made from the tiny diffusers fixtures by diffusers' own conversion scripts
/// (tests/fixtures/single_file, README section 13) load to exactly the folder's weights; family detection and the
/// shipped configs match the key lists of the real SD 1.5, SD 1.5 inpainting, SD 2.1 and SDXL checkpoints; LoRA files
/// merge as diffusers' load_lora_weights + fuse_lora; a textual-inversion embedding encodes as diffusers does.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class SingleFileParityTests
{
    private static string File_(string name) => Fixtures.Path("single_file", name);

    private static void AssertSameWeights(Dictionary<string, Tensor> expected, Dictionary<string, Tensor> actual, string what)
    {
        Assert.Equal(expected.Keys.OrderBy(k => k), actual.Keys.OrderBy(k => k));
        foreach (var (k, e) in expected)
            Assert.True(e.eq(actual[k]).all().item<bool>(), $"{what}: {k} differs");
    }

    [Theory]
    [InlineData("sd15_tiny.safetensors", "sd_edit_tiny/img2img", SdFamily.Sd1)]
    [InlineData("sdxl_tiny.safetensors", "sdxl_tiny", SdFamily.SdxlBase)]
    [InlineData("sd2_tiny.safetensors", "single_file/sd2_tiny_diffusers", SdFamily.Sd2)]
    public void ASingleFile_LoadsToTheFoldersWeights(string file, string folder, SdFamily family)
    {
        string dir = Fixtures.Path(folder.Split('/'));
        using var fromFolder = StableDiffusion.Load(dir, new SdComponents(Vae: true, TextEncoder: false));
        using var fromFile = StableDiffusion.LoadSingleFile(File_(file), dir, null, new SdComponents(Vae: true, TextEncoder: false));
        Assert.Equal(family, fromFile.Folder.SingleFile!.Family);
        AssertSameWeights(fromFolder.Unet.state_dict(), fromFile.Unet.state_dict(), "UNet");
        AssertSameWeights(fromFolder.Vae!.state_dict(), fromFile.Vae!.state_dict(), "VAE");
        var folderDiffusers = DiffusersFolder.Open(dir);
        var single = DiffusersFolder.ForSingleFile(fromFile.Folder.SingleFile, dir, null);
        foreach (var component in new[] { "text_encoder", "text_encoder_2" })
        {
            if (!folderDiffusers.Has(component)) continue;
            using var a = component == "text_encoder" ? folderDiffusers.LoadTextEncoder() : folderDiffusers.LoadTextEncoder2();
            using var b = component == "text_encoder" ? single.LoadTextEncoder() : single.LoadTextEncoder2();
            AssertSameWeights(a.state_dict(), b.state_dict(), component);
        }
    }

    [Fact]
    public void AUnetOnlyFile_LoadsWhatItHas_AndNamesWhatIsMissing()
    {
        string dir = Fixtures.Path("sd_edit_tiny", "img2img");
        using (var sd = StableDiffusion.LoadSingleFile(File_("sd15_unet_only.safetensors"), dir, null, new SdComponents(Vae: false, TextEncoder: false)))
        using (var folder = StableDiffusion.Load(dir, new SdComponents(Vae: false, TextEncoder: false)))
            AssertSameWeights(folder.Unet.state_dict(), sd.Unet.state_dict(), "UNet");
        var ex = Assert.Throws<PagSharpException>(() => StableDiffusion.LoadSingleFile(File_("sd15_unet_only.safetensors"), dir, null, new SdComponents(Vae: true, TextEncoder: false)));
        Assert.Contains("holds no VAE", ex.Message);
    }

    [Fact]
    public void ACkptFile_ReadByTheSafeUnpickler_LoadsTheSameWeights()
    {
        // sd15_unet_only.ckpt: torch.save({"state_dict": …, "global_step": 1}) of the safetensors file's tensors (README §13).
        string dir = Fixtures.Path("sd_edit_tiny", "img2img");
        using var a = StableDiffusion.LoadSingleFile(File_("sd15_unet_only.safetensors"), dir, null, new SdComponents(false, false));
        using var b = StableDiffusion.LoadSingleFile(File_("sd15_unet_only.ckpt"), dir, null, new SdComponents(false, false));
        AssertSameWeights(a.Unet.state_dict(), b.Unet.state_dict(), ".ckpt");
    }

    [Fact]
    public void TheCli_RunsASingleFile_AsItsFolder()
    {
        using var dir = new TempDir();
        string cases = Fixtures.Path("sd_edit_tiny", "cases.safetensors"), folder = Fixtures.Path("sd_edit_tiny", "img2img");
        Tensor Run(string model, params string[] extra)
        {
            string t = dir.File(Guid.NewGuid().ToString("N") + ".npy");
            var (exit, log) = Pag.Run([.. new[] { "txt2img", "--model", model, "--prompt-embeds", cases + ":run_in.prompt_embeds", "--negative-prompt-embeds", cases + ":run_in.negative_prompt_embeds",
                "--steps", "3", "--count", "2", "--output-type", "latent", "--save-tensor", t, "--output", dir.File("o" + Guid.NewGuid().ToString("N")) }, .. extra]);
            Assert.True(exit == 0, log);
            return Npy.Load(t);
        }
        using var a = Run(folder);
        using var b = Run(File_("sd15_tiny.safetensors"), "--config", folder);
        Assert.True(a.eq(b).all().item<bool>(), "single file and folder runs differ");
    }

    [Fact]
    public void TheIssuesCommand_SingleFileWithLoraAndAPrompt_Runs()
    {
        // `pag txt2img --model sd15.safetensors --lora style.safetensors:0.8 --prompt …` on the fixture equivalents:
        // the converted SD 1.5 file, its configs, a CLIP vocabulary (the toy one) and the PEFT LoRA.
        using var dir = new TempDir();
        string tok = dir.File("tokenizer");
        ToyClip.Write(tok);
        string folder = Fixtures.Path("sd_edit_tiny", "img2img");
        Tensor Run(string name, params string[] extra)
        {
            string t = dir.File(name + ".npy");
            var (exit, log) = Pag.Run([.. new[] { "txt2img", "--model", File_("sd15_tiny.safetensors"), "--config", folder, "--tokenizer", tok,
                "--prompt", "hello cat", "--steps", "3", "--count", "1", "--save-tensor", t, "--output", dir.File(name) }, .. extra]);
            Assert.True(exit == 0, log);
            Assert.True(File.Exists(Path.Combine(dir.File(name), "00000.png")));
            return Npy.Load(t);
        }
        using var plain = Run("plain");
        using var styled = Run("lora", "--lora", Fixtures.Path("lora", "sd15_lora_peft.safetensors") + ":0.8");
        Assert.False(plain.allclose(styled), "the LoRA changed nothing");
        var (exit2, log2) = Pag.Run("txt2img", "--model", File_("sd15_tiny.safetensors"), "--config", folder, "--prompt", "hello", "--output", dir.File("notok"));
        Assert.NotEqual(0, exit2);
        Assert.Contains("--tokenizer DIR", log2);
    }

    [Fact]
    public void HostileFiles_AreRefusedClearly()
    {
        using var dir = new TempDir();
        string sd15 = Fixtures.Path("sd_edit_tiny", "img2img");
        // An SDXL file with SD 1.x configs.
        var ex = Assert.Throws<PagSharpException>(() => StableDiffusion.LoadSingleFile(File_("sdxl_tiny.safetensors"), sd15, null, new SdComponents(false, false)));
        Assert.Contains("SdxlBase checkpoint but the configs", ex.Message);
        // Mixed layouts: original UNet keys plus a diffusers-format key in the UNet's namespace.
        var t = SafeTensors.Load(File_("sd15_unet_only.safetensors"));
        t["model.diffusion_model.down_blocks.0.resnets.0.conv1.weight"] = zeros(1);
        string mixed = dir.File("mixed.safetensors");
        SafeTensors.Save(mixed, t);
        ex = Assert.Throws<PagSharpException>(() => StableDiffusion.LoadSingleFile(mixed, sd15, null, new SdComponents(false, false)));
        Assert.Contains("keys left over (1)", ex.Message);
        Assert.Contains("model.diffusion_model.down_blocks.0.resnets.0.conv1.weight", ex.Message);
        // Truncated data.
        var bytes = File.ReadAllBytes(File_("sd15_unet_only.safetensors"));
        string cut = dir.File("cut.safetensors");
        File.WriteAllBytes(cut, bytes[..(bytes.Length / 2)]);
        Assert.Throws<PagSharpException>(() => StableDiffusion.LoadSingleFile(cut, sd15, null, new SdComponents(false, false)));
        // A diffusers-format file given as a single file.
        ex = Assert.Throws<PagSharpException>(() => SdSingleFile.Open(Fixtures.Path("sd_unet_tiny", "weights.safetensors")));
        Assert.Contains("diffusers-format keys", ex.Message);
    }

    private static readonly Lazy<JsonObject> Families = new(() =>
        JsonNode.Parse(File.ReadAllText(File_("family_keys.json")))!["families"]!.AsObject());

    private static Dictionary<string, long[]> Keys(string family) =>
        Families.Value[family]!["keys"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(v => v!.GetValue<long>()).ToArray());

    [Theory]
    [InlineData("sd15", SdFamily.Sd1)]
    [InlineData("sd15_inpainting", SdFamily.Sd1Inpainting)]
    [InlineData("sd21_768v", SdFamily.Sd2)]
    [InlineData("sd21_base", SdFamily.Sd2)]
    [InlineData("sdxl_base", SdFamily.SdxlBase)]
    [InlineData("sdxl_refiner", SdFamily.SdxlRefiner)]
    public void FamilyDetection_OnTheRealCheckpointsKeyLists(string family, SdFamily expected) =>
        Assert.Equal(expected, SdSingleFile.Detect(Keys(family)));

    // ---- LoRA and textual inversion against diffusers (tests/fixtures/lora) ----

    private static string Lora(string name) => Fixtures.Path("lora", name);

    [Theory]
    [InlineData("sd15_lora_peft.safetensors", "merged.safetensors", "unet.out_fused_lora")]
    [InlineData("sd15_lora_kohya.safetensors", "merged.safetensors", "unet.out_fused_lora")]
    [InlineData("sd15_locon_peft.safetensors", "merged_locon.safetensors", "unet.out_fused_locon")]
    [InlineData("sd15_locon_kohya.safetensors", "merged_locon.safetensors", "unet.out_fused_locon")]
    public void Lora_MergesAsDiffusersFuseLora(string file, string merged, string output)
    {
        string dir = Fixtures.Path("sd_edit_tiny", "img2img");
        using var sd = StableDiffusion.Load(dir, new SdComponents(Vae: false, TextEncoder: false));
        using var te = DiffusersFolder.Open(dir).LoadTextEncoder();
        using var lora = SdLora.Load(Lora(file), sd.Unet, te, null);
        lora.Merge(0.8, sd.Unet, te, null);
        var expected = SafeTensors.Load(Lora(merged));
        var unet = sd.Unet.state_dict();
        var text = te.state_dict();
        foreach (var (k, e) in expected)
        {
            var actual = k.StartsWith("unet.", StringComparison.Ordinal) ? unet[k[5..]] : text[k["text_encoder.".Length..]];
            SdFixtures.AssertRelative(e, actual, 1e-6, $"{file}: {k}");
        }
        var cases = SafeTensors.Load(Lora("cases.safetensors"));
        using var _ = no_grad();
        using var o = sd.Unet.Forward(cases["unet.x"], cases["unet.t"], cases["unet.encoder_hidden_states"]);
        SdFixtures.AssertRelative(cases[output], o, 1e-5, "UNet with the fused LoRA");
        using var h = te.Encode(cases["te.input_ids"]);
        SdFixtures.AssertRelative(cases["te.last_hidden_state_fused_lora"], h, 1e-5, "text encoder with the fused LoRA");
    }

    [Theory]
    [InlineData("sd15_lora_peft.safetensors", "pipe.i2i_rgb_s06_lora.final")]
    [InlineData("sd15_lora_kohya.safetensors", "pipe.i2i_rgb_s06_lora.final")]
    [InlineData("sd15_locon_kohya.safetensors", "pipe.i2i_rgb_s06_locon.final")]
    public void PagImg2Img_WithLora_ThroughTheCli_MatchesDiffusers(string file, string key)
    {
        using var dir = new TempDir();
        string cases = Fixtures.Path("sd_edit_tiny", "cases.safetensors"), t = dir.File("out.npy");
        var (exit, log) = Pag.Run("img2img", "--model", Fixtures.Path("sd_edit_tiny", "img2img"), "--lora", Lora(file) + ":0.8",
            "--prompt-embeds", cases + ":run_in.prompt_embeds", "--negative-prompt-embeds", cases + ":run_in.negative_prompt_embeds",
            "--image", cases + ":edit_in.image_rgb", "--strength", "0.6", "--steps", "5", "--scheduler", "ddim", "--guidance-scale", "5",
            "--pag-scale", "3", "--seed", "11", "--count", "2", "--output-type", "latent", "--save-tensor", t, "--output", dir.File("o"));
        Assert.True(exit == 0, log);
        using var actual = Npy.Load(t);
        SdFixtures.AssertRelative(SafeTensors.Load(Lora("cases.safetensors"))[key], actual, 1e-4, $"pag img2img --lora {file}");
    }

    [Fact]
    public void TextualInversion_EncodesAsDiffusers()
    {
        // diffusers' load_textual_inversion on the same text encoder: two rows appended (ids 1000, 1001) and the prompt
        // "tok5 <cat-toy> tok7" → ids [0, 5, 1000, 1001, 7, 2, …] (the fixture's stand-in tokenizer maps tokN → N).
        using var te = DiffusersFolder.Open(Fixtures.Path("sd_edit_tiny", "img2img")).LoadTextEncoder();
        var emb = SafeTensors.Load(Lora("ti_emb_params.safetensors"))["emb_params"];
        Assert.Equal(1000, te.AppendTokens(emb));
        var cases = SafeTensors.Load(Lora("cases.safetensors"));
        using var _ = no_grad();
        var (h, pooled) = te.EncodeWithPooled(cases["ti.input_ids"], 0);
        using var last = te.Encode(cases["ti.input_ids"]);
        SdFixtures.AssertRelative(cases["ti.last_hidden_state"], last, 1e-5, "last_hidden_state");
        SdFixtures.AssertRelative(cases["ti.pooler_output"], pooled, 1e-5, "pooler_output (argmax rule: the second TI token)");
        h.Dispose();
    }
}

/// <summary>The shipped configs against the real checkpoints' key lists, with our modules built on the meta device.</summary>
[Collection(MetaDeviceCollection.Name)]
public sealed class ShippedConfigKeyTests
{
    private static readonly Lazy<JsonObject> Families = new(() =>
        JsonNode.Parse(File.ReadAllText(Fixtures.Path("single_file", "family_keys.json")))!["families"]!.AsObject());

    private static Dictionary<string, long[]> Keys(string family) =>
        Families.Value[family]!["keys"]!.AsObject().ToDictionary(kv => kv.Key, kv => kv.Value!.AsArray().Select(v => v!.GetValue<long>()).ToArray());

    [Theory]
    [InlineData("sd15", "sd15")]
    [InlineData("sd15_inpainting", "sd15-inpainting")]
    [InlineData("sdxl_base", "sdxl-base")]
    [InlineData("sd21_768v", "sd21-v")]
    [InlineData("sdxl_refiner", "sdxl-refiner")]
    public void TheShippedConfigs_TakeEveryKeyOfTheRealCheckpoints(string family, string configs)
    {
        // Our modules built from models/sd-configs on the meta device, mapped key by key onto the real checkpoint's
        // key list: every parameter found with its shape, nothing left over in any component.
        string dir = Path.Combine(AppContext.BaseDirectory, "models", "sd-configs", configs);
        var file = SdSingleFile.FromShapes(Keys(family), family);
        var folder = DiffusersFolder.ForSingleFile(file, dir, null);
        set_default_device(new Device("meta"));
        try
        {
            using var unet = new SdUNet(folder.UnetConfig());
            file.LoadUnet(unet);
            using var vae = new AutoencoderKL(folder.VaeConfig());
            file.LoadVae(vae);
            if (Directory.Exists(Path.Combine(dir, "text_encoder")))
            {
                using var te = new ClipTextModel(ClipTextConfig.Load(Path.Combine(dir, "text_encoder", "config.json")));
                if (file.Family == SdFamily.Sd2) file.LoadOpenClip(te); else file.LoadClip(te);
            }
            Assert.Equal(SdSingleFile.BuiltInConfigDir(file.Family), dir);
            if (Directory.Exists(Path.Combine(dir, "text_encoder_2")))
            {
                using var te2 = new ClipTextModel(ClipTextConfig.Load(Path.Combine(dir, "text_encoder_2", "config.json")) with { WithProjection = true });
                file.LoadOpenClip(te2);
            }
        }
        finally { set_default_device(CPU); }
    }

}
