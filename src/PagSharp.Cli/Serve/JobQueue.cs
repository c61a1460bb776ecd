using System.Security.Cryptography;
using System.Text.Json.Nodes;

namespace PagSharp.Cli.Serve;

public enum JobStatus { Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>What a finished job wrote: the image of (row = seed, column = method), the grid, run.json and the zip.</summary>
public sealed record JobResult(IReadOnlyList<long> Seeds, IReadOnlyList<string> Columns, string[][] Images, string Grid, string Run, string Zip)
{
    public IEnumerable<string> Files => Images.SelectMany(r => r).Append(Grid).Append(Run).Append(Zip);
}

/// <summary>One job. Its mutable state is changed and read under the queue's lock only.</summary>
public sealed class Job
{
    internal Job(string id, JobPlan plan)
    {
        Id = id;
        Plan = plan;
    }

    public string Id { get; }
    public JobPlan Plan { get; }
    public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;
    internal DateTimeOffset? Started { get; set; }
    internal DateTimeOffset? Finished { get; set; }
    internal JobStatus Status { get; set; }
    internal string? Error { get; set; }
    internal int Column { get; set; }
    internal int Step { get; set; }
    internal int Steps { get; set; }
    internal byte[]? Preview { get; set; }
    internal int PreviewVersion { get; set; }
    internal JobResult? Result { get; set; }
    /// <summary>The folder of a finished job (OUTPUT/ID).</summary>
    internal string? Folder { get; set; }
    internal bool CancelRequested { get; set; }
    /// <summary>The job's files are being moved into place: too late to cancel.</summary>
    internal bool Finalizing { get; set; }
    internal CancellationTokenSource Cancellation { get; } = new();
    public bool IsFinished => Status is JobStatus.Succeeded or JobStatus.Failed or JobStatus.Cancelled;
}

/// <summary>How a running job tells the queue where it stands.</summary>
public interface IJobReporter
{
    /// <summary>Column <paramref name="column"/> (0-based) has done <paramref name="step"/> of its <paramref name="steps"/> steps.</summary>
    void Step(int column, int step, int steps);
    /// <summary>A new preview image (PNG bytes) of the column running now.</summary>
    void Preview(byte[] png);
}

/// <summary>Runs one job, writing its files into the staging folder it is given.</summary>
public interface IJobRunner
{
    JobResult Run(Job job, string staging, IJobReporter reporter, CancellationToken cancellation);
}

/// <summary>
/// One job at a time, the others wait in order (at most <see cref="ServeLimits.MaxQueue"/>). A job writes into
/// OUTPUT/.staging/ID and its folder becomes OUTPUT/ID by one rename when it succeeds; a cancelled or failed job's
/// staging folder is deleted, so no half-written results remain. Every change bumps a version that the event streams
/// wait on.
/// </summary>
public sealed class JobQueue : IDisposable
{
    private readonly object _lock = new();
    private readonly LinkedList<Job> _waiting = new();
    private readonly Dictionary<string, Job> _jobs = new(StringComparer.Ordinal);
    private readonly List<Job> _order = new();
    private readonly SemaphoreSlim _signal = new(0);
    private readonly CancellationTokenSource _stop = new();
    private readonly IJobRunner _runner;
    private readonly ServeLimits _limits;
    private readonly Action<string> _log;
    private Job? _running;
    private long _version;
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Thread? _worker;

    public JobQueue(string output, ServeLimits limits, IJobRunner runner, Action<string>? log = null)
    {
        Output = Path.GetFullPath(output);
        _limits = limits;
        _runner = runner;
        _log = log ?? (_ => { });
    }

    /// <summary>Where finished jobs are: OUTPUT/ID.</summary>
    public string Output { get; }
    /// <summary>Where running jobs write: OUTPUT/.staging/ID.</summary>
    public string Staging => Path.Combine(Output, ".staging");

    /// <summary>Starts the worker thread (torch work runs there, one job at a time).</summary>
    public void Start()
    {
        Directory.CreateDirectory(Output);
        int threads = TorchSharp.torch.get_num_threads();
        _worker = new Thread(() =>
        {
            TorchSharp.torch.set_num_threads(threads); // intra-op threads as the process was configured (--threads)
            Work();
        }) { IsBackground = true, Name = "pag serve worker" };
        _worker.Start();
    }

