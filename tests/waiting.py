"""Polling helpers shared by the tests that drive real threads and processes."""

from __future__ import annotations

import threading
import time


def wait_for(pred, timeout: float = 30.0, step: float = 0.05) -> bool:
    """Poll ``pred()`` until it is true (True) or ``timeout`` s pass (False)."""
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(step)
    return False


def kf_threads() -> list[str]:
    """The app's live threads (all are named kf-...)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("kf-") and t.is_alive()]
