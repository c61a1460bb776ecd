using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.TestHost;
using PagSharp.Cli.Serve;

namespace PagSharp.Tests.Serve;

/// <summary>The server tests run one at a time: each runs jobs on the CPU, and two at once would only slow both.</summary>
[CollectionDefinition(Name)]
public sealed class ServeCollection
{
    public const string Name = "pag serve";
}

/// <summary>
/// A <c>pag serve</c> server for a test: in process (ASP.NET Core's TestServer, no socket) or on Kestrel at
/// 127.0.0.1 with a free port; the built-in model, a temporary output folder, and JSON helpers.
/// </summary>
internal sealed class ServeTestHost : IAsyncDisposable
{
    private readonly bool _ownsModels;

    private ServeTestHost(ServeApp app, TempDir dir, HttpClient client, bool ownsModels)
    {
        App = app;
        Dir = dir;
        Client = client;
        _ownsModels = ownsModels;
    }

    public ServeApp App { get; }
    public TempDir Dir { get; }
    public HttpClient Client { get; }
    public string Output => App.Queue.Output;
    public List<string> Log { get; } = new();

    /// <summary>Starts a server; <paramref name="kestrel"/>: a real socket at 127.0.0.1 (port 0 unless given).</summary>
    public static async Task<ServeTestHost> StartAsync(ServeLimits? limits = null, bool kestrel = false, ModelRegistry? models = null)
    {
        var dir = new TempDir();
        bool owns = models is null;
        models ??= ModelRegistry.Create(null, null, null, []);
        var options = new ServeOptions { Port = 0, Output = dir.File("out"), Limits = limits ?? new ServeLimits() };
        var log = new List<string>();
        var app = ServeApp.Create(options, models, m => { lock (log) log.Add(m); }, kestrel ? null : b => b.WebHost.UseTestServer());
        await app.StartAsync();
        HttpClient client;
        if (kestrel) client = new HttpClient { BaseAddress = new Uri(app.Urls.Single()), Timeout = TimeSpan.FromSeconds(60) };
        else
        {
            client = app.Web.GetTestClient();
            client.Timeout = TimeSpan.FromSeconds(60);
        }
        var host = new ServeTestHost(app, dir, client, owns);
        host.Log.AddRange(log);
        return host;
    }

    public async Task<(HttpStatusCode Status, JsonObject Body)> GetJson(string path)
    {
        using var res = await Client.GetAsync(path);
        return (res.StatusCode, await ReadJson(res));
    }

    public async Task<(HttpStatusCode Status, JsonObject Body)> Post(string json, string contentType = "application/json")
    {
        using var content = new StringContent(json, Encoding.UTF8);
        content.Headers.ContentType = new MediaTypeHeaderValue(contentType);
        using var res = await Client.PostAsync("/api/jobs", content);
        return (res.StatusCode, await ReadJson(res));
    }

    public Task<(HttpStatusCode Status, JsonObject Body)> Post(JsonObject request) => Post(request.ToJsonString());

    public async Task<(HttpStatusCode Status, JsonObject Body)> Delete(string id)
    {
        using var res = await Client.DeleteAsync($"/api/jobs/{id}");
        return (res.StatusCode, await ReadJson(res));
    }

    public static async Task<JsonObject> ReadJson(HttpResponseMessage res)
    {
        string text = await res.Content.ReadAsStringAsync();
        Assert.True(res.Content.Headers.ContentType?.MediaType == "application/json", $"{(int)res.StatusCode}: not JSON ({res.Content.Headers.ContentType}): {text}");
        return JsonNode.Parse(text)!.AsObject();
    }

    /// <summary>Polls the job until <paramref name="done"/> holds for its JSON (at most <paramref name="seconds"/>).</summary>
    public async Task<JsonObject> WaitFor(string id, Func<JsonObject, bool> done, double seconds = 60)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (true)
        {
            var (status, job) = await GetJson($"/api/jobs/{id}");
            Assert.Equal(HttpStatusCode.OK, status);
            if (done(job)) return job;
            Assert.True(DateTime.UtcNow < deadline, $"job {id} did not get there in {seconds} s: {job.ToJsonString()}");
            await Task.Delay(20);
        }
    }

    public static string Status(JsonObject job) => job["status"]!.GetValue<string>();

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await App.DisposeAsync();
        if (_ownsModels) App.Models.Dispose();
        Dir.Dispose();
    }
}
