"""Thread-safe rolling statistics: per-stage milliseconds, rates, latency."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque

import numpy as np


class RollingStats:
    """Keeps the last ``window`` samples per named series.

    Stages record durations (ms) with ``add``; events (frames out of a stage)
    with ``tick`` so their rate can be computed over the same window.
    """

    def __init__(self, window: int = 300) -> None:
        self._window = window
        self._lock = threading.Lock()
        self._series: dict[str, deque[float]] = {}
        self._ticks: dict[str, deque[float]] = {}
        self._counters: dict[str, int] = {}

    def reset(self) -> None:
        """Forget every sample (e.g. after a warm-up)."""
        with self._lock:
            self._series.clear()
            self._ticks.clear()
            self._counters.clear()

    def add(self, name: str, value: float) -> None:
        with self._lock:
            q = self._series.get(name)
            if q is None:
                q = self._series[name] = deque(maxlen=self._window)
            q.append(float(value))

    def tick(self, name: str, t: float | None = None) -> None:
        with self._lock:
            q = self._ticks.get(name)
            if q is None:
                q = self._ticks[name] = deque(maxlen=self._window)
            q.append(time.monotonic() if t is None else t)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counters[name] = self._counters.get(name, 0) + n

    def percentiles(self, name: str, qs=(50, 95, 99)) -> dict[str, float]:
        with self._lock:
            data = list(self._series.get(name, ()))
        if not data:
            return {}
        vals = np.percentile(np.asarray(data), qs)
        return {f"p{q}": float(v) for q, v in zip(qs, vals)}

    def median(self, name: str) -> float | None:
        p = self.percentiles(name, (50,))
        return p.get("p50")

    def rate(self, name: str, now: float | None = None, horizon: float = 2.0) -> float | None:
        """Events per second, measured up to ``now`` (default: the current
        time), so the rate falls to 0 within ``horizon`` seconds once nothing
        flows. None before a series has two ticks.

        While every retained tick is younger than ``horizon`` (start-up, or a
        rate so high that the window holds less than ``horizon``) the rate is
        the ticks per second since the oldest one; otherwise it is the ticks
        in the last ``horizon`` seconds divided by ``horizon``."""
        with self._lock:
            q = list(self._ticks.get(name, ()))
        if len(q) < 2:
            return None
        now = time.monotonic() if now is None else now
        now = max(now, q[-1])
        start = now - horizon
        if q[0] > start:
            span = now - q[0]
            if span <= 0:
                return None
            # (n - 1) intervals over the time they took, not counting the
            # open interval since the newest tick while it is not overdue.
            typical = (q[-1] - q[0]) / (len(q) - 1)
            if now - q[-1] <= typical:
                span = q[-1] - q[0]
            return (len(q) - 1) / span if span > 0 else None
        recent = len(q) - bisect.bisect_right(q, start)
        return recent / horizon

    def snapshot(self) -> dict:
        with self._lock:
            names = list(self._series)
            ticks = list(self._ticks)
            counters = dict(self._counters)
        out: dict = {"ms": {}, "fps": {}, "counters": counters}
        for n in names:
            out["ms"][n] = self.percentiles(n)
        now = time.monotonic()
        for n in ticks:
            r = self.rate(n, now)
            if r is not None:
                out["fps"][n] = r
        return out


class Timer:
    """``with Timer(stats, "guide"):`` records the block's milliseconds."""

    def __init__(self, stats: RollingStats, name: str) -> None:
        self.stats = stats
        self.name = name
        self.t0 = 0.0

    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.stats.add(self.name, (time.perf_counter() - self.t0) * 1000.0)
