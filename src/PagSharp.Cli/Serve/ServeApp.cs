using System.Net;
using System.Reflection;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.Extensions.DependencyInjection;

namespace PagSharp.Cli.Serve;

/// <summary>
/// <c>pag serve</c>'s web server: the page (static files inside pag.dll) and the JSON API over a
/// <see cref="JobQueue"/>. Answers only loopback Host names unless started with an explicit --host, refuses
/// cross-origin POST/DELETE, and turns every error into <c>{"error": message}</c> (never a stack trace).
/// </summary>
public sealed partial class ServeApp : IAsyncDisposable
{
    private static readonly Dictionary<string, (string Resource, string ContentType)> StaticFiles = new(StringComparer.Ordinal)
    {
        ["/"] = ("index.html", "text/html; charset=utf-8"),
        ["/index.html"] = ("index.html", "text/html; charset=utf-8"),
        ["/app.js"] = ("app.js", "text/javascript; charset=utf-8"),
        ["/app.css"] = ("app.css", "text/css; charset=utf-8"),
    };

    private readonly Action<string> _log;

    /// <summary>JSON as written: readable (×, +, ', non-ASCII) rather than \u-escaped; served as application/json with nosniff.</summary>
    internal static readonly JsonSerializerOptions JsonOut = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    private ServeApp(WebApplication app, ServeOptions options, ModelRegistry models, JobQueue queue, Action<string> log)
    {
        Web = app;
        Options = options;
        Models = models;
        Queue = queue;
        _log = log;
    }

    public WebApplication Web { get; }
    public ServeOptions Options { get; }
    public ModelRegistry Models { get; }
    public JobQueue Queue { get; }

    /// <summary>
    /// Builds the server. <paramref name="server"/> replaces Kestrel (tests pass <c>b =&gt; b.WebHost.UseTestServer()</c>);
    /// without it Kestrel listens on <see cref="ServeOptions.Host"/>:<see cref="ServeOptions.Port"/>.
    /// </summary>
    public static ServeApp Create(ServeOptions options, ModelRegistry models, Action<string>? log = null, Action<WebApplicationBuilder>? server = null,
                                  IJobRunner? runner = null)
    {
        options.Validate();
        log ??= _ => { };
        // An empty builder: no appsettings.json, environment variables or command line can change where it listens.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ApplicationName = "pag", ContentRootPath = AppContext.BaseDirectory });
        builder.Services.AddRoutingCore();
        if (server is not null) server(builder);
        else
        {
            builder.WebHost.UseKestrelCore();
            builder.WebHost.ConfigureKestrel(k =>
            {
                k.AddServerHeader = false;
                k.Limits.MaxRequestBodySize = options.Limits.MaxBodyBytes;
                k.Limits.MaxRequestHeadersTotalSize = 32 * 1024;
                if (options.Address is { } a) k.Listen(a, options.Port);
                else if (options.Port == 0) k.Listen(IPAddress.Loopback, 0);
                else k.ListenLocalhost(options.Port);
            });
        }
        var app = builder.Build();
        var queue = new JobQueue(options.Output, options.Limits, runner ?? new JobRunner(models), log);
        var serve = new ServeApp(app, options, models, queue, log);
        serve.Map();
        return serve;
    }

    /// <summary>Starts the worker and the server.</summary>
    public async Task StartAsync(CancellationToken cancellation = default)
    {
        Queue.Start();
        try
        {
            await Web.StartAsync(cancellation).ConfigureAwait(false);
        }
        catch (IOException e) when (e.InnerException is Microsoft.AspNetCore.Connections.AddressInUseException || e.Message.Contains("address already in use", StringComparison.OrdinalIgnoreCase))
        {
            Queue.Stop();
            throw new PagSharpException($"cannot listen on {Options.Host}:{Options.Port}: the port is in use; give another with --port N (0 = any free port)");
        }
    }

    /// <summary>The addresses the server listens on (with the port Kestrel picked for --port 0).</summary>
    public IReadOnlyList<string> Urls =>
        Web.Services.GetService<Microsoft.AspNetCore.Hosting.Server.IServer>()?.Features.Get<IServerAddressesFeature>()?.Addresses.ToArray() ?? [];

