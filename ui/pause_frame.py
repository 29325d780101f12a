"""The privacy still: the last frame (or the portrait), blurred and dimmed,
with "Paused" on it. Sent instead of the live avatar while paused, so the
meeting keeps a camera but sees nothing private."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter


def make_pause_still(source: QImage | None, size: tuple[int, int],
                     title: str = "Paused", subtitle: str = "back in a moment") -> QImage:
    w, h = size
    out = QImage(w, h, QImage.Format.Format_RGB888)
    out.fill(QColor("#15171b"))
    p = QPainter(out)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setRenderHint(QPainter.RenderHint.TextAntialiasing)
    if source is not None and not source.isNull():
        # Blur: shrink a lot, then scale back up smoothly (cheap, strong, no
        # recognisable detail left).
        small = source.scaled(max(1, source.width() // 24), max(1, source.height() // 24),
                              Qt.AspectRatioMode.IgnoreAspectRatio,
                              Qt.TransformationMode.SmoothTransformation)
        blurred = small.scaled(w, h, Qt.AspectRatioMode.KeepAspectRatioByExpanding,
                               Qt.TransformationMode.SmoothTransformation)
        p.drawImage((w - blurred.width()) // 2, (h - blurred.height()) // 2, blurred)
        p.fillRect(0, 0, w, h, QColor(0, 0, 0, 150))
    f = QFont()
    f.setPixelSize(max(12, h // 9))
    f.setBold(True)
    p.setFont(f)
    p.setPen(QColor("#f4f5f7"))
    title_rect = QRectF(0, h * 0.36, w, h * 0.16)
    p.drawText(title_rect, Qt.AlignmentFlag.AlignCenter, title)
    f2 = QFont()
    f2.setPixelSize(max(10, h // 26))
    p.setFont(f2)
    p.setPen(QColor(235, 236, 240, 200))
    p.drawText(QRectF(0, h * 0.53, w, h * 0.08), Qt.AlignmentFlag.AlignCenter, subtitle)
    p.end()
    return out


def qimage_to_rgb(img: QImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB copy of ``img``."""
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), np.uint8, count=bpl * h).reshape(h, bpl)
    # copy(): the buffer belongs to ``img``, which may be freed after we return
    return buf[:, : w * 3].reshape(h, w, 3).copy()
