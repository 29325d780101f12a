#!/usr/bin/env bash
# One resumable piece (<= 10 min) of the real training run, executed ON the
# GPU machine (H100, no mediapipe there: the dataset is built here and carried).
#
# Plan (issue 6, part 3), from this machine:
#   1. Build the dataset here (mediapipe + cv2), JPEG frames so it can travel:
#        .venv/bin/python -m kf_desktop.dataset_build --out out/kf256 --size 256 --format jpeg --quality 90
#      ~7,000 frames; if out/kf256 exceeds the 64 MiB carry limit, add --stride 2 or
#      carry the clips in two calls (ignored files stay on the warm machine).
#   2. Piece k (k = 1, 2, ...), each a `run` call with carry ["out/kf256", "out/gpu_run"]
#      (out/gpu_run only when resuming on a fresh machine; it holds model/, not state/):
#        bash scripts/train_gpu.sh diffusion  8000   # pieces 1..N: diffusion forcing
#        bash scripts/train_gpu.sh self_forcing 12000 # later pieces: own rollouts as context
#      Every piece stops after MAX_MIN minutes with a checkpoint, resumes from
#      out/gpu_run/state while the machine stays warm (optimizer state kept),
#      and otherwise from the carried weights (--init, fresh optimizer).
#      Each piece copies a usable model (bfloat16, <= 16 MiB shards, ~42 MB for
#      the 21 M default model) + log to $OUT/model: every piece leaves a
#      usable checkpoint here.
#   3. Ship: copy $OUT/model to resources/models/default (config.json +
#      safetensors + sha256), run `kf-desktop eval --data out/kf256`.
set -euo pipefail
STAGE=${1:-diffusion}
STEPS=${2:-8000}
MAX_MIN=${MAX_MIN:-8}
DATA=${DATA:-out/kf256}
RUN=${RUN:-out/gpu_run}
PY=${PY:-python}
OUT=${OUT:-out/gpu_export}

ARGS=(--data "$DATA" --out "$RUN" --preset default --stage "$STAGE" --steps "$STEPS"
      --batch ${BATCH:-16} --lr ${LR:-2e-4} --warmup 500 --ema 0.999 --device cuda
      --ckpt-every 500 --eval-every 1000 --log-every 50 --max-minutes "$MAX_MIN"
      --save-dtype bfloat16 --max-shard-mib 16)
if [ -f "$RUN/state/state.json" ]; then
  ARGS+=(--resume)                      # same warm machine: full state
elif [ -f "$RUN/model/config.json" ]; then
  cp -r "$RUN/model" "$RUN/init_model"  # fresh machine: carried weights only
  ARGS+=(--init "$RUN/init_model")
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
$PY -m engine.training "${ARGS[@]}"
mkdir -p "$OUT/model"
cp "$RUN"/model/* "$OUT/model/"
cp "$RUN/train.log" "$RUN/metrics.jsonl" "$OUT/" 2>/dev/null || true
du -sh "$OUT"/model