    public async ValueTask DisposeAsync()
    {
        Queue.Stop(); // the running job stops after its step and leaves nothing behind
        await Web.StopAsync().ConfigureAwait(false);
        await Web.DisposeAsync().ConfigureAwait(false);
        Queue.Dispose();
    }

    private void Map()
    {
        var app = Web;
        app.Use(Guard);
        foreach (var (path, _) in StaticFiles) app.MapGet(path, ServeStatic);
        app.MapGet("/api/models", ListModels);
        app.MapGet("/api/models/{id}/layers", ListLayers);
        app.MapGet("/api/jobs", ListJobs);
        app.MapPost("/api/jobs", SubmitJob);
        app.MapGet("/api/jobs/{id}", GetJob);
        app.MapDelete("/api/jobs/{id}", CancelJob);
        app.MapGet("/api/jobs/{id}/events", Events);
        app.MapGet("/api/jobs/{id}/preview", Preview);
        app.MapGet("/api/jobs/{id}/files/{name}", GetFile);
        app.MapFallback(c => Error(c, 404, c.Request.Path.StartsWithSegments("/api")
            ? $"no such endpoint: {c.Request.Method} {c.Request.Path}; see GET /api/models, POST /api/jobs, GET /api/jobs/{{id}}"
            : "not found"));
    }

