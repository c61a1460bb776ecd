using PagSharp.IO;
namespace PagSharp.Models.Sd;

/// <summary>The <c>vae/config.json</c> of a diffusers <c>AutoencoderKL</c> (absent keys take diffusers' defaults).</summary>
public sealed record SdVaeConfig
{
    public int InChannels { get; init; } = 3;
    public int OutChannels { get; init; } = 3;
    public int[] BlockOutChannels { get; init; } = { 64 };
    public int LayersPerBlock { get; init; } = 1;
    public string ActFn { get; init; } = "silu";
    public int LatentChannels { get; init; } = 4;
    public int NormNumGroups { get; init; } = 32;
    public int? SampleSize { get; init; }
    /// <summary>Latents are divided by this before decoding (and encodings multiplied by it).</summary>
    public double ScalingFactor { get; init; } = 0.18215;
    public bool UseQuantConv { get; init; } = true;
    public bool UsePostQuantConv { get; init; } = true;
    public bool MidBlockAddAttention { get; init; } = true;

    /// <summary>Pixels per latent along each axis: 2^(levels − 1).</summary>
    public int ScaleFactor => 1 << (BlockOutChannels.Length - 1);

    public static SdVaeConfig Load(string path) => FromJson(File.Exists(path) ? File.ReadAllText(path)
        : throw new PagSharpException($"{path} does not exist: a diffusers VAE needs its config.json"), path);

    public static SdVaeConfig FromJson(string json, string source)
    {
        var c = JsonConfig.Parse(json, source);
        var boc = c.Ints("block_out_channels", new[] { 64 });
        var down = c.Strings("down_block_types", Enumerable.Repeat("DownEncoderBlock2D", boc.Length).ToArray());
        var up = c.Strings("up_block_types", Enumerable.Repeat("UpDecoderBlock2D", boc.Length).ToArray());
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        Require(boc.Length >= 1, "block_out_channels is empty");
        Require(down.Length == boc.Length && up.Length == boc.Length,
            $"down_block_types ({down.Length}) and up_block_types ({up.Length}) must have one entry per block_out_channels entry ({boc.Length})");
        Require(down.All(d => d == "DownEncoderBlock2D"), $"down_block_types [{string.Join(", ", down)}]: only DownEncoderBlock2D is supported");
        Require(up.All(u => u == "UpDecoderBlock2D"), $"up_block_types [{string.Join(", ", up)}]: only UpDecoderBlock2D is supported");
        c.RequireDefault("shift_factor", null, "Stable Diffusion 1.x/2.x VAEs have none");
        c.RequireDefault("latents_mean", null, "Stable Diffusion 1.x/2.x VAEs have none");
        c.RequireDefault("latents_std", null, "Stable Diffusion 1.x/2.x VAEs have none");
        var cfg = new SdVaeConfig
        {
            InChannels = c.Int("in_channels", 3),
            OutChannels = c.Int("out_channels", 3),
            BlockOutChannels = boc,
            LayersPerBlock = c.Int("layers_per_block", 1),
            ActFn = SdNnCheck.Activation(c.String("act_fn", "silu"), source),
            LatentChannels = c.Int("latent_channels", 4),
            NormNumGroups = c.Int("norm_num_groups", 32),
            SampleSize = c.IntOrNull("sample_size"),
            ScalingFactor = c.Double("scaling_factor", 0.18215),
            UseQuantConv = c.Bool("use_quant_conv", true),
            UsePostQuantConv = c.Bool("use_post_quant_conv", true),
            MidBlockAddAttention = c.Bool("mid_block_add_attention", true),
        };
        Require(boc.All(ch => ch > 0 && ch % cfg.NormNumGroups == 0), $"every block_out_channels entry must be a positive multiple of norm_num_groups {cfg.NormNumGroups}");
        Require(cfg.LayersPerBlock >= 1, "layers_per_block must be ≥ 1");
        Require(cfg.ScalingFactor > 0, $"scaling_factor must be > 0 (got {cfg.ScalingFactor})");
        return cfg;
    }
}
