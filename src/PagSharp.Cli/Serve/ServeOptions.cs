using System.Net;

namespace PagSharp.Cli.Serve;

/// <summary>
/// What one request may ask for (so that no request can exhaust memory or hold the server for hours), and how many
/// jobs may wait. Every limit is checked on the server; the page shows them too.
/// </summary>
public sealed record ServeLimits
{
    /// <summary>Seeds (rows) per job.</summary>
    public int MaxCount { get; init; } = 16;
    /// <summary>Sampling steps per job.</summary>
    public int MaxSteps { get; init; } = 200;
    /// <summary>Methods (columns) per job.</summary>
    public int MaxColumns { get; init; } = 8;
    /// <summary>Jobs waiting behind the running one; a job beyond that is refused (429).</summary>
    public int MaxQueue { get; init; } = 8;
    /// <summary>Largest width and height of a Stable Diffusion image, in pixels.</summary>
    public int MaxImageSize { get; init; } = 1024;
    /// <summary>Longest prompt or negative prompt, in characters.</summary>
    public int MaxPromptLength { get; init; } = 1000;
    /// <summary>Largest request body, in bytes.</summary>
    public int MaxBodyBytes { get; init; } = 64 * 1024;
    /// <summary>Finished jobs the server remembers (their files stay on disk).</summary>
    public int KeepJobs { get; init; } = 100;

    public void Validate()
    {
        static void Require(bool ok, string message) { if (!ok) throw new PagSharpException(message); }
        Require(MaxCount is >= 1 and <= 256, $"--max-count must be 1..256 (got {MaxCount})");
        Require(MaxSteps is >= 1 and <= 1000, $"--max-steps must be 1..1000 (got {MaxSteps})");
        Require(MaxQueue is >= 0 and <= 1000, $"--max-queue must be 0..1000 (got {MaxQueue})");
        Require(MaxImageSize is >= 64 and <= 4096, $"--max-size must be 64..4096 pixels (got {MaxImageSize})");
        Require(MaxColumns >= 1 && MaxPromptLength >= 1 && MaxBodyBytes >= 1024 && KeepJobs >= 1, "invalid limits");
    }
}

/// <summary>Where the server listens and writes.</summary>
public sealed record ServeOptions
{
    /// <summary>The address to listen on: an IP address or <c>localhost</c>.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>TCP port; 0 = any free port (the URL printed says which).</summary>
    public int Port { get; init; } = 7860;
    /// <summary>
    /// Whether the Host header of a request may name anything. False (the default, loopback binding): only
    /// <c>localhost</c>, <c>127.0.0.1</c> and <c>[::1]</c> are served, so a web page elsewhere cannot reach the server
    /// through a DNS name it controls (DNS rebinding).
    /// </summary>
    public bool AnyHostHeader { get; init; }
    /// <summary>Folder of finished jobs: OUTPUT/JOB-ID/ (grid.png, one PNG per image, run.json, results.zip).</summary>
    public string Output { get; init; } = Path.Combine("out", "serve");
    public ServeLimits Limits { get; init; } = new();

    /// <summary>The address <see cref="Host"/> names (localhost: null, meaning both loopback addresses).</summary>
    public IPAddress? Address => Host.Equals("localhost", StringComparison.OrdinalIgnoreCase) ? null
        : IPAddress.TryParse(Host.Trim('[', ']'), out var a) ? a
        : throw new PagSharpException($"--host '{Host}' is not an IP address; give one (127.0.0.1, ::1, 0.0.0.0 for every interface) or localhost");

    /// <summary>Whether <see cref="Host"/> is this machine only.</summary>
    public bool IsLoopback => Address is not { } a || IPAddress.IsLoopback(a);

    public void Validate()
    {
        if (Port is < 0 or > 65535) throw new PagSharpException($"--port must be 0..65535 (got {Port})");
        _ = Address;
        Limits.Validate();
    }
}
