using System.Globalization;

namespace PagSharp.Runtime;

/// <summary>The memory a run may use: the machine's available memory (Linux MemAvailable), or a limit given by the caller.</summary>
public static class MemoryBudget
{
    /// <summary>MemAvailable of /proc/meminfo in bytes, or null where it cannot be read.</summary>
    public static long? AvailableBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                {
                    var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return long.Parse(parts[1], CultureInfo.InvariantCulture) * 1024;
                }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException) { }
        return null;
    }

    /// <summary>Human-readable size (MB or GB).</summary>
    public static string Format(double bytes) => bytes >= 1e9
        ? (bytes / 1e9).ToString("F1", CultureInfo.InvariantCulture) + " GB"
        : (bytes / 1e6).ToString("F0", CultureInfo.InvariantCulture) + " MB";
}
