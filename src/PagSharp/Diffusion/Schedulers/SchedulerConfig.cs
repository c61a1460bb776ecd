using PagSharp.IO;
using System.Text.Json;

namespace PagSharp.Diffusion.Schedulers;

/// <summary>
/// The keys of a diffusers <c>scheduler_config.json</c> that the ported schedulers read. Keys that are absent (or
/// belong to another scheduler class) are null here and take the chosen scheduler's own diffusers default, exactly as
/// <c>SchedulerClass.from_config(config)</c> does: e.g. <c>timestep_spacing</c> defaults to "leading" for DDIM but
/// "linspace" for Euler and DPM-Solver; <c>set_alpha_to_one</c> and <c>clip_sample</c> default to true for DDIM.
/// </summary>
public sealed record SchedulerConfig
{
    /// <summary>The scheduler class the file was written for (<c>_class_name</c>), informational.</summary>
    public string? ClassName { get; init; }
    public int NumTrainTimesteps { get; init; } = 1000;
    public double BetaStart { get; init; } = 0.0001;
    public double BetaEnd { get; init; } = 0.02;
    /// <summary><c>linear</c>, <c>scaled_linear</c> or <c>squaredcos_cap_v2</c>.</summary>
    public string BetaSchedule { get; init; } = "linear";
    public float[]? TrainedBetas { get; init; }
    /// <summary><c>epsilon</c>, <c>v_prediction</c> or <c>sample</c>.</summary>
    public string PredictionType { get; init; } = "epsilon";
    /// <summary><c>leading</c>, <c>trailing</c> or <c>linspace</c>; null = the scheduler's default.</summary>
    public string? TimestepSpacing { get; init; }
    public int StepsOffset { get; init; }
    /// <summary>DDIM: use ᾱ = 1 before the first step (else ᾱ₀); null = true (DDIM's default).</summary>
    public bool? SetAlphaToOne { get; init; }
    /// <summary>DDIM: clip x̂₀ to ±<see cref="ClipSampleRange"/>; null = true (DDIM's default).</summary>
    public bool? ClipSample { get; init; }
    public double ClipSampleRange { get; init; } = 1.0;
    /// <summary>DPM-Solver: <c>midpoint</c> (default) or <c>heun</c>.</summary>
    public string SolverType { get; init; } = "midpoint";
    /// <summary>DPM-Solver: lower-order steps at the end when there are fewer than 15 steps (default true).</summary>
    public bool LowerOrderFinal { get; init; } = true;
    /// <summary>DPM-Solver: a first-order (Euler) final step (default false).</summary>
    public bool EulerAtFinal { get; init; }
    /// <summary>Euler / DPM-Solver: the σ after the last step, <c>zero</c> (default) or <c>sigma_min</c>.</summary>
    public string FinalSigmasType { get; init; } = "zero";

    /// <summary>Karras et al. (2022) noise levels: σ_i = (σ_max^{1/ρ} + i/(n−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ, ρ = 7 (Euler, DPM++ 2M, UniPC).</summary>
    public bool UseKarrasSigmas { get; init; }
    /// <summary>Overrides of the Karras range (diffusers' <c>sigma_min</c>/<c>sigma_max</c>); null = the schedule's own.</summary>
    public double? SigmaMin { get; init; }
    public double? SigmaMax { get; init; }
    /// <summary>DDPM: <c>variance_type</c> (null = fixed_small).</summary>
    public string? VarianceType { get; init; }
    /// <summary>UniPC: solver order (default 2).</summary>
    public int SolverOrder { get; init; } = 2;
    /// <summary>UniPC: <c>bh2</c> (default) or <c>bh1</c>; DPM-Solver: <c>midpoint</c> or <c>heun</c> (<see cref="SolverType"/>).</summary>
    public string UniPcSolverType { get; init; } = "bh2";
    /// <summary>UniPC: predict x₀ (data prediction, default) or ε.</summary>
    public bool PredictX0 { get; init; } = true;
    /// <summary>UniPC: steps (0-based) after which the corrector is not applied.</summary>
    public int[] DisableCorrector { get; init; } = [];

    /// <summary>Non-default values of settings PagSharp does not implement (key → JSON value); see <see cref="Refuse"/>.</summary>
    public IReadOnlyDictionary<string, string> Unsupported { get; init; } = new Dictionary<string, string>();
    /// <summary>Where the settings came from (for messages).</summary>
    public string Source { get; init; } = "scheduler config";

    /// <summary>Throws when a setting among <paramref name="keys"/> (those the scheduler would use) has an unsupported value.</summary>
    public void Refuse(string scheduler, params string[] keys)
    {
        var bad = keys.Where(Unsupported.ContainsKey).Select(k => $"'{k}' = {Unsupported[k]}").ToList();
        if (bad.Count > 0)
            throw new PagSharpException($"{Source}: {string.Join(", ", bad)} is not implemented by PagSharp's {scheduler} scheduler; remove the setting or choose another scheduler");
    }

    /// <summary>diffusers' own defaults (every key absent).</summary>
    public static SchedulerConfig Default { get; } = new();

    public static SchedulerConfig Load(string path)
    {
        if (!File.Exists(path)) throw new PagSharpException($"{path} does not exist: a diffusers folder keeps its scheduler settings in scheduler/scheduler_config.json");
        return FromJson(File.ReadAllText(path), path);
    }

