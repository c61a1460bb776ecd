#!/usr/bin/env bash
# Resumes the built-in model v2 training (models/mnist/README.md, "Built-in model v2"). The run lives in
# runs/mnist-v2 (not committed); when it is missing — a fresh clone, a new machine — it starts from the state
# committed in models/mnist/training-v2/state. Run it in the background:
#   nohup models/mnist/training-v2/resume.sh > runs/mnist-v2.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/../../.."
RUN=${RUN:-runs/mnist-v2}
if [ ! -f "$RUN/checkpoint.safetensors" ]; then
  mkdir -p "$RUN"
  cp -r models/mnist/training-v2/state/. "$RUN/"
fi
# Idle OpenMP threads sleep, so the training shares the two cores with other work (pag sets this itself too).
export OMP_WAIT_POLICY=passive
# The trainer runs from its own copy of the build, so that rebuilding the tree while it trains cannot break it.
dotnet build src/PagSharp.Cli -c Release -v q -nologo
rm -rf runs/train-bin && cp -r src/PagSharp.Cli/bin/Release/net10.0 runs/train-bin
exec dotnet runs/train-bin/pag.dll train --output "$RUN" --resume \
  --steps 16000 --batch-size 64 --lr 2e-4 --label-drop 0.25 --ema-rate 0.9995 --precision bfloat16 \
  --checkpoint-every 250 --sample-every 1000 --snapshot-at 320,1600,4800
