using System.IO.Compression;
using System.Net;
using System.Text.Json.Nodes;
using PagSharp.Cli.Serve;
using PagSharp.Imaging;
using PagSharp.Pipelines;

namespace PagSharp.Tests.Serve;

/// <summary>
/// <c>pag serve</c>'s JSON API on the built-in model (few steps, so each job takes well under a second): the contract
/// of every endpoint, server-side validation (400 with a message naming the field, nothing queued or written),
/// queueing, cancellation without leftovers, and downloads.
/// </summary>
[Collection(ServeCollection.Name)]
public sealed class ServeApiTests
{
    [Fact]
    public async Task ModelsAndLayersDescribeTheBuiltInModel()
    {
        await using var host = await ServeTestHost.StartAsync();
        var (status, body) = await host.GetJson("/api/models");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(16, body["limits"]!["maxCount"]!.GetValue<int>());
        var model = body["models"]!.AsArray().Single()!.AsObject();
        Assert.Equal("builtin", model["id"]!.GetValue<string>());
        Assert.Equal("adm", model["family"]!.GetValue<string>());
        Assert.Equal(Enumerable.Range(0, 10), model["labels"]!.AsArray().Select(l => l!.GetValue<int>()));
        Assert.True(model["cfg"]!.GetValue<bool>());
        Assert.Contains("dpmpp-2m", model["schedulers"]!.AsArray().Select(s => s!.GetValue<string>()));

        var (ls, layers) = await host.GetJson("/api/models/builtin/layers");
        Assert.Equal(HttpStatusCode.OK, ls);
        var list = layers["layers"]!.AsArray().Select(l => l!.AsObject()).ToList();
        Assert.Equal(host.App.Models.Get("builtin")!.AttentionLayers.Select(l => l.Name), list.Select(l => l["name"]!.GetValue<string>()));
        Assert.All(list, l => Assert.InRange(l["pagCost"]!.GetValue<double>(), 1.0, 2.0));
        Assert.All(list, l => Assert.InRange(l["cfgPagCost"]!.GetValue<double>(), 1.0, 1.5));
        // A later layer is cheaper: the perturbed branch forks there.
        Assert.True(list[0]["pagCost"]!.GetValue<double>() > list[^1]["pagCost"]!.GetValue<double>());
        Assert.Equal(["output_blocks.1.1"], list.Where(l => l["default"]!.GetValue<bool>()).Select(l => l["name"]!.GetValue<string>()));

        var (missing, error) = await host.GetJson("/api/models/nope/layers");
        Assert.Equal(HttpStatusCode.NotFound, missing);
        Assert.Contains("unknown model 'nope'", error["error"]!.GetValue<string>());
        var (none, noEndpoint) = await host.GetJson("/api/nothing");
        Assert.Equal(HttpStatusCode.NotFound, none);
        Assert.Contains("no such endpoint", noEndpoint["error"]!.GetValue<string>());
    }

    [Fact]
    public async Task ThePageComesFromTheToolItself()
    {
        await using var host = await ServeTestHost.StartAsync();
        using var page = await host.Client.GetAsync("/");
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType?.MediaType);
        string html = await page.Content.ReadAsStringAsync();
        Assert.Contains("<script src=\"/app.js\"", html);
        // No CDN and no other origin: every src/href of the page is a path on this server.
        Assert.DoesNotMatch("(src|href)=\"(https?:)?//", html);
        Assert.Contains("default-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
        foreach (var (path, type) in new[] { ("/app.js", "text/javascript"), ("/app.css", "text/css") })
        {
            using var res = await host.Client.GetAsync(path);
            Assert.Equal(HttpStatusCode.OK, res.StatusCode);
            Assert.Equal(type, res.Content.Headers.ContentType?.MediaType);
            Assert.DoesNotContain("http://", await res.Content.ReadAsStringAsync());
        }
    }

