#!/usr/bin/env bash
# Continue training the shipped laptop model on this machine's CPU (issue 12).
#
#   bash scripts/train_laptop.sh [MINUTES]        # default 100 minutes, then a checkpoint
#
# - builds the 128 px dataset once (mediapipe; ~1 min) if it is missing;
# - resumes out/laptop_run/state (optimizer kept) when it exists, otherwise
#   starts from the committed weights in resources/models/default (--init:
#   fresh optimizer, the step/sample counts continue in the training record);
# - runs niced in the foreground with progress lines; checkpoints every ~10 min
#   into out/laptop_run/model (EMA weights, bf16, sha256 in config.json).
# Ship a better checkpoint: see the README, "Training the model" (eval --record, then copy).
set -euo pipefail
cd "$(dirname "$0")/.."
MIN=${1:-100}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-out/kf128}
RUN=${RUN:-out/laptop_run}
# A dataset cut with another head-crop geometry (before issue 13 widened it)
# is moved aside and rebuilt: the model must see the framing the app uses.
if [ -f "$DATA/manifest.json" ] && ! "$PY" -m kf_desktop.dataset_build --check-crop "$DATA"; then
  mv "$DATA" "$DATA.old-crop.$(date +%s)"
fi
if [ ! -f "$DATA/manifest.json" ]; then
  "$PY" -m kf_desktop.dataset_build --out "$DATA" --size 128
fi
# The recipe of the shipped run (see the README's "Training" section).
ARGS=(--data "$DATA" --out "$RUN" --preset laptop --steps ${STEPS:-1000000} --batch 8 --lr ${LR:-4e-4}
      --warmup 100 --ema 0.999 --ckpt-every 300 --eval-every 300 --eval-batches 2 --log-every 20
      --save-dtype bfloat16 --max-minutes "$MIN" --set ctx_sigma_max=0.7 --set region_extra=3
      --set 'target="masked_guide"')
# masked_guide: the real frame is the target only inside soft mouth/eye regions, the
# frame's guide elsewhere (with real frames everywhere the first run learned to paint
# its four training clips' backgrounds into unseen portraits).
if [ -f "$RUN/state/state.json" ]; then
  ARGS+=(--resume)
elif [ -f resources/models/default/config.json ]; then
  ARGS+=(--init resources/models/default --warmup 20)
fi
exec nice -n 10 "$PY" -m engine.training "${ARGS[@]}"
