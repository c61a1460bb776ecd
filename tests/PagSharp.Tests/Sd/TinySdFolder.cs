using PagSharp.Pipelines;
using System.Text.Json;
using System.Text.Json.Nodes;
using PagSharp.IO;
using PagSharp.Models.Sd;
using static TorchSharp.torch;

namespace PagSharp.Tests.Sd;

/// <summary>
/// A complete tiny Stable Diffusion folder in the diffusers layout: the fixture UNet and VAE (random weights from
/// diffusers' PAG test), a random 2-layer CLIP text encoder (hidden size 8 = the UNet's cross_attention_dim), the toy
/// CLIP vocabulary, and the fixture's DDIM scheduler settings.
/// </summary>
internal sealed class TinySdFolder : IDisposable
{
    public TempDir Dir { get; } = new();
    public string Root => Dir.Path;

    public TinySdFolder(string schedulerClass = "DDIMScheduler")
    {
        Write("model_index.json", new JsonObject
        {
            ["_class_name"] = "StableDiffusionPipeline",
            ["_diffusers_version"] = "0.37.1",
            ["unet"] = new JsonArray("diffusers", "UNet2DConditionModel"),
            ["vae"] = new JsonArray("diffusers", "AutoencoderKL"),
            ["text_encoder"] = new JsonArray("transformers", "CLIPTextModel"),
            ["tokenizer"] = new JsonArray("transformers", "CLIPTokenizer"),
            ["scheduler"] = new JsonArray("diffusers", schedulerClass),
            ["safety_checker"] = new JsonArray(null, null),
            ["feature_extractor"] = new JsonArray(null, null),
            ["requires_safety_checker"] = false,
        }.ToJsonString());
        Write("unet/config.json", SdFixtures.UnetConfigJson());
        File.Copy(SdFixtures.Unet("weights.safetensors"), Path("unet/diffusion_pytorch_model.safetensors"));
        Write("vae/config.json", SdFixtures.ConfigProperty(SdFixtures.Vae("config.json"), "vae_config_full"));
        File.Copy(SdFixtures.Vae("weights.safetensors"), Path("vae/diffusion_pytorch_model.safetensors"));
        ToyClip.Write(Path("tokenizer"));
        int vocab = ToyClip.Vocab().Count;
        Write("text_encoder/config.json", ToyClip.TextConfigJson(vocab));
        manual_seed(17);
        using (var te = new ClipTextModel(ToyClip.TextConfig(vocab)))
            SafeTensors.Save(Path("text_encoder/model.safetensors"), te.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value));
        var sched = JsonNode.Parse(SdFixtures.ConfigProperty(SdFixtures.Unet("config.json"), "DDIMScheduler_kwargs"))!.AsObject();
        sched["_class_name"] = schedulerClass;
        sched["num_train_timesteps"] = 1000;
        sched["steps_offset"] = 0; // the pipeline forces 1, as diffusers
        Write("scheduler/scheduler_config.json", sched.ToJsonString());
    }

    public string Path(string relative) => System.IO.Path.Combine(Root, relative);

    public void Write(string relative, string text)
    {
        string p = Path(relative);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        File.WriteAllText(p, text);
    }

    public void Dispose() => Dir.Dispose();
}
