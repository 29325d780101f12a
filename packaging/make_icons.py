"""Render resources/icons/kf-desktop.svg to the PNG sizes desktops want, a
Windows .ico and a macOS .icns (Qt's image writers; no extra tools).

    .venv/bin/python packaging/make_icons.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QGuiApplication, QImage, QImageWriter, QPainter  # noqa: E402
from PySide6.QtSvg import QSvgRenderer  # noqa: E402

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
SIZES = (16, 32, 48, 64, 128, 256, 512)


def render(svg: QSvgRenderer, size: int) -> QImage:
    img = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    img.fill(Qt.GlobalColor.transparent)
    p = QPainter(img)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    svg.render(p)
    p.end()
    return img


def main() -> int:
    QGuiApplication.instance() or QGuiApplication(sys.argv[:1])
    svg = QSvgRenderer(str(ICONS / "kf-desktop.svg"))
    if not svg.isValid():
        print("invalid SVG", file=sys.stderr)
        return 1
    images = {s: render(svg, s) for s in SIZES}
    for s in (32, 64, 128, 256, 512):
        images[s].save(str(ICONS / f"kf-desktop-{s}.png"))
    # One multi-size file per OS, where this Qt build can write it.
    for fmt, sizes in (("ico", (16, 32, 48, 256)), ("icns", (16, 32, 64, 128, 256, 512))):
        if fmt.encode() not in [bytes(f) for f in QImageWriter.supportedImageFormats()]:
            print(f"skipping .{fmt}: no Qt writer")
            continue
        # Qt's ico/icns writers take one image; the largest makes the best icon.
        images[max(sizes)].save(str(ICONS / f"kf-desktop.{fmt}"), fmt)
    print("icons written to", ICONS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
