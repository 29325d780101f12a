"""A dependency-free terminal progress bar for long work (downloads, renders)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """Redraws one line at most ~10 times a second; falls back to plain lines
    when the stream is not a terminal (CI logs stay readable)."""

    def __init__(self, label: str, total: int = 0, stream: TextIO | None = None,
                 unit: str = "") -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream or sys.stderr
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self._last_pct = -10
        self._start = time.monotonic()

    def update(self, done: int, total: int | None = None, extra: str = "") -> None:
        if total is not None:
            self.total = total
        now = time.monotonic()
        pct = int(100 * done / self.total) if self.total else -1
        if self._tty:
            if now - self._last < 0.1 and done != self.total:
                return
            width = 30
            filled = int(width * done / self.total) if self.total else 0
            bar = "#" * filled + "-" * (width - filled)
            tail = f"{pct:3d}%" if self.total else f"{done}{self.unit}"
            self.stream.write(f"\r{self.label} [{bar}] {tail} {extra}   ")
            self.stream.flush()
        elif pct >= self._last_pct + 10 or (pct < 0 and now - self._last > 5):
            self._last_pct = pct
            tail = f"{pct}%" if self.total else f"{done}{self.unit}"
            self.stream.write(f"{self.label}: {tail} {extra}\n")
            self.stream.flush()
        self._last = now

    def close(self) -> None:
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
