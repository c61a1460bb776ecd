using PagSharp.IO;

namespace PagSharp.Tests.IO;

/// <summary>
/// Truncated, bit-flipped and random inputs: every reader must either load them or throw PagSharpException, never
/// another exception type, and never allocate far beyond the input's size. Seeds are fixed, so failures reproduce.
/// </summary>
public class FuzzTests
{
    private static void RunCases(TempDir dir, string name, IEnumerable<(string Case, byte[] Bytes)> cases, Action<string> load)
    {
        string path = dir.File(name);
        int count = 0;
        foreach (var (caseName, bytes) in cases)
        {
            File.WriteAllBytes(path, bytes);
            Fuzz.MustLoadOrReject(caseName, () => load(path));
            count++;
        }
        Assert.True(count > 0);
    }

    private static IEnumerable<(string, byte[])> Truncations(byte[] src, IEnumerable<int> lengths) =>
        lengths.Where(n => n >= 0 && n < src.Length).Distinct().Select(n => ($"truncated to {n}", src[..n]));

    private static IEnumerable<(string, byte[])> Flips(byte[] src, int cases, int seed, int regionStart, int regionEnd)
    {
        var rng = new Random(seed);
        for (int i = 0; i < cases; i++)
        {
            byte[] b = (byte[])src.Clone();
            int flips = rng.Next(1, 4);
            var where = new List<int>();
            for (int j = 0; j < flips; j++)
            {
                int at = rng.Next(regionStart, Math.Min(regionEnd, b.Length));
                b[at] = rng.Next(3) == 0 ? (byte)rng.Next(256) : (byte)(b[at] ^ (1 << rng.Next(8)));
                where.Add(at);
            }
            yield return ($"seed {seed} case {i}: bytes changed at {string.Join(",", where)}", b);
        }
    }

    private static IEnumerable<(string, byte[])> RandomFiles(int cases, int seed, byte[] prefix)
    {
        var rng = new Random(seed);
        for (int i = 0; i < cases; i++)
        {
            var b = new byte[prefix.Length + rng.Next(0, 2048)];
            rng.NextBytes(b);
            prefix.CopyTo(b, 0);
            yield return ($"random seed {seed} case {i} ({b.Length} bytes)", b);
        }
    }

    [Fact]
    public void SafeTensors_TruncatedFlippedAndRandom()
    {
        using var dir = new TempDir();
        byte[] src = File.ReadAllBytes(Fixtures.Path("sd_unet_tiny", "weights.safetensors"));
        int headerEnd = 8 + (int)BitConverter.ToUInt64(src);
        var rng = new Random(1);
        var lengths = Enumerable.Range(0, 20)
            .Concat(Enumerable.Range(headerEnd - 10, 20))
            .Concat(Enumerable.Range(0, 30).Select(_ => rng.Next(src.Length)))
            .Append(src.Length - 1);
        void Load(string p) => Fuzz.LoadAndDispose(() => SafeTensors.Load(p));

        RunCases(dir, "t.safetensors", Truncations(src, lengths), Load);
        RunCases(dir, "f.safetensors", Flips(src, 150, 2, 0, headerEnd), Load);
        RunCases(dir, "g.safetensors", Flips(src, 20, 3, 0, src.Length), Load);
        RunCases(dir, "r.safetensors", RandomFiles(25, 4, []), Load);
        // Random bodies behind a plausible header length.
        RunCases(dir, "h.safetensors", RandomFiles(25, 5, [16, 0, 0, 0, 0, 0, 0, 0, (byte)'{']), Load);
    }

    private static byte[] SmallPickle() => PtWriter.StateDict(
        ("a", w => w.Tensor("FloatStorage", "0", 12, 2, [3], [1])),
        ("b", w => w.Tensor("FloatStorage", "0", 12, 0, [4, 3], [1, 4])),
        ("c", w => w.Tensor("LongStorage", "1", 2, 0, [2], [1])),
        ("d", w => w.Tensor("BoolStorage", "2", 3, 0, [3], [1])));

    private static readonly (string, byte[])[] SmallStorages =
    [
        ("0", PtWriter.Floats(Enumerable.Range(0, 12).Select(i => (float)i).ToArray())),
        ("1", new byte[16]),
        ("2", [1, 0, 1]),
    ];

    [Fact]
    public void TorchZip_MutatedPickles()
    {
        using var dir = new TempDir();
        string path = dir.File("p.pt");
        byte[] pickle = SmallPickle();
        var rng = new Random(6);
        for (int i = 0; i < 250; i++)
        {
            byte[] p = (byte[])pickle.Clone();
            string what;
            switch (i % 3)
            {
                case 0:
                    int at = rng.Next(p.Length);
                    p[at] = (byte)rng.Next(256);
                    what = $"byte {at} set to {p[at]}";
                    break;
                case 1:
                    int n = rng.Next(p.Length);
                    p = p[..n];
                    what = $"truncated to {n}";
                    break;
                default:
                    int a = rng.Next(p.Length), b = rng.Next(p.Length);
                    p[a] ^= (byte)(1 << rng.Next(8));
                    p[b] ^= (byte)(1 << rng.Next(8));
                    what = $"bits flipped at {a} and {b}";
                    break;
            }
            PtWriter.Write(path, p, SmallStorages);
            Fuzz.MustLoadOrReject($"pickle case {i}: {what}", () => Fuzz.LoadAndDispose(() => TorchZip.Load(path)));
        }
    }

