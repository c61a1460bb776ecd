namespace PagSharp.Denoisers;

/// <summary>The conditioning one block of a batched forward call gets.</summary>
public enum Branch
{
    /// <summary>The null condition: ADM's null class, Stable Diffusion's negative prompt.</summary>
    Unconditional,
    /// <summary>The condition of the samples: their class labels, their prompt.</summary>
    Conditional,
}
