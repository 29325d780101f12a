#!/usr/bin/env bash
# Install a built kf-desktop folder for the current user: commands in
# ~/.local/bin, the menu entry and the icon in ~/.local/share.
#
#   ./install_linux.sh            (run from inside the unpacked kf-desktop folder)
#   ./install_linux.sh --remove
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${XDG_BIN_HOME:-$HOME/.local/bin}
SHARE=${XDG_DATA_HOME:-$HOME/.local/share}

if [[ "${1:-}" == "--remove" ]]; then
  rm -f "$BIN/kf-desktop" "$BIN/kf-desktop-gui" "$SHARE/applications/kf-desktop.desktop" \
        "$SHARE/icons/hicolor/scalable/apps/kf-desktop.svg" "$SHARE/icons/hicolor/256x256/apps/kf-desktop.png"
  echo "removed"; exit 0
fi
mkdir -p "$BIN" "$SHARE/applications" "$SHARE/icons/hicolor/scalable/apps" "$SHARE/icons/hicolor/256x256/apps"
ln -sf "$HERE/kf-desktop" "$BIN/kf-desktop"
ln -sf "$HERE/kf-desktop-gui" "$BIN/kf-desktop-gui"
install -m 644 "$HERE/kf-desktop.svg" "$SHARE/icons/hicolor/scalable/apps/kf-desktop.svg"
install -m 644 "$HERE/kf-desktop-256.png" "$SHARE/icons/hicolor/256x256/apps/kf-desktop.png"
sed "s|^Exec=.*|Exec=$HERE/kf-desktop-gui %f|; s|^TryExec=.*|TryExec=$HERE/kf-desktop-gui|" \
  "$HERE/kf-desktop.desktop" > "$SHARE/applications/kf-desktop.desktop"
command -v update-desktop-database >/dev/null && update-desktop-database -q "$SHARE/applications" || true
command -v gtk-update-icon-cache >/dev/null && gtk-update-icon-cache -q "$SHARE/icons/hicolor" || true
echo "installed: kf-desktop and kf-desktop-gui in $BIN; 'kf-desktop' in the applications menu"
[[ ":$PATH:" == *":$BIN:"* ]] || echo "note: add $BIN to your PATH"
