#!/usr/bin/env bash
# Inverse-problem evaluation on the built-in model (docs/results.md, "Inverse problems").
# N held-out digits (every (1000/N)-th of the 1,000-digit test split, i.e. N/10 per class), DPS on the DDPM chain
# with 50 steps, σ_y = 0.05, ζ = 1, with and without PAG (scale S at LAYERS).
# Usage: bash docs/run-restore-eval.sh [OUT] [N=200] [S=1] [LAYERS=output_blocks.1.1]
#   (built-in model v2: its recommended scale and layer; the v1 table used N=200, S=2, LAYERS=middle)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/restore-eval}
N=${2:-200}
S=${3:-1}
LAYERS=${4:-output_blocks.1.1}
PAG="dotnet src/PagSharp.Cli/bin/Release/net10.0/pag.dll"
dotnet build src/PagSharp.Cli -c Release -v q >/dev/null
DIGITS=$(seq -s, 0 $((1000 / N)) 999)
for task in "box:12" "sr:2" "blur:9:2.0"; do
  name=${task//:/_}
  for method in dps dps+pag; do
    extra=(); [ "$method" = "dps+pag" ] && extra=(--pag-scale "$S" --pag-layers "$LAYERS")
    dir="$OUT/$name/$method"
    start=$(date +%s)
    $PAG restore --threads 1 --index "$DIGITS" --degradation "$task" --sigma-y 0.05 --zeta 1 --steps 50 --seed 0 "${extra[@]}" --output "$dir" --save-tensor "$dir/restored.npy" | tail -1
    $PAG eval --threads 1 --generated "$dir/restored.npy" --reference mnist-test --json "$dir/eval.json" >/dev/null
    echo "$task $method $(( $(date +%s) - start )) s"
  done
done
