namespace PagSharp.Models.Adm;

/// <summary>
/// An estimate, from the config alone, of the activation memory one <see cref="AdmUNet"/> forward call holds at its
/// peak (float32): every skip connection the encoder stores until the decoder consumes it, the widest decoder input
/// (h ⊕ skip) a few times over (normalisation, activation and convolution outputs live together), and — when attention
/// maps are materialised (maps for SAG, perturbation policies other than identity) — the largest [heads, T, T] map
/// twice (logits and softmax). Fused attention forms no full map. The estimate is meant to refuse runs that cannot
/// fit, not to predict RSS to the megabyte.
/// </summary>
public static class AdmMemory
{
    /// <summary>Bytes of activations at the peak of a forward over <paramref name="entries"/> batch entries.</summary>
    public static double ActivationBytes(AdmConfig cfg, long entries, bool attentionMaps)
    {
        var mult = cfg.ChannelMultTuple;
        var attnDs = cfg.AttentionDs;
        double mc = cfg.ModelChannels, r = cfg.ImageSize;
        double skips = mc * r * r;   // conv_in
        double widest = 0, maxMap = 0;
        double ch = mc;
        int ds = 1;
        for (int level = 0; level < mult.Length; level++)
        {
            double c = mult[level] * mc;
            for (int k = 0; k < cfg.NumResBlocks; k++)
            {
                skips += c * r * r;
                widest = Math.Max(widest, (c + ch) * r * r);
                ch = c;
                if (attnDs.Contains(ds))
                {
                    double heads = cfg.NumHeadChannels > 0 ? Math.Max(1, c / cfg.NumHeadChannels) : cfg.NumHeads;
                    maxMap = Math.Max(maxMap, heads * (r * r) * (r * r));
                }
            }
            if (level < mult.Length - 1)
            {
                r = Math.Max(1, Math.Floor(r / 2));
                ds *= 2;
                skips += ch * r * r;
            }
        }
        double perEntry = skips + 4 * widest + (attentionMaps ? 2 * maxMap : 0);
        return 4.0 * entries * perEntry;
    }
}
