// dotnet run --project samples/PagSharp.Samples -c Release -- pag.png
string path = args.Length > 0 ? args[0] : "pag.png";
PagSharp.Samples.QuickStart.Run(path);
Console.WriteLine($"wrote {path}");
