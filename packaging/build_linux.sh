#!/usr/bin/env bash
# Build the one-folder Linux app with PyInstaller and smoke-check it.
#
#   packaging/build_linux.sh            # -> dist/kf-desktop/
#   packaging/build_linux.sh --tar      # also dist/kf-desktop-<version>-linux-<arch>.tar.gz
#
# Uses the project's virtual environment (.venv, or $PY); installs PyInstaller
# into it if missing. Set KF_BUNDLE_TRITON=1 for a GPU build with triton.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
[[ -x "$PY" ]] || { echo "no Python at $PY: run ./kf.sh setup first, or set PY" >&2; exit 1; }
if ! "$PY" -c "import PyInstaller" 2>/dev/null; then
  echo "installing PyInstaller into $("$PY" -c 'import sys; print(sys.prefix)')"
  "$PY" -m pip install --quiet "pyinstaller>=6.10,<7"
fi
[[ -f resources/icons/kf-desktop-256.png ]] || "$PY" packaging/make_icons.py

start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath dist --workpath build/pyinstaller packaging/kf-desktop.spec
APP=dist/kf-desktop
# Desktop integration files travel with the app (packaging/install_linux.sh uses them).
cp packaging/kf-desktop.desktop resources/icons/kf-desktop.svg resources/icons/kf-desktop-256.png "$APP/"
cp packaging/install_linux.sh "$APP/"
echo "built $APP in $(( $(date +%s) - start )) s, $(du -sh "$APP" | cut -f1)"

packaging/smoke_check.sh "$APP"

if [[ "${1:-}" == "--tar" ]]; then
  ver=$("$APP/kf-desktop" --version | awk '{print $2}')
  tarball="dist/kf-desktop-$ver-linux-$(uname -m).tar.gz"
  tar -C dist -czf "$tarball" kf-desktop
  echo "wrote $tarball ($(du -sh "$tarball" | cut -f1))"
fi
