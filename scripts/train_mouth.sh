#!/usr/bin/env bash
# Train the mouth model (preset "mouth", docs/MOUTH_MODEL.md) on this machine's CPU,
# in the background of a working session: niced, one torch thread, resumable.
#
#   bash scripts/train_mouth.sh [MINUTES]        # default 150 minutes, then a checkpoint
#
# - builds the 256 px dataset once (mediapipe, ~2 min for 21 k frames) if it is
#   missing: the registry clips, plus every video in $CLIPS (default
#   ../shared/data/clips) when that folder exists, with whole people held out;
# - resumes $RUN (optimizer, EMA, step / sample / CPU-hour counts) when it holds
#   a complete state, otherwise starts from the shipped weights when they are a
#   mouth model (--init), otherwise from scratch;
# - checkpoints every 10 minutes into $RUN/model; the best checkpoint by the
#   held-out streaming mouth PSNR is kept in $RUN/best (that is the one to ship:
#   README, "Training the model").
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-150}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-out/kf60}
RUN=${RUN:-out/mouth_run}
CLIPS=${CLIPS:-../shared/data/clips}
if [ ! -f "$DATA/manifest.json" ]; then
  EXTRA=()
  [ -d "$CLIPS" ] && EXTRA=(--clips "$CLIPS")
  OMP_NUM_THREADS=1 nice -n 10 "$PY" -m kf_desktop.dataset_build --out "$DATA" --size 256 --format jpeg \
    --max-frames 1500 "${EXTRA[@]}"
fi
ARGS=(--data "$DATA" --out "$RUN" --preset mouth --steps ${STEPS:-10000000} --batch 8 --lr ${LR:-3e-4}
      --warmup 100 --ema ${EMA:-0.999} --ckpt-every 100000000 --ckpt-minutes 10 --eval-batches 1
      --log-every 20 --save-dtype bfloat16 --max-minutes "$MIN" --set 'sample={"p_open_pair":0.5}')
state=""
for d in state state.old state.tmp; do [ -f "$RUN/$d/state.json" ] && state=1; done
if [ -n "$state" ]; then
  ARGS+=(--resume)
elif grep -q '"stem": "conv"' resources/models/default/config.json 2>/dev/null; then
  ARGS+=(--init resources/models/default --warmup 20)
fi
OMP_NUM_THREADS=1 exec nice -n 10 "$PY" -m engine.training "${ARGS[@]}"