    /// <summary>Security checks and the error boundary, before any endpoint.</summary>
    private async Task Guard(HttpContext c, RequestDelegate next)
    {
        var h = c.Response.Headers;
        h["X-Content-Type-Options"] = "nosniff";
        h["Referrer-Policy"] = "no-referrer";
        h["X-Frame-Options"] = "DENY";
        h["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";
        h["Cross-Origin-Resource-Policy"] = "same-origin";
        try
        {
            // DNS rebinding: a page elsewhere that points its own name at 127.0.0.1 sends its name as the Host.
            string host = c.Request.Host.Host;
            if (!Options.AnyHostHeader && !IsLoopbackName(host))
            {
                await Error(c, 403, $"this server answers requests for localhost, 127.0.0.1 and [::1] only (Host '{host}'); start it with --host to serve other names").ConfigureAwait(false);
                return;
            }
            // Cross-site requests that change something: refused (the API has no cookies, but a job costs CPU time).
            if (!HttpMethods.IsGet(c.Request.Method) && !HttpMethods.IsHead(c.Request.Method))
            {
                string? origin = c.Request.Headers.Origin;
                if (!string.IsNullOrEmpty(origin) && (!Uri.TryCreate(origin, UriKind.Absolute, out var o)
                    || !string.Equals(o.Authority, c.Request.Host.Value, StringComparison.OrdinalIgnoreCase)))
                {
                    await Error(c, 403, $"cross-origin request from {origin} refused").ConfigureAwait(false);
                    return;
                }
                if (string.Equals(c.Request.Headers["Sec-Fetch-Site"], "cross-site", StringComparison.OrdinalIgnoreCase))
                {
                    await Error(c, 403, "cross-site request refused").ConfigureAwait(false);
                    return;
                }
            }
            if (c.Request.Path.StartsWithSegments("/api")) h.CacheControl = "no-store";
            await next(c).ConfigureAwait(false);
        }
        catch (ServeError e)
        {
            if (!c.Response.HasStarted) await Error(c, e.Status, e.Message).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e)
        {
            if (!c.Response.HasStarted) await Error(c, e.StatusCode, e.StatusCode == 413 ? $"the request body is larger than {Options.Limits.MaxBodyBytes} bytes" : "bad request").ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (c.RequestAborted.IsCancellationRequested)
        {
            // the client went away
        }
        catch (Exception e)
        {
            _log($"error in {c.Request.Method} {c.Request.Path}: {e}");
            if (!c.Response.HasStarted) await Error(c, 500, $"internal error ({e.GetType().Name}); the server's console has the details").ConfigureAwait(false);
        }
    }

    private static bool IsLoopbackName(string host) =>
        host.Equals("localhost", StringComparison.OrdinalIgnoreCase) || host.EndsWith(".localhost", StringComparison.OrdinalIgnoreCase)
        || (IPAddress.TryParse(host.Trim('[', ']'), out var a) && IPAddress.IsLoopback(a));

    private static async Task ServeStatic(HttpContext c)
    {
        var (resource, type) = StaticFiles[c.Request.Path.Value!];
        using var s = Assembly.GetExecutingAssembly().GetManifestResourceStream("PagSharp.Cli.Serve.wwwroot." + resource)
            ?? throw new ServeError(500, $"the page's file {resource} is missing from pag.dll");
        c.Response.ContentType = type;
        c.Response.Headers.CacheControl = "no-cache";
        await s.CopyToAsync(c.Response.Body, c.RequestAborted).ConfigureAwait(false);
    }

    private Task ListModels(HttpContext c)
    {
        var l = Options.Limits;
        return Json(c, 200, new JsonObject
        {
            ["limits"] = new JsonObject
            {
                ["maxCount"] = l.MaxCount, ["maxSteps"] = l.MaxSteps, ["maxColumns"] = l.MaxColumns, ["maxQueue"] = l.MaxQueue,
                ["maxImageSize"] = l.MaxImageSize, ["maxPromptLength"] = l.MaxPromptLength, ["maxSeed"] = JobRequest.MaxSeed,
            },
            ["models"] = new JsonArray(Models.Models.Select(m => (JsonNode)m.Describe()).ToArray()),
        });
    }

    private Task ListLayers(HttpContext c)
    {
        string id = (string)c.Request.RouteValues["id"]!;
        var model = Models.Get(id) ?? throw new ServeError(404, $"unknown model '{id}'; valid: {string.Join(", ", Models.Models.Select(m => m.Id))}");
        var defaults = model.DefaultLayers.ToHashSet(StringComparer.Ordinal);
        return Json(c, 200, new JsonObject
        {
            ["model"] = model.Id,
            ["layers"] = new JsonArray(model.Layers.Select(l => (JsonNode)new JsonObject
            {
                ["name"] = l.Name, ["group"] = l.Group, ["resolution"] = l.Resolution, ["channels"] = l.Channels, ["heads"] = l.Heads,
                ["pagCost"] = l.PagCost, ["cfgPagCost"] = l.CfgPagCost, ["default"] = defaults.Contains(l.Name),
            }).ToArray()),
            ["defaultLayers"] = new JsonArray(model.DefaultLayers.Select(n => (JsonNode)n!).ToArray()),
            ["cost"] = "multiply-adds of a step with PAG at that layer alone ÷ an unguided step (pagCost), and CFG+PAG ÷ CFG (cfgPagCost), as PagSharp runs it: the perturbed branch forks at the layer, so a later layer is cheaper; several layers cost about what the earliest of them costs",
        });
    }

    private Task ListJobs(HttpContext c) =>
        Json(c, 200, new JsonObject { ["jobs"] = new JsonArray(Queue.All().Select(j => (JsonNode)Queue.Snapshot(j)).ToArray()) });

    private async Task SubmitJob(HttpContext c)
    {
        var type = c.Request.ContentType;
        if (type is null || !type.StartsWith("application/json", StringComparison.OrdinalIgnoreCase))
            throw new ServeError(415, "send the job as JSON (Content-Type: application/json)");
        string body = await ReadBody(c).ConfigureAwait(false);
        var plan = JobRequest.Parse(body, Models, Options.Limits);
        var job = Queue.Submit(plan);
        c.Response.Headers.Location = $"/api/jobs/{job.Id}";
        await Json(c, 202, Queue.Snapshot(job)).ConfigureAwait(false);
    }

    private async Task<string> ReadBody(HttpContext c)
    {
        int max = Options.Limits.MaxBodyBytes;
        if (c.Request.ContentLength > max) throw new ServeError(413, $"the request body is larger than {max} bytes");
        var buffer = new MemoryStream();
        var chunk = new byte[8192];
        int n;
        while ((n = await c.Request.Body.ReadAsync(chunk, c.RequestAborted).ConfigureAwait(false)) > 0)
        {
            buffer.Write(chunk, 0, n);
            if (buffer.Length > max) throw new ServeError(413, $"the request body is larger than {max} bytes");
        }
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(buffer.GetBuffer(), 0, (int)buffer.Length); }
        catch (DecoderFallbackException) { throw new ServeError(400, "the request body is not UTF-8 text"); }
    }

    private Job FindJob(HttpContext c)
    {
        string id = (string)c.Request.RouteValues["id"]!;
        if (!JobId().IsMatch(id)) throw new ServeError(404, $"no job '{id}' (job ids are 12 hexadecimal digits)");
        return Queue.Get(id) ?? throw new ServeError(404, $"no job '{id}' (the server forgets old jobs; their files stay in {Queue.Output})");
    }

    private Task GetJob(HttpContext c) => Json(c, 200, Queue.Snapshot(FindJob(c)));

    private Task CancelJob(HttpContext c)
    {
        var job = FindJob(c);
        Queue.Cancel(job);
        return Json(c, 202, Queue.Snapshot(job));
    }

    /// <summary>
    /// Server-sent events: <c>event: job</c> with the job's JSON whenever it changes (queue position, step,
    /// preview, status), at most about ten a second; the stream ends after the job has finished. A comment line
    /// every 15 s keeps proxies from closing it.
    /// </summary>
    private async Task Events(HttpContext c)
    {
        var job = FindJob(c);
        c.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        c.Response.ContentType = "text/event-stream";
        c.Response.Headers.CacheControl = "no-store";
        c.Response.Headers["X-Accel-Buffering"] = "no";
        var ct = c.RequestAborted;
        string? last = null;
        await c.Response.WriteAsync("retry: 2000\n\n", ct).ConfigureAwait(false);
        await c.Response.Body.FlushAsync(ct).ConfigureAwait(false);
        while (!ct.IsCancellationRequested)
        {
            long version = Queue.Version;
            var snapshot = Queue.Snapshot(job);
            string json = snapshot.ToJsonString(JsonOut);
            if (json != last)
            {
                await c.Response.WriteAsync($"event: job\ndata: {json}\n\n", ct).ConfigureAwait(false);
                await c.Response.Body.FlushAsync(ct).ConfigureAwait(false);
                last = json;
                if (job.IsFinished) break;
                await Task.Delay(100, ct).ConfigureAwait(false);
                continue;
            }
            if (job.IsFinished) break;
            var before = Queue.Version;
            await Queue.WaitAsync(version, TimeSpan.FromSeconds(15), ct).ConfigureAwait(false);
            if (Queue.Version == before && !ct.IsCancellationRequested)
            {
                await c.Response.WriteAsync(": keep-alive\n\n", ct).ConfigureAwait(false);
                await c.Response.Body.FlushAsync(ct).ConfigureAwait(false);
            }
        }
    }

    private async Task Preview(HttpContext c)
    {
        var job = FindJob(c);
        var png = Queue.Preview(job) ?? throw new ServeError(404, $"job {job.Id} has no preview now");
        c.Response.ContentType = "image/png";
        await c.Response.Body.WriteAsync(png, c.RequestAborted).ConfigureAwait(false);
    }

    private async Task GetFile(HttpContext c)
    {
        var job = FindJob(c);
        string name = (string)c.Request.RouteValues["name"]!;
        string? path = Queue.FilePath(job, name);
        if (path is null)
        {
            string status = Queue.Snapshot(job)["status"]!.GetValue<string>();
            throw new ServeError(404, status == "succeeded" ? $"job {job.Id} has no file '{name}'"
                : $"job {job.Id} has no files (it is {status}); they appear when it has succeeded");
        }
        c.Response.ContentType = Path.GetExtension(name) switch
        {
            ".png" => "image/png",
            ".json" => "application/json; charset=utf-8",
            ".zip" => "application/zip",
            _ => "application/octet-stream",
        };
        if (name.EndsWith(".zip", StringComparison.Ordinal) || name.EndsWith(".json", StringComparison.Ordinal))
            c.Response.Headers.ContentDisposition = $"attachment; filename=\"pag-{job.Id}-{name}\"";
        c.Response.Headers.CacheControl = "private, max-age=3600";
        await using var f = File.OpenRead(path);
        c.Response.ContentLength = f.Length;
        await f.CopyToAsync(c.Response.Body, c.RequestAborted).ConfigureAwait(false);
    }

    private static Task Error(HttpContext c, int status, string message) => Json(c, status, new JsonObject { ["error"] = message });

    private static async Task Json(HttpContext c, int status, JsonNode body)
    {
        c.Response.StatusCode = status;
        c.Response.ContentType = "application/json; charset=utf-8";
        await c.Response.WriteAsync(body.ToJsonString(JsonOut), c.RequestAborted).ConfigureAwait(false);
    }

    [GeneratedRegex("^[0-9a-f]{12}$")]
    private static partial Regex JobId();
}
