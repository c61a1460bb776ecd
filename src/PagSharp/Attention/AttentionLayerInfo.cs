namespace PagSharp.Attention;

/// <summary>A perturbable self-attention layer of a network: its name (module path), resolution, channels, heads.</summary>
public sealed record AttentionLayerInfo(string Name, string Group, int Resolution, int Channels, int Heads);
