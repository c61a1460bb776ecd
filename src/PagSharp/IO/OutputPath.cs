namespace PagSharp.IO;

/// <summary>Checks an output path before any work is done, so a run never computes for minutes and then fails to write.</summary>
public static class OutputPath
{
    /// <summary>
    /// Throws a <see cref="PagSharpException"/> unless <paramref name="path"/> can be created as a file (or, with
    /// <paramref name="isFolder"/>, as a folder): it is not of the other kind already, and its nearest existing parent
    /// is a folder this process can create files in. Writes nothing that stays (a probe file is created and removed).
    /// </summary>
    public static void Check(string path, string what, bool isFolder)
    {
        string full;
        try { full = Path.GetFullPath(path); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new PagSharpException($"{what} '{path}' is not a valid path: {e.Message}");
        }
        if (isFolder && File.Exists(full)) throw new PagSharpException($"{what} '{path}' is an existing file; give a folder");
        if (!isFolder && Directory.Exists(full)) throw new PagSharpException($"{what} '{path}' is an existing folder; give a file path");
        string? parent = Path.GetDirectoryName(full);
        while (parent is not null && !Directory.Exists(parent))
        {
            if (File.Exists(parent)) throw new PagSharpException($"{what} '{path}': '{parent}' is a file, not a folder");
            parent = Path.GetDirectoryName(parent);
        }
        if (parent is null) throw new PagSharpException($"{what} '{path}': no existing parent folder");
        string probe = Path.Combine(parent, $".pagsharp-write-probe-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            using (File.Create(probe, 1, FileOptions.DeleteOnClose)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PagSharpException($"{what} '{path}' cannot be written: creating files in '{parent}' fails ({e.Message})");
        }
    }
}
