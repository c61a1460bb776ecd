using PagSharp.Attention;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace PagSharp.Models.Adm;

/// <summary>
/// guided-diffusion's AttentionBlock: x + proj_out(attention(qkv(GN(x)))), spatial positions as tokens. Both QKV
/// channel layouts are supported: legacy (<c>QKVAttentionLegacy</c>, per head [q_h; k_h; v_h]) and new
/// (<c>QKVAttention</c>, [q; k; v] then heads). Attention goes through <see cref="PerturbableAttention"/>, so a plan
/// can perturb it without this class knowing about guidance.
/// </summary>
public sealed class AttentionBlock : Module
{
#pragma warning disable IDE1006
    private readonly GroupNorm norm;
    private readonly Conv1d qkv;
    private readonly Conv1d proj_out;
#pragma warning restore IDE1006

    /// <summary>Module path, e.g. <c>middle_block.1</c>.</summary>
    public string Path { get; }
    public int Channels { get; }
    public int Heads { get; }
    public bool NewAttentionOrder { get; }
    /// <summary>Spatial resolution of the token grid at this block (image_size / ds).</summary>
    public int Resolution { get; }

    public AttentionBlock(string path, int channels, int numHeads, int numHeadChannels, bool useNewAttentionOrder, int resolution)
        : base(nameof(AttentionBlock))
    {
        Path = path;
        Channels = channels;
        if (numHeadChannels == -1) Heads = numHeads;
        else
        {
            if (channels % numHeadChannels != 0)
                throw new PagSharpException($"{path}: q,k,v channels {channels} are not divisible by num_head_channels {numHeadChannels}");
            Heads = channels / numHeadChannels;
        }
        if (Heads < 1 || channels % Heads != 0)
            throw new PagSharpException($"{path}: {channels} channels cannot be split into {Heads} heads");
        NewAttentionOrder = useNewAttentionOrder;
        Resolution = resolution;
        norm = AdmNorm.Create(channels);
        qkv = Conv1d(channels, channels * 3, 1);
        proj_out = AdmNorm.Zero(Conv1d(channels, channels, 1));
        RegisterComponents();
    }

    public Tensor Forward(Tensor x, PerturbationPlan? plan)
    {
        long b = x.shape[0], c = x.shape[1];
        int height = (int)x.shape[2], width = (int)x.shape[3];
        var xf = x.reshape(b, c, -1);
        long t = xf.shape[2];
        var qkvOut = qkv.forward(norm.forward(xf)); // [B, 3C, T]
        long ch = c / Heads;
        Tensor q, k, v;
        if (NewAttentionOrder)
        {
            var parts = qkvOut.chunk(3, 1); // [q; k; v], each [B, C, T] then split into heads
            q = parts[0].reshape(b, Heads, ch, t);
            k = parts[1].reshape(b, Heads, ch, t);
            v = parts[2].reshape(b, Heads, ch, t);
        }
        else
        {
            var parts = qkvOut.reshape(b, Heads, 3 * ch, t).split(ch, 2); // per head [q_h; k_h; v_h]
            q = parts[0]; k = parts[1]; v = parts[2];
        }
        // Layout for the attention core: [B, heads, T, ch].
        var a = PerturbableAttention.Attend(Path, q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), height, width, plan, FusedAttention);
        var h = proj_out.forward(a.transpose(2, 3).reshape(b, c, t));
        var outp = xf + h;
        if (plan?.SkippedEntries(Path, b) is { } skipped)
        {
            // Skip-layer guidance: the block passes its input on for these entries.
            using var idx = tensor(skipped, device: x.device);
            outp = outp.index_copy(0, idx, xf.index_select(0, idx));
        }
        return outp.reshape(x.shape);
    }

    /// <summary>Unperturbed attention through libtorch's fused kernel when no map is needed (<see cref="AttentionMath.Attend"/>); set per network by <see cref="AdmUNet.FusedAttention"/>.</summary>
    public bool FusedAttention { get; set; } = true;
}
