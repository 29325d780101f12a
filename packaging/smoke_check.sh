#!/usr/bin/env bash
# Smoke check of a built app folder: it starts, prints its version, renders a
# short clip headless, and opens its window off-screen.
#
#   packaging/smoke_check.sh dist/kf-desktop
set -euo pipefail

APP=${1:-dist/kf-desktop}
EXE="$APP/kf-desktop"
GUI="$APP/kf-desktop-gui"
[[ -x "$EXE" ]] || { echo "smoke: $EXE not found or not executable" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

# 1. --version (no torch import: fast)
t0=$(now_ms)
ver=$("$EXE" --version) || fail "--version exited $?"
[[ "$ver" == kf-desktop\ * ]] || fail "unexpected --version output: $ver"
echo "smoke: $ver ($(( $(now_ms) - t0 )) ms)"

# 2. a short headless render: torch, mediapipe, the guide, paste-back and the
#    encoder inside the bundle. Drives with the fetched clip when there is one.
DRIVER=${KF_SMOKE_DRIVER:-$HOME/.cache/kf-desktop/data/cap13_edit2.mp4}
args=(render --seconds 1 --size 320x180 --out "$TMP/smoke.mp4")
[[ -f "$DRIVER" ]] && args+=(--driver "$DRIVER")
t0=$(now_ms)
"$EXE" "${args[@]}" || fail "render exited $?"
[[ -s "$TMP/smoke.mp4" ]] || fail "render wrote no video"
echo "smoke: render ok: $(wc -c < "$TMP/smoke.mp4") bytes ($(( $(now_ms) - t0 )) ms)"

# 3. the window, off-screen (no display needed); its settings and logs go to
#    a throw-away home.
HOME="$TMP/home" XDG_CONFIG_HOME="$TMP/home/.config" XDG_DATA_HOME="$TMP/home/.local/share" \
  QT_QPA_PLATFORM=offscreen "$GUI" --check || fail "gui --check exited $?"
echo "smoke: window ok (gui --check)"
echo "smoke: PASS"
