using static TorchSharp.torch;

namespace PagSharp.Denoisers;

/// <summary>
/// SDXL's added conditioning for the conditional and unconditional branches: the pooled prompt embeddings [B, P]
/// (diffusers' <c>pooled_prompt_embeds</c> / <c>negative_pooled_prompt_embeds</c>, the U-Net's <c>text_embeds</c>)
/// and the micro-conditioning time ids [B or 1, n] (<c>add_time_ids</c> / <c>negative_add_time_ids</c>). The
/// perturbed branches of PAG and its siblings get the conditional ones, as diffusers'
/// <c>_prepare_perturbed_attention_guidance</c>.
/// </summary>
public sealed record SdXlConditioning(Tensor PooledEmbeds, Tensor? NegativePooledEmbeds, Tensor TimeIds, Tensor? NegativeTimeIds);
