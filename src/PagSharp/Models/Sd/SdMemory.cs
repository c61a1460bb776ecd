namespace PagSharp.Models.Sd;

/// <summary>
/// An estimate, from the UNet config and the latent size, of the activation memory one <see cref="SdUNet"/> forward
/// holds at its peak (float32): the skip connections the down blocks store, the widest up-block input (h ⊕ skip) a few
/// times over, and — when self-attention maps are materialised (maps for SAG, perturbation policies other than
/// identity, unfused attention) — the largest [heads, T, T] map twice. Like <see cref="Adm.AdmMemory"/>, it is meant to
/// refuse runs that cannot fit.
/// </summary>
public static class SdMemory
{
    /// <summary>Bytes of activations at the peak of a forward over <paramref name="entries"/> entries of h×w latents.</summary>
    public static double ActivationBytes(SdUNetConfig cfg, long height, long width, long entries, bool attentionMaps)
    {
        var ch = cfg.BlockOutChannels;
        double h = height, w = width;
        double skips = ch[0] * h * w;   // conv_in
        double widest = 0, maxMap = 0, prev = ch[0];
        for (int i = 0; i < ch.Length; i++)
        {
            double c = ch[i];
            for (int k = 0; k < cfg.LayersPerBlock[i]; k++)
            {
                skips += c * h * w;
                widest = Math.Max(widest, (c + prev) * h * w);
                prev = c;
            }
            if (cfg.DownBlockTypes[i].Contains("CrossAttn", StringComparison.Ordinal))
                maxMap = Math.Max(maxMap, cfg.AttentionHeads[Math.Min(i, cfg.AttentionHeads.Length - 1)] * (h * w) * (h * w));
            if (i < ch.Length - 1)
            {
                h = Math.Ceiling(h / 2);
                w = Math.Ceiling(w / 2);
                skips += c * h * w;
            }
        }
        double perEntry = skips + 4 * widest + (attentionMaps ? 2 * maxMap : 0);
        return 4.0 * entries * perEntry;
    }
}