    [Fact]
    public async Task AJobStreamsProgressAndLeavesItsFilesForDownload()
    {
        await using var host = await ServeTestHost.StartAsync();
        var (status, job) = await host.Post("""{"model": "builtin", "label": 3, "seed": 5, "count": 2, "steps": 6, "scheduler": "ddim", "methods": ["none", "pag:2", "cfg:3+pag:2"]}""");
        Assert.Equal(HttpStatusCode.Accepted, status);
        string id = job["id"]!.GetValue<string>();
        Assert.Matches("^[0-9a-f]{12}$", id);
        Assert.Equal(["none", "pag:2", "cfg:3+pag:2"], job["request"]!["methods"]!.AsArray().Select(m => m!.GetValue<string>()));
        Assert.Equal(["output_blocks.1.1"], job["request"]!["layers"]!.AsArray().Select(m => m!.GetValue<string>())); // the model's default

        // Server-sent events: the job's JSON at every change, ending with the finished job.
        var events = new List<JsonObject>();
        using (var req = new HttpRequestMessage(HttpMethod.Get, $"/api/jobs/{id}/events"))
        using (var res = await host.Client.SendAsync(req, HttpCompletionOption.ResponseHeadersRead))
        {
            Assert.Equal("text/event-stream", res.Content.Headers.ContentType?.MediaType);
            using var reader = new StreamReader(await res.Content.ReadAsStreamAsync());
            string? line, evt = null;
            while ((line = await reader.ReadLineAsync()) is not null)
            {
                if (line.StartsWith("event: ", StringComparison.Ordinal)) evt = line[7..];
                else if (line.StartsWith("data: ", StringComparison.Ordinal) && evt == "job") events.Add(JsonNode.Parse(line[6..])!.AsObject());
            }
        }
        var last = events[^1];
        Assert.True(ServeTestHost.Status(last) == "succeeded", last.ToJsonString());
        Assert.Equal(1.0, last["progress"]!["fraction"]!.GetValue<double>());
        // The stream ends when the job does; the snapshots it sent are consistent with each other.
        Assert.All(events, e => Assert.Equal(id, e["id"]!.GetValue<string>()));
        Assert.All(events.Where(e => ServeTestHost.Status(e) == "running"), e => Assert.InRange(e["progress"]!["step"]!.GetValue<int>(), 0, 6));

        var result = last["result"]!.AsObject();
        Assert.Equal([5L, 6L], result["seeds"]!.AsArray().Select(s => s!.GetValue<long>()));
        var images = result["images"]!.AsArray().Select(r => r!.AsArray().Select(f => f!.GetValue<string>()).ToArray()).ToArray();
        Assert.Equal(2, images.Length);
        Assert.All(images, r => Assert.Equal(3, r.Length));
        Assert.Equal("seed5_2_cfg-3_pag-2.png", images[0][2]);

        string temp = host.Dir.File("downloaded.png");
        foreach (var name in images.SelectMany(r => r))
        {
            using var res = await host.Client.GetAsync($"/api/jobs/{id}/files/{name}");
            Assert.Equal(HttpStatusCode.OK, res.StatusCode);
            Assert.Equal("image/png", res.Content.Headers.ContentType?.MediaType);
            await File.WriteAllBytesAsync(temp, await res.Content.ReadAsByteArrayAsync());
            Png.LoadRgb8(temp, out int w, out int h);
            Assert.Equal((32, 32), (w, h));
        }
        using (var grid = await host.Client.GetAsync($"/api/jobs/{id}/files/grid.png"))
        {
            await File.WriteAllBytesAsync(temp, await grid.Content.ReadAsByteArrayAsync());
            Png.LoadRgb8(temp, out int w, out int h);
            Assert.True(w > 3 * 64 && h > 2 * 64, $"grid {w}×{h}"); // 3 columns × 2 rows of 64-pixel tiles, plus labels
        }
        using (var run = await host.Client.GetAsync($"/api/jobs/{id}/files/run.json"))
        {
            var manifest = JsonNode.Parse(await run.Content.ReadAsStringAsync())!.AsObject();
            Assert.Equal(id, manifest["job"]!.GetValue<string>());
            Assert.StartsWith("built-in mnist", manifest["model"]!["source"]!.GetValue<string>());
            var columns = manifest["columns"]!.AsArray();
            Assert.Equal(3.0, columns[2]!["guidance"]!["guidance_scale"]!.GetValue<double>());
            Assert.Equal(2.0, columns[1]!["guidance"]!["pag_scale"]!.GetValue<double>());
        }
        using (var zip = await host.Client.GetAsync($"/api/jobs/{id}/files/results.zip"))
        {
            Assert.Equal("application/zip", zip.Content.Headers.ContentType?.MediaType);
            using var archive = new ZipArchive(await zip.Content.ReadAsStreamAsync());
            Assert.Equal(images.SelectMany(r => r).Append("grid.png").Append("run.json").Order(), archive.Entries.Select(e => e.FullName).Order());
        }
        // Only the job's own files: other names, and paths, are not served.
        foreach (var bad in new[] { "nope.png", "..%2F..%2Fetc%2Fpasswd", ".preview.png" })
        {
            var (code, err) = await host.GetJson($"/api/jobs/{id}/files/{bad}");
            Assert.Equal(HttpStatusCode.NotFound, code);
            Assert.Contains("has no file", err["error"]!.GetValue<string>());
        }
        // On disk: OUTPUT/ID with exactly these files, and nothing left in staging.
        Assert.Equal(images.SelectMany(r => r).Append("grid.png").Append("run.json").Append("results.zip").Order(),
            Directory.EnumerateFiles(Path.Combine(host.Output, id)).Select(Path.GetFileName).Order()!);
        Assert.Empty(Directory.EnumerateFileSystemEntries(host.App.Queue.Staging));
        // A finished job cannot be cancelled.
        var (conflict, why) = await host.Delete(id);
        Assert.Equal(HttpStatusCode.Conflict, conflict);
        Assert.Contains("already succeeded", why["error"]!.GetValue<string>());
    }