    [Fact]
    public void TorchZip_RandomPickles()
    {
        using var dir = new TempDir();
        string path = dir.File("r.pt");
        // Random sequences of the opcodes the reader knows (and a few it does not), with random arguments.
        byte[] ops = [0x28, 0x29, 0x2e, 0x30, 0x31, 0x4e, 0x88, 0x89, 0x4a, 0x4b, 0x4d, 0x8a, 0x47, 0x58, 0x8c, 0x54, 0x55,
            0x7d, 0x5d, 0x64, 0x6c, 0x74, 0x85, 0x86, 0x87, 0x73, 0x75, 0x61, 0x65, 0x71, 0x72, 0x94, 0x68, 0x6a, 0x93,
            0x52, 0x81, 0x62, 0x51, 0x63, 0x69, 0x95];
        var rng = new Random(7);
        for (int i = 0; i < 150; i++)
        {
            var w = new PickleWriter().Proto();
            int count = rng.Next(1, 40);
            for (int j = 0; j < count; j++)
            {
                w.Op(ops[rng.Next(ops.Length)]);
                var arg = new byte[rng.Next(0, 5)];
                rng.NextBytes(arg);
                w.Op(arg);
            }
            if (rng.Next(2) == 0) w.Stop();
            PtWriter.Write(path, w.ToArray(), SmallStorages);
            Fuzz.MustLoadOrReject($"random pickle {i}", () => Fuzz.LoadAndDispose(() => TorchZip.Load(path)));
        }
    }

    [Fact]
    public void TorchZip_TruncatedFlippedAndRandomZips()
    {
        using var dir = new TempDir();
        string small = dir.File("small.pt");
        PtWriter.Write(small, SmallPickle(), SmallStorages);
        byte[] src = File.ReadAllBytes(small);
        void Load(string p) => Fuzz.LoadAndDispose(() => TorchZip.Load(p));

        RunCases(dir, "t.pt", Truncations(src, Enumerable.Range(0, src.Length).Where(n => n % 9 == 0 || n > src.Length - 40)), Load);
        RunCases(dir, "f.pt", Flips(src, 120, 8, 0, src.Length), Load);
        RunCases(dir, "r.pt", RandomFiles(20, 9, "PK\x03\x04"u8.ToArray()), Load);
    }

    [Fact]
    public void TorchZip_FixtureTruncatedAndFlipped()
    {
        using var dir = new TempDir();
        byte[] src = File.ReadAllBytes(Fixtures.Path("adm_a_uncond", "weights.pt"));
        var rng = new Random(10);
        void Load(string p) => Fuzz.LoadAndDispose(() => TorchZip.Load(p));
        RunCases(dir, "t.pt", Truncations(src, Enumerable.Range(0, 12).Select(_ => rng.Next(src.Length)).Append(src.Length - 1).Append(100)), Load);
        // data.pkl is the first entry: flip bytes in it, and anywhere in the central directory at the end.
        RunCases(dir, "f.pt", Flips(src, 12, 11, 0, 40_000), Load);
        RunCases(dir, "g.pt", Flips(src, 12, 12, src.Length - 20_000, src.Length), Load);
    }

    [Fact]
    public void Npy_TruncatedFlippedAndRandom()
    {
        using var dir = new TempDir();
        string good = dir.File("good.npy");
        using (var t = TorchSharp.torch.arange(12, TorchSharp.torch.ScalarType.Float32).reshape(3, 4)) Npy.Save(good, t);
        byte[] src = File.ReadAllBytes(good);
        void Load(string p) => Npy.Load(p).Dispose();
        RunCases(dir, "t.npy", Truncations(src, Enumerable.Range(0, src.Length)), Load);
        RunCases(dir, "f.npy", Flips(src, 150, 13, 0, 128), Load);
        RunCases(dir, "r.npy", RandomFiles(20, 14, [.. Npy.Magic, 1, 0]), Load);
        RunCases(dir, "s.npy", RandomFiles(10, 15, []), Load);
    }

    [Fact]
    public void StateDicts_RandomFiles()
    {
        using var dir = new TempDir();
        RunCases(dir, "x.bin", RandomFiles(30, 16, []), p => Fuzz.LoadAndDispose(() => StateDicts.Load(p)));
        RunCases(dir, "x.safetensors", RandomFiles(10, 17, []), p => Fuzz.LoadAndDispose(() => StateDicts.Load(p)));
    }
}