    public static SchedulerConfig FromJson(string json, string source)
    {
        var c = JsonConfig.Parse(json, source);
        float[]? trained = null;
        if (c.Get("trained_betas") is { } tb)
        {
            if (tb.ValueKind != JsonValueKind.Array) throw c.Error("trained_betas", "a list of numbers or null", tb);
            trained = tb.EnumerateArray().Select(e => e.ValueKind == JsonValueKind.Number ? (float)e.GetDouble() : throw c.Error("trained_betas", "a list of numbers")).ToArray();
        }
        // Settings PagSharp does not implement: kept here and refused by the schedulers that would use them, so a
        // folder whose own scheduler uses one (e.g. DPM-Solver with Karras sigmas) still runs with another scheduler.
        var unsupported = new Dictionary<string, string>(StringComparer.Ordinal);
        void Flag(string key, object def)
        {
            if (c.Get(key) is not { } v) return;
            bool isDefault = def switch
            {
                bool b => v.ValueKind is JsonValueKind.True or JsonValueKind.False && v.GetBoolean() == b,
                string str => v.ValueKind == JsonValueKind.String && v.GetString() == str,
                _ => false,
            };
            if (!isDefault) unsupported[key] = v.GetRawText();
        }
        foreach (var key in new[] { "thresholding", "rescale_betas_zero_snr", "use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas", "use_dynamic_shifting" })
            Flag(key, false);
        Flag("interpolation_type", "linear");
        Flag("timestep_type", "discrete");
        if (c.Has("lambda_min_clipped") && !double.IsNegativeInfinity(c.Double("lambda_min_clipped", double.NegativeInfinity)))
            unsupported["lambda_min_clipped"] = c.Get("lambda_min_clipped")!.Value.GetRawText();
        var cfg = new SchedulerConfig
        {
            ClassName = c.StringOrNull("_class_name"),
            NumTrainTimesteps = c.Int("num_train_timesteps", 1000),
            BetaStart = c.Double("beta_start", 0.0001),
            BetaEnd = c.Double("beta_end", 0.02),
            BetaSchedule = c.String("beta_schedule", "linear"),
            TrainedBetas = trained,
            PredictionType = c.String("prediction_type", "epsilon"),
            TimestepSpacing = c.StringOrNull("timestep_spacing"),
            StepsOffset = c.Int("steps_offset", 0),
            SetAlphaToOne = c.Has("set_alpha_to_one") ? c.Bool("set_alpha_to_one", true) : null,
            ClipSample = c.Has("clip_sample") ? c.Bool("clip_sample", true) : null,
            ClipSampleRange = c.Double("clip_sample_range", 1.0),
            SolverType = c.StringOrNull("_class_name") == "UniPCMultistepScheduler" ? "midpoint" : c.String("solver_type", "midpoint"),
            LowerOrderFinal = c.Bool("lower_order_final", true),
            EulerAtFinal = c.Bool("euler_at_final", false),
            FinalSigmasType = c.String("final_sigmas_type", "zero"),
            UseKarrasSigmas = c.Bool("use_karras_sigmas", false),
            SigmaMin = c.Has("sigma_min") && c.Get("sigma_min") is { ValueKind: JsonValueKind.Number } smin ? smin.GetDouble() : null,
            SigmaMax = c.Has("sigma_max") && c.Get("sigma_max") is { ValueKind: JsonValueKind.Number } smax ? smax.GetDouble() : null,
            SolverOrder = c.Int("solver_order", 2),
            VarianceType = c.StringOrNull("variance_type"),
            UniPcSolverType = c.StringOrNull("_class_name") == "UniPCMultistepScheduler" ? c.String("solver_type", "bh2") : "bh2",
            PredictX0 = c.Bool("predict_x0", true),
            DisableCorrector = c.Get("disable_corrector") is { ValueKind: JsonValueKind.Array } dc ? dc.EnumerateArray().Select(e => e.GetInt32()).ToArray() : [],
            Unsupported = unsupported,
            Source = source,
        };
        cfg.Validate(source);
        return cfg;
    }

    public void Validate(string source)
    {
        void Require(bool ok, string msg) { if (!ok) throw new PagSharpException($"{source}: {msg}"); }
        Require(NumTrainTimesteps >= 1, $"num_train_timesteps must be ≥ 1 (got {NumTrainTimesteps})");
        Require(TrainedBetas is not null || BetaSchedule is "linear" or "scaled_linear" or "squaredcos_cap_v2",
            $"beta_schedule '{BetaSchedule}' is not supported; valid: linear, scaled_linear, squaredcos_cap_v2 (or trained_betas)");
        Require(TrainedBetas is null || TrainedBetas.Length == NumTrainTimesteps,
            $"trained_betas has {TrainedBetas?.Length} values but num_train_timesteps is {NumTrainTimesteps}");
        Require(PredictionType is "epsilon" or "v_prediction" or "sample",
            $"prediction_type '{PredictionType}' is not supported; valid: epsilon, v_prediction, sample");
        Require(TimestepSpacing is null or "leading" or "trailing" or "linspace",
            $"timestep_spacing '{TimestepSpacing}' is not supported; valid: leading, trailing, linspace");
        Require(SolverType is "midpoint" or "heun", $"solver_type '{SolverType}' is not supported; valid: midpoint, heun");
        Require(UniPcSolverType is "bh1" or "bh2", $"solver_type '{UniPcSolverType}' is not supported by UniPC; valid: bh1, bh2");
        Require(SolverOrder is >= 1 and <= 3, $"solver_order must be 1, 2 or 3 (got {SolverOrder})");
        Require(FinalSigmasType is "zero" or "sigma_min", $"final_sigmas_type '{FinalSigmasType}' is not supported; valid: zero, sigma_min");
        Require(StepsOffset >= 0, $"steps_offset must be ≥ 0 (got {StepsOffset})");
    }
}
