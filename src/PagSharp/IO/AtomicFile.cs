namespace PagSharp.IO;

/// <summary>Writes files through a temporary name in the same folder and a rename, so readers never see a half-written file.</summary>
public static class AtomicFile
{
    /// <summary>Calls <paramref name="write"/> with a temporary path, then renames it onto <paramref name="path"/>.</summary>
    public static void Write(string path, Action<string> write)
    {
        string full = Path.GetFullPath(path);
        string? dir = Path.GetDirectoryName(full);
        if (!string.IsNullOrEmpty(dir)) Directory.CreateDirectory(dir);
        string tmp = Path.Combine(dir ?? ".", $".{Path.GetFileName(full)}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp");
        try
        {
            write(tmp);
            File.Move(tmp, full, overwrite: true);
        }
        finally
        {
            if (File.Exists(tmp)) File.Delete(tmp);
        }
    }

    /// <summary>Writes to a stream that becomes <paramref name="path"/> only when <paramref name="write"/> returns normally.</summary>
    public static void WriteStream(string path, Action<Stream> write) =>
        Write(path, tmp =>
        {
            using var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None);
            write(fs);
        });

    public static void WriteAllBytes(string path, byte[] bytes) => Write(path, tmp => File.WriteAllBytes(tmp, bytes));
    public static void WriteAllText(string path, string text) => Write(path, tmp => File.WriteAllText(tmp, text));
}
