"""Sliders for the retargeting gains (head, expression, mouth, eyes: 0-200 %)
and the smoothing (0-100 %)."""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QSlider, QWidget

from ui.options import DEFAULT_GAINS, GAIN_NAMES

LABELS = {"head": "Head", "expression": "Expression", "mouth": "Mouth", "eyes": "Eyes",
          "smoothing": "Smoothing"}
TIPS = {
    "head": "How much of your head turn and tilt the portrait copies",
    "expression": "Brows and cheeks",
    "mouth": "Mouth opening and shape",
    "eyes": "Blinks and eye openness",
    "smoothing": "Less jitter (higher) or faster response (lower)",
}


class GainsPanel(QWidget):
    gains_changed = Signal(dict)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(10)
        grid.setVerticalSpacing(6)
        grid.setColumnStretch(1, 1)
        self.sliders: dict[str, QSlider] = {}
        self._values: dict[str, QLabel] = {}
        for row, name in enumerate((*GAIN_NAMES, "smoothing")):
            label = QLabel(LABELS[name])
            label.setToolTip(TIPS[name])
            s = QSlider(Qt.Orientation.Horizontal)
            s.setObjectName(f"gain_{name}")
            s.setRange(0, 100 if name == "smoothing" else 200)
            s.setSingleStep(5)
            s.setPageStep(25)
            s.setToolTip(TIPS[name])
            value = QLabel()
            value.setObjectName("sliderValue")
            value.setMinimumWidth(42)
            value.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            grid.addWidget(label, row, 0)
            grid.addWidget(s, row, 1)
            grid.addWidget(value, row, 2)
            self.sliders[name] = s
            self._values[name] = value
            s.valueChanged.connect(lambda v, n=name: self._on_slider(n, v))
        self.set_gains(DEFAULT_GAINS)

    def gains(self) -> dict[str, float]:
        return {n: s.value() / 100.0 for n, s in self.sliders.items()}

    def set_gains(self, values: dict[str, float]) -> None:
        """Show ``values`` (shares, 1.0 = 100 %); one that is missing or not a
        finite number shows its default, one out of range the nearest end."""
        for n, s in self.sliders.items():
            v = values.get(n, DEFAULT_GAINS[n])
            try:
                v = float(v)
            except (TypeError, ValueError):
                v = math.nan
            if not math.isfinite(v):
                v = DEFAULT_GAINS[n]
            s.blockSignals(True)
            s.setValue(min(max(round(v * 100), s.minimum()), s.maximum()))
            s.blockSignals(False)
            self._values[n].setText(f"{s.value()} %")

    def _on_slider(self, name: str, value: int) -> None:
        self._values[name].setText(f"{value} %")
        self.gains_changed.emit(self.gains())