    /// <summary>Queues a checked job; a full queue is a 429.</summary>
    public Job Submit(JobPlan plan)
    {
        Job job;
        lock (_lock)
        {
            if (_stop.IsCancellationRequested) throw new ServeError(503, "the server is stopping");
            if (_waiting.Count >= _limits.MaxQueue && (_running is not null || _waiting.Count > 0))
                throw new ServeError(429, $"the queue is full ({_waiting.Count} job{(_waiting.Count == 1 ? "" : "s")} waiting, at most {_limits.MaxQueue}); try again when one has finished");
            string id;
            do id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6)); while (_jobs.ContainsKey(id));
            job = new Job(id, plan) { Steps = plan.Steps };
            _jobs[id] = job;
            _order.Add(job);
            _waiting.AddLast(job);
            Changed();
        }
        _signal.Release();
        return job;
    }

    public Job? Get(string id)
    {
        lock (_lock) return _jobs.GetValueOrDefault(id);
    }

    /// <summary>The jobs the server remembers, newest first.</summary>
    public IReadOnlyList<Job> All()
    {
        lock (_lock) return _order.AsEnumerable().Reverse().ToArray();
    }

    /// <summary>
    /// Cancels a job: a waiting one leaves the queue at once, a running one stops after its current step and its
    /// staging folder is deleted. A finished job (or one whose files are being moved into place) is a 409.
    /// </summary>
    public void Cancel(Job job)
    {
        lock (_lock)
        {
            if (job.IsFinished || job.Finalizing)
                throw new ServeError(409, $"job {job.Id} has already {(job.IsFinished ? job.Status.ToString().ToLowerInvariant() : "finished")}; nothing to cancel");
            if (job.Status == JobStatus.Queued)
            {
                _waiting.Remove(job);
                job.Status = JobStatus.Cancelled;
                job.Finished = DateTimeOffset.UtcNow;
            }
            else job.CancelRequested = true;
            Changed();
        }
        job.Cancellation.Cancel();
    }

    /// <summary>The current version; it changes whenever any job does.</summary>
    public long Version
    {
        get { lock (_lock) return _version; }
    }

    /// <summary>Waits until the version differs from <paramref name="seen"/>, at most <paramref name="timeout"/>.</summary>
    public async Task WaitAsync(long seen, TimeSpan timeout, CancellationToken cancellation)
    {
        Task changed;
        lock (_lock)
        {
            if (_version != seen) return;
            changed = _changed.Task;
        }
        await Task.WhenAny(changed, Task.Delay(timeout, cancellation)).ConfigureAwait(false);
    }

    /// <summary>The job as the API shows it.</summary>
    public JsonObject Snapshot(Job job)
    {
        lock (_lock)
        {
            int? position = null, ahead = null;
            if (job.Status == JobStatus.Queued)
            {
                int i = 0;
                foreach (var w in _waiting)
                {
                    i++;
                    if (w == job) break;
                }
                position = i;
                ahead = i - 1 + (_running is null ? 0 : 1);
            }
            var plan = job.Plan;
            int columns = plan.Columns.Count;
            double fraction = job.Status == JobStatus.Succeeded ? 1
                : job.Status == JobStatus.Running ? (job.Column + (job.Steps > 0 ? (double)job.Step / job.Steps : 0)) / columns : 0;
            string self = $"/api/jobs/{job.Id}";
            var o = new JsonObject
            {
                ["id"] = job.Id,
                ["status"] = job.Status.ToString().ToLowerInvariant(),
                ["position"] = position,
                ["ahead"] = ahead,
                ["cancelling"] = job.CancelRequested && !job.IsFinished,
                ["model"] = plan.Model.Id,
                ["request"] = plan.Request.DeepClone(),
                ["createdAt"] = job.Created.ToString("O"),
                ["startedAt"] = job.Started?.ToString("O"),
                ["finishedAt"] = job.Finished?.ToString("O"),
                ["progress"] = new JsonObject
                {
                    ["column"] = job.Status == JobStatus.Running ? job.Column : null,
                    ["columns"] = columns,
                    ["method"] = job.Status == JobStatus.Running ? plan.Columns[Math.Min(job.Column, columns - 1)].Token : null,
                    ["step"] = job.Step,
                    ["steps"] = job.Steps,
                    ["fraction"] = Math.Round(fraction, 4),
                },
                ["preview"] = job.Preview is null || job.IsFinished ? null : $"{self}/preview?v={job.PreviewVersion}",
                ["error"] = job.Error,
                ["links"] = new JsonObject { ["self"] = self, ["events"] = $"{self}/events", ["files"] = $"{self}/files/" },
            };
            if (job.Result is { } r)
                o["result"] = new JsonObject
                {
                    ["seeds"] = new JsonArray(r.Seeds.Select(s => (JsonNode)s!).ToArray()),
                    ["columns"] = new JsonArray(r.Columns.Select(c => (JsonNode)c!).ToArray()),
                    ["images"] = new JsonArray(r.Images.Select(row => (JsonNode)new JsonArray(row.Select(f => (JsonNode)f!).ToArray())).ToArray()),
                    ["grid"] = r.Grid,
                    ["run"] = r.Run,
                    ["zip"] = r.Zip,
                    ["width"] = plan.Width,
                    ["height"] = plan.Height,
                };
            return o;
        }
    }

    /// <summary>The latest preview PNG of a running job, or null.</summary>
    public byte[]? Preview(Job job)
    {
        lock (_lock) return job.IsFinished ? null : job.Preview;
    }

    /// <summary>The path of a file of a finished job, or null when the job has no such file.</summary>
    public string? FilePath(Job job, string name)
    {
        lock (_lock)
            return job.Status == JobStatus.Succeeded && job.Result is { } r && job.Folder is { } f && r.Files.Contains(name, StringComparer.Ordinal)
                ? Path.Combine(f, name) : null;
    }

    private void Changed()
    {
        _version++;
        var previous = _changed;
        _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        previous.TrySetResult();
    }

    private void Work()
    {
        while (true)
        {
            try { _signal.Wait(_stop.Token); }
            catch (OperationCanceledException) { return; }
            Job? job;
            lock (_lock)
            {
                if (_waiting.First is null) continue; // a cancelled job left the queue
                job = _waiting.First.Value;
                _waiting.RemoveFirst();
                _running = job;
                job.Status = JobStatus.Running;
                job.Started = DateTimeOffset.UtcNow;
                Changed();
            }
            RunOne(job);
            lock (_lock)
            {
                _running = null;
                Forget();
                Changed();
            }
        }
    }

    private void RunOne(Job job)
    {
        string staging = Path.Combine(Staging, job.Id);
        var reporter = new Reporter(this, job);
        _log($"job {job.Id}: {job.Plan.Model.Id}, {job.Plan.Count} seed(s) × {string.Join(", ", job.Plan.Columns.Select(c => c.Token))}, {job.Plan.Steps} steps");
        try
        {
            Directory.CreateDirectory(staging);
            var result = _runner.Run(job, staging, reporter, job.Cancellation.Token);
            lock (_lock)
            {
                if (job.CancelRequested) throw new OperationCanceledException();
                job.Finalizing = true;
            }
            string final = Path.Combine(Output, job.Id);
            Directory.Move(staging, final);
            lock (_lock)
            {
                job.Result = result;
                job.Folder = final;
                job.Status = JobStatus.Succeeded;
            }
            _log($"job {job.Id}: done → {final}");
        }
        catch (Exception e)
        {
            Delete(staging);
            bool cancelled = e is OperationCanceledException && job.Cancellation.IsCancellationRequested;
            lock (_lock)
            {
                job.Status = cancelled ? JobStatus.Cancelled : JobStatus.Failed;
                job.Error = cancelled ? null
                    : e is PagSharpException or ServeError ? e.Message
                    : $"internal error ({e.GetType().Name}): {e.Message}";
            }
            _log(cancelled ? $"job {job.Id}: cancelled" : $"job {job.Id}: failed: {(e is PagSharpException ? e.Message : e.ToString())}");
        }
        finally
        {
            lock (_lock)
            {
                job.Finished = DateTimeOffset.UtcNow;
                job.Preview = null;
                Changed();
            }
        }
    }

    /// <summary>Forgets the oldest finished jobs beyond <see cref="ServeLimits.KeepJobs"/> (their folders stay).</summary>
    private void Forget()
    {
        var finished = _order.Where(j => j.IsFinished).ToList();
        foreach (var j in finished.Take(Math.Max(0, finished.Count - _limits.KeepJobs)))
        {
            _order.Remove(j);
            _jobs.Remove(j.Id);
            j.Cancellation.Dispose();
        }
    }

    private static void Delete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }

    /// <summary>Stops the worker: waiting jobs are cancelled, the running one stops after its step (its staging folder is deleted).</summary>
    public void Stop()
    {
        lock (_lock)
        {
            if (_stop.IsCancellationRequested) return;
            foreach (var j in _waiting)
            {
                j.Status = JobStatus.Cancelled;
                j.Finished = DateTimeOffset.UtcNow;
            }
            _waiting.Clear();
            if (_running is { } r)
            {
                r.CancelRequested = true;
                r.Cancellation.Cancel();
            }
            _stop.Cancel();
            Changed();
        }
        _worker?.Join(TimeSpan.FromSeconds(60));
        try { if (Directory.Exists(Staging) && !Directory.EnumerateFileSystemEntries(Staging).Any()) Directory.Delete(Staging); }
        catch (IOException) { }
    }

    public void Dispose()
    {
        Stop();
        _signal.Dispose();
    }

    private sealed class Reporter(JobQueue queue, Job job) : IJobReporter
    {
        public void Step(int column, int step, int steps)
        {
            lock (queue._lock)
            {
                job.Column = column;
                job.Step = step;
                job.Steps = steps;
                queue.Changed();
            }
        }

        public void Preview(byte[] png)
        {
            lock (queue._lock)
            {
                job.Preview = png;
                job.PreviewVersion++;
                queue.Changed();
            }
        }
    }
}
