"""Logging for the desktop app: a rotating file in the user's data folder and
the last few hundred lines in memory for "Copy diagnostics"."""

from __future__ import annotations

import collections
import logging
import logging.handlers
import sys
import threading
from pathlib import Path

LOG_NAME = "kf-desktop.log"
FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"


class RecentLines(logging.Handler):
    """Keeps the last ``capacity`` formatted records (thread-safe)."""

    def __init__(self, capacity: int = 400) -> None:
        super().__init__(logging.DEBUG)
        self._lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self._lines_lock = threading.Lock()
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            return
        with self._lines_lock:
            self._lines.append(line)

    def lines(self, n: int | None = None) -> list[str]:
        with self._lines_lock:
            out = list(self._lines)
        return out[-n:] if n else out


class LogSetup:
    """What ``setup_logging`` installed, so the caller can undo it."""

    def __init__(self, path: Path | None, file_handler: logging.Handler | None,
                 recent: RecentLines) -> None:
        self.path = path
        self.file_handler = file_handler
        self.recent = recent

    def close(self) -> None:
        root = logging.getLogger()
        for h in (self.file_handler, self.recent):
            if h is not None:
                root.removeHandler(h)
                h.close()


def setup_logging(log_dir: Path | None, level: int = logging.INFO,
                  max_bytes: int = 1_000_000, backups: int = 3) -> LogSetup:
    """Attach a rotating file handler (``log_dir/kf-desktop.log``, 1 MB x 4)
    and an in-memory one to the root logger. A log folder that cannot be
    created only costs the file: the app still starts."""
    root = logging.getLogger()
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
    recent = RecentLines()
    recent.setLevel(logging.DEBUG)
    root.addHandler(recent)
    path = file_handler = None
    if log_dir is not None:
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            path = log_dir / LOG_NAME
            file_handler = logging.handlers.RotatingFileHandler(
                path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
            file_handler.setFormatter(logging.Formatter(FORMAT))
            file_handler.setLevel(level)
            root.addHandler(file_handler)
        except OSError as e:
            print(f"kf-desktop: cannot write logs to {log_dir}: {e}", file=sys.stderr)
            path = file_handler = None
    return LogSetup(path, file_handler, recent)
