namespace PagSharp.IO;

/// <summary>Opens input files, turning a missing or unreadable file into a <see cref="PagSharpException"/>.</summary>
internal static class FileOpen
{
    public static FileStream Read(string path, string what)
    {
        ArgumentNullException.ThrowIfNull(path);
        try
        {
            return new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new PagSharpException($"Cannot open {what} '{path}': {e.Message}", e);
        }
    }
}
