using System.Text.Json;
using PagSharp.Imaging;
using PagSharp.IO;
using PagSharp.Metrics;
using PagSharp.Tests.Cli;
using PagSharp.Tests.Imaging;
using PagSharp.Training.Datasets;
using static TorchSharp.torch;

namespace PagSharp.Tests.Metrics;

[Collection(CliCollection.Name)]
public sealed class EvalCommandTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly MnistDataset _mnist = MnistDataset.Load();

    public void Dispose()
    {
        _dir.Dispose();
        _mnist.Dispose();
    }

    private string Npy(string name, long start, long count)
    {
        string path = _dir.File(name);
        using var x = _mnist.TestImages.narrow(0, start, count);
        PagSharp.IO.Npy.Save(path, x);
        return path;
    }

    private static JsonElement Json(string path) => JsonDocument.Parse(File.ReadAllText(path)).RootElement;

    [Fact]
    public void FolderAgainstArrayPrintsTheTableAndJson_StatisticsReproduceFid()
    {
        // 40 digits (4 of each class, every 25th test digit) as PNGs, plus a grid.png that must be skipped.
        string folder = Directory.CreateDirectory(_dir.File("gen")).FullName;
        for (int i = 0; i < 40; i++)
        {
            using var img = _mnist.TestImages[i * 25];
            Png.Save(Path.Combine(folder, $"{i:D5}.png"), img);
        }
        using (var grid = Grid.Make(_mnist.TestImages.narrow(0, 0, 4), 2)) Png.Save(Path.Combine(folder, ImageSets.GridFileName), grid);
        string reference = Npy("ref.npy", 1, 60);

        string json = _dir.File("out.json"), stats = _dir.File("gen.safetensors"), refStats = _dir.File("ref.safetensors");
        var (exit, output) = Pag.Run("eval", "--generated", folder, "--reference", reference, "--json", json,
            "--save-stats", stats, "--save-reference-stats", refStats, "--splits", "1");
        Assert.True(exit == 0, output);
        foreach (var word in new[] { "FID", "Inception Score", "precision", "recall", "generated", "reference" }) Assert.Contains(word, output);
        Assert.Contains("FID from 40 images is strongly biased", output.ReplaceLineEndings(" ")); // 40 generated images: warned
        var r = Json(json);
        Assert.Equal(40, r.GetProperty("generated_count").GetInt64());
        Assert.Equal(60, r.GetProperty("reference_count").GetInt64());
        double fid = r.GetProperty("fid").GetDouble();
        Assert.InRange(fid, 0, 1e6);
        Assert.InRange(r.GetProperty("inception_score").GetDouble(), 8, 10); // 4 digits of each class, confidently classified
        Assert.InRange(r.GetProperty("precision").GetDouble(), 0, 1);
        Assert.InRange(r.GetProperty("recall").GetDouble(), 0, 1);

        // FID from the saved statistics equals FID from the images; precision/recall then need images.
        string json2 = _dir.File("out2.json");
        (exit, output) = Pag.Run("eval", "--generated", stats, "--reference", refStats, "--json", json2);
        Assert.True(exit == 0, output);
        var r2 = Json(json2);
        Tolerance.Close(fid, r2.GetProperty("fid").GetDouble(), rel: 1e-9, what: "FID from saved statistics");
        Assert.Equal(JsonValueKind.Null, r2.GetProperty("precision").ValueKind);
        Assert.Contains("n/a", output);
    }

    [Fact]
    public void ShardsMergeIntoTheWholeSet()
    {
        string whole = Npy("whole.npy", 0, 30), a = Npy("a.npy", 0, 12), b = Npy("b.npy", 12, 18), reference = Npy("ref.npy", 500, 50);
        string j1 = _dir.File("1.json"), j2 = _dir.File("2.json"), sa = _dir.File("a.safetensors");
        Assert.Equal(0, Pag.Run("eval", "--generated", whole, "--reference", reference, "--json", j1, "--splits", "3").Exit);
        Assert.Equal(0, Pag.Run("eval", "--generated", a, "--reference", reference, "--save-stats", sa, "--splits", "3").Exit);
        var (exit, output) = Pag.Run("eval", "--generated", sa, "--generated", b, "--reference", reference, "--json", j2);
        Assert.True(exit == 0, output);
        Assert.Equal(30, Json(j2).GetProperty("generated_count").GetInt64());
        // Shards merge their sums in another order than one pass over the whole set: equal up to rounding (relative).
        Tolerance.Close(Json(j1).GetProperty("fid").GetDouble(), Json(j2).GetProperty("fid").GetDouble(), rel: 1e-7, what: "FID of merged shards");
    }

    [Fact]
    public void InceptionFeaturesEndToEnd_RandomWeights()
    {
        string weights = _dir.File("inception.safetensors");
        using (var model = new InceptionV3()) SafeTensors.Save(weights, model.state_dict());
        string gen = Npy("gen.npy", 0, 3), reference = Npy("ref.npy", 100, 3), json = _dir.File("inception.json");
        var (exit, output) = Pag.Run("eval", "--generated", gen, "--reference", reference, "--features", "inception",
            "--inception-weights", weights, "--splits", "1", "-k", "1", "--json", json);
        Assert.True(exit == 0, output);
        var r = Json(json);
        Assert.Equal(InceptionFeatureNetwork.Name, r.GetProperty("features").GetString());
        Assert.True(double.IsFinite(r.GetProperty("fid").GetDouble()));
        Assert.InRange(r.GetProperty("inception_score").GetDouble(), 1 - 1e-9, 3 + 1e-9);
    }

    [Fact]
    public void BadInputsExitWithCode2()
    {
        string gen = Npy("gen.npy", 0, 20);
        string empty = Directory.CreateDirectory(_dir.File("empty")).FullName;
        File.WriteAllText(Path.Combine(empty, "notes.txt"), "no images here");
        using (var s = new FeatureStats(MnistFeatureNetwork.Name, 64)) { s.Add(ones(3, 64)); s.Save(_dir.File("dim64.safetensors")); }
        using (var s = new FeatureStats(InceptionFeatureNetwork.Name, 2048)) { s.Add(ones(3, 2048)); s.Save(_dir.File("inception.safetensors")); }
        PagSharp.IO.Npy.Save(_dir.File("vector.npy"), ones(5));
        var cases = new (string[] Args, string Message)[]
        {
            (["eval", "--generated", empty, "--reference", gen], "holds no images"),
            (["eval", "--generated", gen, "--reference", _dir.File("dim64.safetensors")], "64-dimensional"),
            (["eval", "--generated", gen, "--reference", _dir.File("inception.safetensors")], "inception"),
            (["eval", "--generated", gen, "--reference", MnistClassifier.BuiltInPath()], "not a feature-statistics file"),
            (["eval", "--generated", _dir.File("vector.npy"), "--reference", gen], "expected images"),
            (["eval", "--generated", _dir.File("absent"), "--reference", gen], "does not exist"),
            (["eval", "--reference", gen], "needs --generated"),
            (["eval", "--generated", gen, "--features", "inception"], "--inception-weights"),
            (["eval", "--generated", gen, "--features", "clip"], "unknown --features"),
            (["eval", "--generated", gen, "--reference", gen, "--splits", "50"], "at least 50 images"),
        };
        foreach (var (args, message) in cases)
        {
            var (exit, output) = Pag.Run(args);
            Assert.True(exit == 2, $"{string.Join(' ', args)} → exit {exit}: {output}");
            Assert.Contains(message, output);
        }
    }

    [Fact]
    public void RunFoldersGetRecognitionAndLabelAccuracy()
    {
        // 20 real test digits with the run.json pag sample writes: 10 labelled with their true class, 5 with a wrong
        // label, 5 with the null class (unlabelled). Real digits are recognised; accuracy is over the labelled 15.
        string folder = Directory.CreateDirectory(_dir.File("run")).FullName;
        var labels = _mnist.TestLabels.data<long>().ToArray();
        var samples = new System.Text.Json.Nodes.JsonArray();
        for (int i = 0; i < 20; i++)
        {
            int idx = i * 37;
            using var img = _mnist.TestImages[idx];
            Png.Save(Path.Combine(folder, $"{i:D5}.png"), img);
            long label = i < 10 ? labels[idx] : i < 15 ? (labels[idx] + 1) % 10 : 10;
            samples.Add(new System.Text.Json.Nodes.JsonObject { ["index"] = i, ["file"] = $"{i:D5}.png", ["label"] = label });
        }
        var run = new System.Text.Json.Nodes.JsonObject
        {
            ["settings"] = new System.Text.Json.Nodes.JsonObject { ["model_config"] = new System.Text.Json.Nodes.JsonObject { ["null_class"] = 10 } },
            ["samples"] = samples,
        };
        File.WriteAllText(Path.Combine(folder, "run.json"), run.ToJsonString());
        string json = _dir.File("run.json.out");
        var (exit, output) = Pag.Run("eval", "--generated", folder, "--json", json);
        Assert.True(exit == 0, output);
        var r = Json(json);
        Assert.Equal(15, r.GetProperty("labelled_count").GetInt64());
        Assert.InRange(r.GetProperty("label_accuracy").GetDouble(), 8.0 / 15 - 1e-9, 11.0 / 15 + 1e-9); // 10 right, 5 wrong, give or take a misread digit
        Assert.InRange(r.GetProperty("recognised").GetDouble(), 0.85, 1.0);
        Assert.Contains("classified as their label (15)", output);

        // The same digits as a .npy in sample order (as pag sample --save-tensor writes it), labels from the run.json.
        string npy = _dir.File("run.npy");
        using (var stacked = stack(Enumerable.Range(0, 20).Select(i => _mnist.TestImages[i * 37]).ToArray()))
            PagSharp.IO.Npy.Save(npy, stacked);
        string json2 = _dir.File("run.npy.json");
        (exit, output) = Pag.Run("eval", "--generated", npy, "--labels-from", Path.Combine(folder, "run.json"), "--json", json2);
        Assert.True(exit == 0, output);
        var r2 = Json(json2);
        Assert.Equal(15, r2.GetProperty("labelled_count").GetInt64());
        Assert.Equal(r.GetProperty("label_accuracy").GetDouble(), r2.GetProperty("label_accuracy").GetDouble(), 12);

        // A manifest that does not match the images is refused.
        samples.RemoveAt(19);
        File.WriteAllText(_dir.File("short.json"), run.ToJsonString());
        (exit, output) = Pag.Run("eval", "--generated", npy, "--labels-from", _dir.File("short.json"));
        Assert.Equal(2, exit);
        Assert.Contains("lists 19 samples but 20 images", output);
    }

    [Fact]
    public void RecognitionAndAccuracyFormulas()
    {
        using var p = TorchSharp.torch.tensor(new float[] { 0.95f, 0.05f, 0.5f, 0.5f, 0.1f, 0.9f }).reshape(3, 2);
        Assert.Equal(2.0 / 3, Evaluation.RecognisedFraction(p), 12);
        Assert.Equal(0.5, Evaluation.LabelAccuracyOf(p, [0L, null, 0L], out long n), 12);
        Assert.Equal(2, n);
    }
}
