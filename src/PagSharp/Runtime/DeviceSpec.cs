using TorchSharp;
using static TorchSharp.torch;

namespace PagSharp.Runtime;

/// <summary>
/// The device a run computes on: <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>. Models are moved there; what the pipelines
/// create follows the model's device; random draws come from per-sample CPU generators and are then moved (as
/// diffusers' <c>randn_tensor</c> does with CPU generators), so results do not depend on the device's own RNG.
/// </summary>
public static class DeviceSpec
{
    /// <summary>Parses and checks a device name; a CUDA device the loaded TorchSharp backend cannot reach is refused, saying why.</summary>
    public static Device Parse(string name)
    {
        string n = name.Trim().ToLowerInvariant();
        if (n == "cpu") return CPU;
        int index = 0;
        if (n == "cuda" || (n.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(n[5..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out index)))
        {
            bool available;
            int count;
            try { available = cuda.is_available(); count = available ? cuda.device_count() : 0; }
            catch (Exception e) when (e is not PagSharpException) { available = false; count = 0; }
            if (!available)
                throw new PagSharpException($"device '{name}' is not available: this build runs TorchSharp's CPU backend (TorchSharp-cpu) or no CUDA GPU is visible. " +
                    "Reference a TorchSharp CUDA backend package in your application (the library depends on the managed TorchSharp only), or use cpu");
            if (index >= count) throw new PagSharpException($"device '{name}': there {(count == 1 ? "is 1 CUDA device" : $"are {count} CUDA devices")} (cuda:0 … cuda:{count - 1})");
            return new Device(DeviceType.CUDA, index);
        }
        throw new PagSharpException($"unknown device '{name}'; valid: cpu, cuda, cuda:N");
    }
}
