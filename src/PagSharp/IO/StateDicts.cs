using static TorchSharp.torch;

namespace PagSharp.IO;

/// <summary>Loads a model's weights from whichever supported state-dict format the file is in.</summary>
public static class StateDicts
{
    /// <summary>The formats <see cref="Load"/> reads, for messages.</summary>
    public const string SupportedFormats =
        "safetensors (.safetensors) and PyTorch zip checkpoints from torch.save (.pt, .pth, .bin)";

    /// <summary>
    /// Loads all tensors of a state dict: .safetensors files (or files that look like one) through
    /// <see cref="SafeTensors.Load"/>, zip files through <see cref="TorchZip.LoadStateDict"/> (top level, or a well-known
    /// nested state dict). Legacy torch.save files and anything else are refused with a message saying what is supported.
    /// </summary>
    public static Dictionary<string, Tensor> Load(string path) => Sniff(path) switch
    {
        FileKind.Zip => TorchZip.LoadStateDict(path),
        _ => SafeTensors.Load(path),
    };

    /// <summary>Loads one tensor from a state dict file of either format, reading only that tensor's data.</summary>
    internal static Tensor LoadTensor(string path, string key) => Sniff(path) switch
    {
        FileKind.Zip => TorchZip.LoadTensor(path, key),
        _ => SafeTensors.LoadTensor(path, key),
    };

    /// <summary>Returns Zip or SafeTensors, or throws the message for any other kind of file.</summary>
    private static FileKind Sniff(string path)
    {
        FileKind kind;
        using (FileStream fs = FileOpen.Read(path, "state dict file"))
        {
            try { kind = FileSniffer.Sniff(fs); }
            catch (IOException e) { throw new PagSharpException($"Cannot read state dict file '{path}': {e.Message}", e); }
        }
        bool safetensorsName = path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase);
        return kind switch
        {
            FileKind.Zip => FileKind.Zip,
            FileKind.LegacyTorch => throw FileSniffer.LegacyError(path),
            FileKind.Pickle => throw FileSniffer.PickleError(path),
            FileKind.Npy => throw new PagSharpException($"'{path}' is a single .npy array, not a state dict; load it with Npy.Load or a tensor spec. Supported state dict formats: {SupportedFormats}."),
            _ when safetensorsName || kind == FileKind.SafeTensors => FileKind.SafeTensors,
            _ => throw new PagSharpException($"'{path}' is not a recognised state dict file. Supported formats: {SupportedFormats}."),
        };
    }
}