    public static TheoryData<string, string, string> BadRequests => new()
    {
        { "steps 0", """{"steps": 0}""", "'steps' must be an integer from 1 to 200" },
        { "too many steps", """{"steps": 201}""", "'steps' must be an integer from 1 to 200" },
        { "steps not a number", """{"steps": "ten"}""", "'steps' must be an integer" },
        { "fractional count", """{"count": 1.5}""", "'count' must be an integer from 1 to 16" },
        { "too many seeds", """{"count": 17}""", "'count' must be an integer from 1 to 16" },
        { "negative seed", """{"seed": -1}""", "'seed' must be an integer from 0" },
        { "misspelled field", """{"stpes": 5}""", "unknown field 'stpes'" },
        { "unknown model", """{"model": "sd-nope"}""", "unknown model 'sd-nope'; valid: builtin" },
        { "unknown scheduler", """{"scheduler": "heun"}""", "unknown scheduler 'heun'" },
        { "unknown method", """{"methods": ["pig:2"]}""", "unknown method 'pig'" },
        { "negative scale", """{"methods": ["pag:-1"]}""", "method 'pag:-1'" },
        { "huge scale", """{"methods": ["pag:1e9"]}""", "must be at most 100" },
        { "PAG with SAG", """{"methods": ["pag:1+sag:1"]}""", "PAG and SAG cannot be combined" },
        { "autoguidance", """{"methods": ["auto:2"]}""", "autoguidance needs a second, weaker model" },
        { "no methods", """{"methods": []}""", "'methods' is empty" },
        { "too many methods", """{"methods": ["none","none","none","none","none","none","none","none","none"]}""", "at most 8" },
        { "CFG without a label", """{"methods": ["cfg:3"]}""", "CFG pushes towards a class: give 'label'" },
        { "label out of range", """{"label": 11}""", "'label' must be an integer from 0 to 10" },
        { "prompt on ADM", """{"prompt": "a cat"}""", "'prompt' is for Stable Diffusion models" },
        { "unknown layer", """{"layers": ["output_blocks.99.1"]}""", "'output_blocks.99.1' is not an attention layer of builtin" },
        { "empty layers", """{"layers": []}""", "'layers' is empty" },
        { "layer spec matching nothing", """{"layers": "@4"}""", "'layers'" },
        { "not an object", "[1, 2]", "must be a JSON object" },
        { "not JSON", "{\"steps\": ", "not valid JSON" },
    };

    [Theory]
    [MemberData(nameof(BadRequests))]
    public async Task ABadRequestIsA400WithAMessageAndQueuesNothing(string name, string body, string message)
    {
        await using var host = await ServeTestHost.StartAsync();
        var (status, error) = await host.Post(body);
        Assert.True(status == HttpStatusCode.BadRequest, $"{name}: {(int)status} {error.ToJsonString()}");
        string text = error["error"]!.GetValue<string>();
        Assert.Contains(message, text);
        Assert.DoesNotContain("   at ", text); // never a stack trace
        Assert.Empty((await host.GetJson("/api/jobs")).Body["jobs"]!.AsArray());
        Assert.False(Directory.Exists(host.App.Queue.Staging) && Directory.EnumerateFileSystemEntries(host.App.Queue.Staging).Any());
    }

