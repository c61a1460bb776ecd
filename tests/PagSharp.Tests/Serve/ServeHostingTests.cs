using System.Net;
using System.Text.Json.Nodes;
using PagSharp.Cli.Commands;
using PagSharp.Cli.Serve;
using PagSharp.Guidance;
using PagSharp.Pipelines;
using PagSharp.Tests.Cli;
using PagSharp.Tests.Sd;

namespace PagSharp.Tests.Serve;

/// <summary>Where <c>pag serve</c> listens, how it starts and stops, and Stable Diffusion jobs.</summary>
[Collection(ServeCollection.Name)]
public sealed class ServeHostingTests
{
    [Fact]
    public void TheDefaultIsThisMachineOnly()
    {
        var options = new ServeCommand.Settings().ToOptions();
        Assert.Equal("127.0.0.1", options.Host);
        Assert.Equal(7860, options.Port);
        Assert.True(options.IsLoopback);
        Assert.False(options.AnyHostHeader);
        // An address given on purpose (every interface) answers any Host name; an explicit loopback address does not.
        Assert.True(new ServeCommand.Settings { Host = "0.0.0.0" }.ToOptions().AnyHostHeader);
        Assert.False(new ServeCommand.Settings { Host = "0.0.0.0" }.ToOptions().IsLoopback);
        Assert.False(new ServeCommand.Settings { Host = "::1" }.ToOptions().AnyHostHeader);
        Assert.True(new ServeCommand.Settings { Host = "localhost" }.ToOptions().IsLoopback);
    }

    [Fact]
    public async Task KestrelListensOn127001AndAnswersOverASocket()
    {
        await using var host = await ServeTestHost.StartAsync(kestrel: true);
        var url = new Uri(host.App.Urls.Single());
        Assert.Equal("127.0.0.1", url.Host);
        Assert.NotEqual(0, url.Port);
        var (status, body) = await host.GetJson("/api/models");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("builtin", body["models"]![0]!["id"]!.GetValue<string>());
        // A name other than localhost in the Host header is refused (DNS rebinding), also over the socket.
        using var req = new HttpRequestMessage(HttpMethod.Get, "/api/models");
        req.Headers.Host = $"rebind.example:{url.Port}";
        using var res = await host.Client.SendAsync(req);
        Assert.Equal(HttpStatusCode.Forbidden, res.StatusCode);
    }

