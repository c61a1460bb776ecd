using TorchSharp;

namespace PagSharp.IO;

/// <summary>One element type the file readers and writers understand, with its names in each format.</summary>
internal sealed record TensorDType(torch.ScalarType ScalarType, int Size, string SafeTensorsName, string? NpyDescr);

/// <summary>The element types shared by the file formats, looked up by their names in each format.</summary>
internal static class TensorDTypes
{
    public static readonly IReadOnlyList<TensorDType> All =
    [
        new(torch.ScalarType.Float32, 4, "F32", "<f4"),
        new(torch.ScalarType.Float16, 2, "F16", "<f2"),
        new(torch.ScalarType.BFloat16, 2, "BF16", null),
        new(torch.ScalarType.Float64, 8, "F64", "<f8"),
        new(torch.ScalarType.Int64, 8, "I64", "<i8"),
        new(torch.ScalarType.Int32, 4, "I32", "<i4"),
        new(torch.ScalarType.Int16, 2, "I16", "<i2"),
        new(torch.ScalarType.Int8, 1, "I8", "|i1"),
        new(torch.ScalarType.Byte, 1, "U8", "|u1"),
        new(torch.ScalarType.Bool, 1, "BOOL", "|b1"),
    ];

    /// <summary>The safetensors dtype names this library reads and writes, for error messages.</summary>
    public static string SafeTensorsNames => string.Join(", ", All.Select(d => d.SafeTensorsName));

    /// <summary>The .npy descr strings this library reads and writes, for error messages.</summary>
    public static string NpyNames => string.Join(", ", All.Where(d => d.NpyDescr != null).Select(d => $"'{d.NpyDescr}'"));

    /// <summary>The torch element types this library can store, for error messages.</summary>
    public static string ScalarTypeNames => string.Join(", ", All.Select(d => d.ScalarType.ToString()));

    public static TensorDType? FromSafeTensors(string name) => All.FirstOrDefault(d => d.SafeTensorsName == name);

    public static TensorDType? FromScalarType(torch.ScalarType type) => All.FirstOrDefault(d => d.ScalarType == type);

    public static TensorDType? FromNpy(string descr)
    {
        // numpy writes one-byte types with '|', but '<' and '=' mean the same thing for them.
        if (descr.Length == 3 && descr[2] == '1' && (descr[0] == '<' || descr[0] == '=')) descr = "|" + descr[1..];
        return All.FirstOrDefault(d => d.NpyDescr == descr);
    }
}