    [Fact]
    public async Task TheBodyMustBeJsonAndSmall()
    {
        await using var host = await ServeTestHost.StartAsync();
        var (type, e1) = await host.Post("steps=3", "application/x-www-form-urlencoded");
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, type);
        Assert.Contains("Content-Type: application/json", e1["error"]!.GetValue<string>());
        var (size, e2) = await host.Post("{\"prompt\": \"" + new string('x', 70_000) + "\"}");
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, size);
        Assert.Contains("larger than 65536 bytes", e2["error"]!.GetValue<string>());
    }

    [Fact]
    public async Task JobsQueueOneAtATimeAndCancellingLeavesNoFiles()
    {
        await using var host = await ServeTestHost.StartAsync(new ServeLimits { MaxQueue = 1, MaxSteps = 1000 });
        // A long job: 1000 steps (it is cancelled long before the end).
        var (s1, a) = await host.Post("""{"count": 8, "steps": 1000, "methods": ["pag:2"]}""");
        Assert.Equal(HttpStatusCode.Accepted, s1);
        string idA = a["id"]!.GetValue<string>();
        await host.WaitFor(idA, j => ServeTestHost.Status(j) == "running" && j["progress"]!["step"]!.GetValue<int>() >= 2);
        Assert.True(Directory.Exists(Path.Combine(host.App.Queue.Staging, idA)), "a running job writes into its staging folder");

        // The second job waits, and says where it stands.
        var (s2, b) = await host.Post("""{"count": 1, "steps": 3, "methods": ["none"]}""");
        Assert.Equal(HttpStatusCode.Accepted, s2);
        Assert.Equal("queued", ServeTestHost.Status(b));
        Assert.Equal(1, b["position"]!.GetValue<int>());
        Assert.Equal(1, b["ahead"]!.GetValue<int>());
        string idB = b["id"]!.GetValue<string>();
        // The queue holds one waiting job: a third is refused.
        var (s3, full) = await host.Post("""{"count": 1, "steps": 3}""");
        Assert.Equal(HttpStatusCode.TooManyRequests, s3);
        Assert.Contains("the queue is full", full["error"]!.GetValue<string>());

        // Cancel the running job: it stops after its step; its staging folder is deleted and no result folder appears.
        var (c, cancelling) = await host.Delete(idA);
        Assert.Equal(HttpStatusCode.Accepted, c);
        Assert.True(cancelling["cancelling"]!.GetValue<bool>());
        var cancelled = await host.WaitFor(idA, j => ServeTestHost.Status(j) != "running");
        Assert.Equal("cancelled", ServeTestHost.Status(cancelled));
        Assert.False(Directory.Exists(Path.Combine(host.Output, idA)));
        Assert.False(Directory.Exists(Path.Combine(host.App.Queue.Staging, idA)));
        var (gone, noFiles) = await host.GetJson($"/api/jobs/{idA}/files/grid.png");
        Assert.Equal(HttpStatusCode.NotFound, gone);
        Assert.Contains("has no files (it is cancelled)", noFiles["error"]!.GetValue<string>());

        // Then the waiting job runs.
        var done = await host.WaitFor(idB, j => ServeTestHost.Status(j) is "succeeded" or "failed");
        Assert.Equal("succeeded", ServeTestHost.Status(done));
        Assert.True(File.Exists(Path.Combine(host.Output, idB, "grid.png")));

        // A queued job is cancelled at once and never runs.
        var (_, longJob) = await host.Post("""{"count": 8, "steps": 1000, "methods": ["none"]}""");
        string idC = longJob["id"]!.GetValue<string>();
        await host.WaitFor(idC, j => ServeTestHost.Status(j) == "running");
        var (_, d) = await host.Post("""{"count": 1, "steps": 3}""");
        string idD = d["id"]!.GetValue<string>();
        var (cd, queuedCancel) = await host.Delete(idD);
        Assert.Equal(HttpStatusCode.Accepted, cd);
        Assert.Equal("cancelled", ServeTestHost.Status(queuedCancel));
        Assert.Null(queuedCancel["startedAt"]);
        await host.Delete(idC);
        await host.WaitFor(idC, j => ServeTestHost.Status(j) == "cancelled");
        Assert.Equal([idB], Directory.EnumerateDirectories(host.Output).Select(Path.GetFileName).Where(n => n != ".staging"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(host.App.Queue.Staging));
        var (unknown, _) = await host.Delete("0123456789ab");
        Assert.Equal(HttpStatusCode.NotFound, unknown);
    }

    [Fact]
    public async Task ARunningJobShowsAPreviewOfItsPredictedImages()
    {
        await using var host = await ServeTestHost.StartAsync(new ServeLimits { MaxSteps = 1000 });
        var (_, job) = await host.Post("""{"count": 2, "steps": 1000, "methods": ["none"]}""");
        string id = job["id"]!.GetValue<string>();
        var running = await host.WaitFor(id, j => j["preview"] is not null);
        using (var res = await host.Client.GetAsync(running["preview"]!.GetValue<string>()))
        {
            Assert.Equal(HttpStatusCode.OK, res.StatusCode);
            Assert.Equal("image/png", res.Content.Headers.ContentType?.MediaType);
            string temp = host.Dir.File("preview.png");
            await File.WriteAllBytesAsync(temp, await res.Content.ReadAsByteArrayAsync());
            Png.LoadRgb8(temp, out int w, out int h);
            Assert.Equal((2 * 34 + 2, 36), (w, h)); // one row of the 2 samples, padded
        }
        await host.Delete(id);
        await host.WaitFor(id, j => ServeTestHost.Status(j) == "cancelled");
        var (gone, _) = await host.GetJson($"/api/jobs/{id}/preview");
        Assert.Equal(HttpStatusCode.NotFound, gone);
    }

    /// <summary>The server samples an ADM column with its own loop (for the previews); the images are those of <see cref="Sampler.Sample"/>.</summary>
    [Theory]
    [InlineData("ddim", "pag:2", 4)]
    [InlineData("euler-a", "cfg:3+pag:1", 10)]
    [InlineData("dpmpp-2m", "cfg:2+sag:0.75", 4)]
    public void AServerColumnIsWhatTheSamplerMakes(string scheduler, string method, int steps)
    {
        using var models = ModelRegistry.Create(null, null, null, []);
        var plan = JobRequest.Parse($$"""{"label": 7, "seed": 11, "count": 3, "steps": {{steps}}, "scheduler": "{{scheduler}}", "methods": ["{{method}}"]}""", models, new ServeLimits());
        var model = (AdmServeModel)plan.Model;
        var g = plan.Columns[0].Guidance;
        int previews = 0;
        using var mine = new JobRunner(models).SampleAdm(model, plan, g, null, _ => previews++, default);
        using var reference = Sampler.Sample(model.Net, JobRequest.Options(g, 7, 11, 3, scheduler, steps), [0, 1, 2]);
        Assert.True(mine.isfinite().all().item<bool>());
        Assert.Equal(0.0, (mine - reference).abs().max().item<float>());
        Assert.Equal(steps, previews); // fewer than 12 steps: a preview at each
    }

    [Fact]
    public async Task ErrorsOfTheServerAreJsonWithoutAStackTrace()
    {
        await using var host = await ServeTestHost.StartAsync();
        var (status, body) = await host.GetJson("/api/jobs/not-a-job");
        Assert.Equal(HttpStatusCode.NotFound, status);
        Assert.Contains("no job 'not-a-job'", body["error"]!.GetValue<string>());
        // Cross-origin POST (a page elsewhere) and a foreign Host name (DNS rebinding) are refused.
        using var cross = new HttpRequestMessage(HttpMethod.Post, "/api/jobs") { Content = new StringContent("{}", System.Text.Encoding.UTF8, "application/json") };
        cross.Headers.Add("Origin", "http://evil.example");
        using var r1 = await host.Client.SendAsync(cross);
        Assert.Equal(HttpStatusCode.Forbidden, r1.StatusCode);
        Assert.Contains("cross-origin", (await ServeTestHost.ReadJson(r1))["error"]!.GetValue<string>());
        using var rebinding = new HttpRequestMessage(HttpMethod.Get, "/api/models");
        rebinding.Headers.Host = "attacker.example:7860";
        using var r2 = await host.Client.SendAsync(rebinding);
        Assert.Equal(HttpStatusCode.Forbidden, r2.StatusCode);
        Assert.Contains("localhost, 127.0.0.1 and [::1] only", (await ServeTestHost.ReadJson(r2))["error"]!.GetValue<string>());
        Assert.Empty((await host.GetJson("/api/jobs")).Body["jobs"]!.AsArray());
    }
}
