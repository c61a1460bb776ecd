using static TorchSharp.torch;

namespace PagSharp.Guidance;

/// <summary>
/// The bookkeeping of a PAG cache interval N (<see cref="GuidanceSettings.PagCacheInterval"/>, an approximation for
/// speed): within one sampling trajectory the perturbed branch runs at the first of every N PAG steps, and the steps
/// between reuse the last computed guidance direction Δ = ε(c) − ε̂(c) (the cache-and-reuse idea of DeepCache's
/// <c>cache_interval</c>, applied to PAG's term). A trajectory starts when the timestep does not decrease from one
/// call to the next, or the sample shape changes; a repeated timestep repeats the previous decision.
/// </summary>
public sealed class PagDirectionCache : IDisposable
{
    private Tensor? _direction;
    private int _pagSteps;
    private double _lastT = double.NegativeInfinity;
    private bool _lastComputed;

    /// <param name="interval">N ≥ 1; 1 computes the perturbed branch at every PAG step (exact PAG).</param>
    public PagDirectionCache(int interval)
    {
        Validate(interval);
        Interval = interval;
    }

    /// <summary>Throws a <see cref="PagSharpException"/> unless <paramref name="interval"/> ≥ 1.</summary>
    public static void Validate(int interval)
    {
        if (interval < 1)
            throw new PagSharpException($"PAG cache interval must be an integer ≥ 1 (got {interval}); 1 computes the perturbed branch at every step");
    }

    public int Interval { get; }

    /// <summary>The last stored direction (shape of the samples); valid after a step that computed it.</summary>
    public Tensor Direction => _direction ?? throw new InvalidOperationException("no PAG direction has been computed yet");

    /// <summary>
    /// Whether the PAG step at timestep <paramref name="t"/> on samples of <paramref name="shape"/> runs the perturbed
    /// branch (then <see cref="Store"/> its direction) or reuses <see cref="Direction"/>. Always true for N = 1.
    /// </summary>
    public bool ComputesAt(double t, long[] shape)
    {
        if (Interval == 1) return true;
        bool sameShape = _direction is not null && _direction.shape.SequenceEqual(shape);
        if (t == _lastT && sameShape) return _lastComputed;
        if (t > _lastT || !sameShape)
        {
            _pagSteps = 0;
            _direction?.Dispose();
            _direction = null;
        }
        _lastT = t;
        _lastComputed = _pagSteps++ % Interval == 0;
        return _lastComputed;
    }

    /// <summary>Keeps <paramref name="direction"/> = ε(c) − ε̂(c) for the following steps (a detached copy is kept when N &gt; 1).</summary>
    public void Store(Tensor direction)
    {
        if (Interval == 1) return;
        _direction?.Dispose();
        _direction = direction.detach().clone().DetachFromDisposeScope();
    }

    public void Dispose()
    {
        _direction?.Dispose();
        _direction = null;
    }
}
