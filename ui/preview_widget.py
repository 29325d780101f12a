"""The live preview: paints the newest frame, letterboxed, with an fps /
latency overlay. Painting only: frames arrive as ready-made QImages."""

from __future__ import annotations

import time
from collections import deque

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPainterPath, QPaintEvent
from PySide6.QtWidgets import QSizePolicy, QWidget


class PreviewWidget(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("preview")
        self.setMinimumSize(320, 180)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent)
        self._image: QImage | None = None
        self._placeholder: QImage | None = None
        self._mirror = False
        self._live = False
        self._paused = False
        self._busy = ""
        self._idle_text = "Press Start to go live"
        self._arrivals: deque[float] = deque(maxlen=60)
        self._latency_ms: deque[float] = deque(maxlen=60)
        self._engine_fps: float | None = None
        self.frames_shown = 0

    # -- state -----------------------------------------------------------------
    def sizeHint(self) -> QSize:
        return QSize(800, 450)

    def set_frame(self, image: QImage, capture_ts: float | None = None) -> None:
        now = time.monotonic()
        self._image = image
        self._arrivals.append(now)
        if capture_ts is not None:
            self._latency_ms.append((now - capture_ts) * 1000.0)
        self.frames_shown += 1
        self.update()

    def set_placeholder(self, image: QImage | None) -> None:
        """What to show while not streaming (the portrait, dimmed)."""
        self._placeholder = image
        self.update()

    def set_live(self, live: bool) -> None:
        self._live = live
        if not live:
            self._image = None
            self._arrivals.clear()
            self._latency_ms.clear()
            self._engine_fps = None
        self.update()

    def set_mirror(self, mirror: bool) -> None:
        self._mirror = mirror
        self.update()

    @property
    def mirror(self) -> bool:
        return self._mirror

    def set_paused(self, paused: bool, still: QImage | None = None) -> None:
        self._paused = paused
        if paused and still is not None:
            self._image = still
        self.update()

    def set_busy(self, text: str) -> None:
        self._busy = text
        self.update()

    def set_idle_text(self, text: str) -> None:
        self._idle_text = text
        self.update()

    def set_engine_fps(self, fps: float | None) -> None:
        self._engine_fps = fps

    @property
    def placeholder(self) -> QImage | None:
        return self._placeholder

    @property
    def current_image(self) -> QImage | None:
        return self._image

    def fps(self) -> float:
        a = self._arrivals
        if len(a) < 2 or a[-1] <= a[0]:
            return 0.0
        return (len(a) - 1) / (a[-1] - a[0])

    def latency_ms(self) -> float | None:
        if not self._latency_ms:
            return None
        return sorted(self._latency_ms)[len(self._latency_ms) // 2]

    def overlay_text(self) -> str:
        lat = self.latency_ms()
        parts = [f"{self.fps():.1f} fps"]
        if lat is not None:
            parts.append(f"{lat:.0f} ms")
        if self._engine_fps is not None:
            parts.append(f"engine {self._engine_fps:.1f} fps")
        return "  ·  ".join(parts)

    # -- painting ------------------------------------------------------------
    def _target_rect(self, img: QImage) -> QRectF:
        w, h = self.width(), self.height()
        s = min(w / img.width(), h / img.height())
        tw, th = img.width() * s, img.height() * s
        return QRectF((w - tw) / 2, (h - th) / 2, tw, th)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor("#101114"))
        img = self._image if (self._live or self._paused) else None
        if img is not None and not img.isNull():
            self._draw_image(p, img, 1.0)
        elif self._placeholder is not None and not self._placeholder.isNull():
            self._draw_image(p, self._placeholder, 0.35)
        if self._live and not self._paused and img is not None:
            self._draw_pill(p, self.overlay_text(), QPointF(12, 12), QColor(0, 0, 0, 150))
        badges = []
        if self._paused:
            badges.append(("PAUSED", QColor(214, 69, 65, 220)))
        if self._mirror and not self._paused:
            badges.append(("MIRRORED", QColor(0, 0, 0, 150)))
        x = self.width() - 12
        for text, bg in badges:
            w = self._pill_width(p, text)
            x -= w
            self._draw_pill(p, text, QPointF(x, 12), bg)
            x -= 8
        if self._busy:
            self._draw_center(p, self._busy)
        elif not self._live and not self._paused:
            self._draw_center(p, self._idle_text)
        p.end()

    def _draw_image(self, p: QPainter, img: QImage, opacity: float) -> None:
        r = self._target_rect(img)
        p.save()
        p.setOpacity(opacity)
        if self._mirror and not self._paused:
            # (the pause still is shown as the meeting sees it: readable)
            # mirror around the target rect's vertical centre line
            p.translate(r.center().x() * 2, 0)
            p.scale(-1, 1)
        p.drawImage(r, img)
        p.restore()

    def _font(self, p: QPainter, px: int, bold: bool = False) -> QFont:
        f = QFont(p.font())
        f.setPixelSize(px)
        f.setBold(bold)
        return f

    def _pill_width(self, p: QPainter, text: str) -> float:
        p.save()
        p.setFont(self._font(p, 12, True))
        w = p.fontMetrics().horizontalAdvance(text) + 20
        p.restore()
        return w

    def _draw_pill(self, p: QPainter, text: str, at: QPointF, bg: QColor) -> None:
        p.save()
        p.setFont(self._font(p, 12, True))
        fm = p.fontMetrics()
        r = QRectF(at.x(), at.y(), fm.horizontalAdvance(text) + 20, fm.height() + 10)
        path = QPainterPath()
        path.addRoundedRect(r, r.height() / 2, r.height() / 2)
        p.fillPath(path, bg)
        p.setPen(QColor("#f2f3f5"))
        p.drawText(r, Qt.AlignmentFlag.AlignCenter, text)
        p.restore()

    def _draw_center(self, p: QPainter, text: str) -> None:
        p.save()
        p.setFont(self._font(p, 17))
        fm = p.fontMetrics()
        w = fm.horizontalAdvance(text) + 40
        h = fm.height() + 22
        r = QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)
        path = QPainterPath()
        path.addRoundedRect(r, 10, 10)
        p.fillPath(path, QColor(0, 0, 0, 160))
        p.setPen(QColor("#e8e9ec"))
        p.drawText(r, Qt.AlignmentFlag.AlignCenter, text)
        p.restore()
