#!/usr/bin/env bash
# Start-up cost of the pag CLI (issue #22): what a user pays before the first sampling step, measured from outside
# the process and split by pag's own milestones (PAG_STARTUP_TRACE=1, src/PagSharp.Cli/Hosting/StartupTrace.cs).
#
#   docs/startup.sh [RUNS]                     # default 7 runs of each command
#   PAG=path/to/pag docs/startup.sh            # another build (default: the Release build of src/PagSharp.Cli)
#   DOTNET_TieredPGO=0 docs/startup.sh         # runtime knobs are passed on through the environment
#   RAW=1 docs/startup.sh 1                    # one line per run ("sample 44.1 420.3 …") instead of the table
#
# Commands: `pag sample --count 1 --steps 1` (built-in MNIST model) and `pag txt2img` on the tiny SD fixture
# (tests/fixtures/sd_edit_tiny/img2img, a diffusers folder; the two prompt embeddings of its cases file: 2 images, CFG + PAG, one
# step, decoded to PNG). Phases (milliseconds): launch→main (runtime start: host, runtime, assembly loading up to
# Main), main→torch (libtorch loaded, threads and allocator set), torch→model (command parsing and model loading),
# model→step1 (the first step, JIT and kernel warm-up included), step1→exit (writing the outputs), total (launch to
# process end). Prints, per command and phase, the median and the range (min–max) over the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-7}
PAG=${PAG:-src/PagSharp.Cli/bin/Release/net10.0/pag}
SD=tests/fixtures/sd_edit_tiny
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SAMPLE=(sample --count 1 --steps 1 --pag-scale 2)
TXT2IMG=(txt2img --model "$SD/img2img" --prompt-embeds "$SD/cases.safetensors:run_in.prompt_embeds"
    --negative-prompt-embeds "$SD/cases.safetensors:run_in.negative_prompt_embeds" --count 2 --steps 1
    --pag-scale 3 --height 64 --width 64)

run_one() { # $1 = name, then the pag arguments; prints one line of phase times in ms
    local name=$1; shift
    local log="$OUT/$name.log" t0 t1
    rm -rf "$OUT/$name"
    t0=$EPOCHREALTIME
    PAG_STARTUP_TRACE=1 "$PAG" "$@" --output "$OUT/$name" >/dev/null 2>"$log"
    t1=$EPOCHREALTIME
    awk -v t0="$t0" -v t1="$t1" '
        $1 == "pag-startup" { t[$2] = $3 }
        END {
            s = t0 * 1000; e = t1 * 1000
            if (!("main" in t) || !("first-step" in t)) { print "missing milestones" > "/dev/stderr"; exit 1 }
            printf "%.1f %.1f %.1f %.1f %.1f %.1f\n", t["main"] - s, t["torch"] - t["main"], t["model-loaded"] - t["torch"],
                t["first-step"] - t["model-loaded"], t["exit"] - t["first-step"], e - s
        }' "$log"
}

summary() { # stdin: rows of phase times; prints median [min–max] per column
    awk '{ for (i = 1; i <= NF; i++) v[i, NR] = $i; n = NR; k = NF }
        END {
            for (i = 1; i <= k; i++) {
                for (j = 1; j <= n; j++) a[j] = v[i, j]
                for (x = 1; x <= n; x++) for (y = x + 1; y <= n; y++) if (a[y] < a[x]) { z = a[x]; a[x] = a[y]; a[y] = z }
                med = n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
                printf "| %.0f [%.0f–%.0f] ", med, a[1], a[n]
            }
            print "|"
        }'
}

if [ -n "${RAW:-}" ]; then
    for ((i = 0; i < RUNS; i++)); do
        printf 'sample '; run_one sample "${SAMPLE[@]}"
        printf 'txt2img '; run_one txt2img "${TXT2IMG[@]}"
    done
    exit 0
fi
echo "pag: $PAG; runs: $RUNS; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load $(cut -d' ' -f1-3 /proc/loadavg)"
env | grep -E '^(DOTNET_|COMPlus_)' | grep -v -E '^DOTNET_(CLI_|NOLOGO|GENERATE_|SKIP_|ROOT)' | sort | sed 's/^/env: /' || true
echo "| command | launch→main | main→torch | torch→model | model→step1 | step1→exit | total |"
echo "|---|---:|---:|---:|---:|---:|---:|"
for cmd in sample txt2img; do
    : > "$OUT/$cmd.rows"
    for ((i = 0; i < RUNS; i++)); do
        if [ "$cmd" = sample ]; then run_one sample "${SAMPLE[@]}"; else run_one txt2img "${TXT2IMG[@]}"; fi >> "$OUT/$cmd.rows"
    done
    printf '| %s ' "$cmd"; summary < "$OUT/$cmd.rows"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