    [Fact]
    public async Task TheCommandPrintsItsUrlAndStopsCleanly()
    {
        using var dir = new TempDir();
        using var models = ModelRegistry.Create(null, null, null, []);
        var lines = new List<string>();
        var url = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var stop = new CancellationTokenSource();
        var options = new ServeOptions { Port = 0, Output = dir.File("out") };
        var run = Task.Run(() => ServeCommand.Run(options, models, stop.Token, m =>
        {
            lock (lines) lines.Add(m);
            if (m.StartsWith("pag serve: http://127.0.0.1:", StringComparison.Ordinal)) url.TrySetResult(m["pag serve: ".Length..]);
        }));
        string address = await url.Task.WaitAsync(TimeSpan.FromSeconds(30));
        using (var client = new HttpClient { BaseAddress = new Uri(address) })
        {
            using var res = await client.GetAsync("/");
            Assert.Equal(HttpStatusCode.OK, res.StatusCode);
        }
        stop.Cancel();
        Assert.Equal(0, await run.WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains(lines, l => l.Contains("Ctrl-C stops", StringComparison.Ordinal));
    }

    [Fact]
    public async Task AStableDiffusionFolderServesPromptJobs()
    {
        using var folder = new TinySdFolder();
        using var models = ModelRegistry.Create(null, null, null, [folder.Root]);
        var sd = models.Models.OfType<SdServeModel>().Single();
        Assert.StartsWith("sd-", sd.Id);
        await using var host = await ServeTestHost.StartAsync(models: models);
        var (_, list) = await host.GetJson("/api/models");
        var described = list["models"]!.AsArray().Single(m => m!["id"]!.GetValue<string>() == sd.Id)!;
        Assert.Equal("sd", described["family"]!.GetValue<string>());
        int size = described["defaultWidth"]!.GetValue<int>();
        var (_, layers) = await host.GetJson($"/api/models/{sd.Id}/layers");
        var names = layers["layers"]!.AsArray().Select(l => l!["name"]!.GetValue<string>()).ToList();
        Assert.All(names, n => Assert.EndsWith(".attn1", n));

        // Stable Diffusion takes a prompt, not a label; sizes must be multiples of 8.
        var (bad, error) = await host.Post(new JsonObject { ["model"] = sd.Id, ["label"] = 3 });
        Assert.Equal(HttpStatusCode.BadRequest, bad);
        Assert.Contains("'label' is for class-conditional ADM models", error["error"]!.GetValue<string>());
        var (bad2, error2) = await host.Post(new JsonObject { ["model"] = sd.Id, ["width"] = 60 });
        Assert.Equal(HttpStatusCode.BadRequest, bad2);
        Assert.Contains("multiples of 8", error2["error"]!.GetValue<string>());

        var (status, job) = await host.Post(new JsonObject
        {
            ["model"] = sd.Id, ["prompt"] = "a cat", ["negativePrompt"] = "blurry", ["count"] = 2, ["steps"] = 2,
            ["methods"] = new JsonArray("none", "cfg:2", "cfg:2+pag:1"),
        });
        Assert.True(status == HttpStatusCode.Accepted, job.ToJsonString());
        string id = job["id"]!.GetValue<string>();
        var done = await host.WaitFor(id, j => ServeTestHost.Status(j) is "succeeded" or "failed");
        Assert.True(ServeTestHost.Status(done) == "succeeded", done.ToJsonString());
        Assert.Equal(size, done["result"]!["width"]!.GetValue<int>());
        string file = Path.Combine(host.Output, id, done["result"]!["images"]![1]![2]!.GetValue<string>());
        PagSharp.Imaging.Png.LoadRgb8(file, out int w, out int h);
        Assert.Equal((size, size), (w, h));

        // The layers listed from the meta-device U-Net are those of the loaded one.
        var loaded = models.Acquire(sd);
        Assert.Equal(loaded.Unet.AttentionLayers.Select(l => l.Name), names);

        // A server column is StableDiffusion.Generate's result (one batch; decoded one image at a time here).
        var plan = JobRequest.Parse($$"""{"model": "{{sd.Id}}", "prompt": "a cat", "count": 2, "steps": 2, "methods": ["cfg:2+pag:1"]}""", models, new ServeLimits());
        GuidanceSettings g = plan.Columns[0].Guidance;
        using var mine = JobRunner.SampleSd(loaded, plan, g, null, null, default);
        using var reference = loaded.Generate("a cat", [0, 1], g, scheduler: plan.Scheduler, steps: 2);
        Assert.True((mine - (reference * 2 - 1)).abs().max().item<float>() < 1e-4);
    }
}

/// <summary><c>pag serve</c>'s options are checked before anything starts: one line, exit 2.</summary>
[Collection(CliCollection.Name)]
public sealed class ServeCliTests
{
    [Theory]
    [InlineData("--host", "example.com", "is not an IP address")]
    [InlineData("--port", "70000", "--port must be 0..65535")]
    [InlineData("--max-count", "0", "--max-count must be 1..256")]
    [InlineData("--checkpoint", "/nonexistent/w.safetensors", "--checkpoint needs --preset NAME or --config FILE")]
    public void BadOptionsFailBeforeTheServerStarts(string option, string value, string message)
    {
        using var dir = new TempDir();
        var (exit, output) = Pag.Run("serve", option, value, "--output", dir.File("out"));
        Assert.True(exit == 2, $"exit {exit}: {output}");
        Assert.Contains(message, output.ReplaceLineEndings(" "));
        Assert.False(Directory.Exists(dir.File("out")));
    }
}
