"""Constant video delay: the virtual camera sends every frame a fixed time
after its capture, so the picture's delay does not wander with load and a
delayed audio path (``kf_desktop.audio.virtual_mic``) can match it exactly.

``DelayPolicy`` chooses the target (capture -> send) delay: fixed when the
user sets one, otherwise measured -- the p95 of the pipeline's latency at the
sink (capture -> submit) over a warm-up, plus a margin, rounded up to 5 ms.
If later more than ``raise_late_frac`` of the recent frames miss the target
(the machine got busier) it is raised once per window, never lowered on its
own (every change is a small jump in the call's audio).

``HeldVirtualCameraSink`` is a ``VirtualCameraSink`` whose sender sends each
frame at ``capture_ts + target`` (within a few hundred microseconds of
scheduling), instead of at the next slot of a free-running 1/fps grid, which
would add up to a whole frame period (33 ms at 30 fps) of jitter. A frame
that reaches the sink after its due time is sent at once and counted as
``late``. The camera never stops delivering: when no frame is due within 1.5
frame periods of the last send, the previous frame is repeated on the
1/fps grid; fresh frames are at least 0.75 periods apart (a source faster
than the output rate sends its newest due frame).
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import dataclass

import numpy as np

from kf_desktop.sinks import VirtualCameraSink, check_image, log

#: Target delay bounds (ms): below 0 is meaningless; beyond 1 s the call feels broken.
MIN_DELAY_MS, MAX_DELAY_MS = 0.0, 1000.0


@dataclass(frozen=True)
class HoldStats:
    target_ms: float | None
    auto: bool
    late: int
    sent: int


class DelayPolicy:
    """Chooses and keeps the target capture-to-send delay.

    ``observe(latency_s)`` takes each frame's latency on arrival at the sink
    (submit time - capture time). ``target_s`` is None during an automatic
    warm-up (frames then pass without holding) and fixed afterwards.
    """

    def __init__(self, target_ms: float | None = None, *, margin_ms: float = 25.0,
                 warmup_frames: int = 45, window: int = 300,
                 raise_late_frac: float = 0.05) -> None:
        if target_ms is not None and not (MIN_DELAY_MS <= target_ms <= MAX_DELAY_MS):
            raise ValueError(f"video delay must be {MIN_DELAY_MS:g}..{MAX_DELAY_MS:g} ms, "
                             f"got {target_ms:g}")
        self.auto = target_ms is None
        self.margin_s = margin_ms / 1000.0
        self.warmup_frames = int(warmup_frames)
        self.raise_late_frac = raise_late_frac
        self.target_s: float | None = None if target_ms is None else target_ms / 1000.0
        self.retargets = 0
        self._lat: collections.deque[float] = collections.deque(maxlen=window)
        self._late: collections.deque[bool] = collections.deque(maxlen=window)
        self._since_change = 0

    @staticmethod
    def _round_up(s: float) -> float:
        ms = min(MAX_DELAY_MS, max(MIN_DELAY_MS, math.ceil(s * 1000.0 / 5.0) * 5.0))
        return ms / 1000.0

    def observe(self, latency_s: float) -> bool:
        """Record one frame's arrival latency; returns True if it is late."""
        self._lat.append(latency_s)
        if self.target_s is None:
            if self.auto and len(self._lat) >= self.warmup_frames:
                p95 = float(np.percentile(np.fromiter(self._lat, float), 95))
                self.target_s = self._round_up(p95 + self.margin_s)
                self._late.clear()
                self._since_change = 0
                log.info("video delay held at %.0f ms (latency p95 %.0f ms + margin)",
                         self.target_s * 1000, p95 * 1000)
            return False
        late = latency_s > self.target_s
        self._late.append(late)
        self._since_change += 1
        if (self.auto and self._since_change >= self._late.maxlen
                and sum(self._late) > self.raise_late_frac * len(self._late)):
            p95 = float(np.percentile(np.fromiter(self._lat, float), 95))
            new = self._round_up(p95 + self.margin_s)
            if new > self.target_s:
                log.warning("video delay raised from %.0f to %.0f ms (%d of the last %d "
                            "frames were late)", self.target_s * 1000, new * 1000,
                            sum(self._late), len(self._late))
                self.target_s = new
                self.retargets += 1
            self._late.clear()
            self._since_change = 0
        return late

    def set_target_ms(self, target_ms: float | None) -> None:
        """Fix the target (ms), or None to measure it again."""
        if target_ms is not None and not (MIN_DELAY_MS <= target_ms <= MAX_DELAY_MS):
            raise ValueError(f"video delay must be {MIN_DELAY_MS:g}..{MAX_DELAY_MS:g} ms")
        self.auto = target_ms is None
        self.target_s = None if target_ms is None else target_ms / 1000.0
        self._late.clear()
        self._lat.clear()
        self._since_change = 0


def _pct(values, qs) -> list[float] | None:
    if not values:
        return None
    return [float(v) for v in np.percentile(np.fromiter(values, float), qs)]


class HeldVirtualCameraSink(VirtualCameraSink):
    """A virtual camera that holds frames to a constant capture-to-send delay.

    ``delay_ms``: the target (None = measured automatically, see
    ``DelayPolicy``). ``stats()['hold']`` reports the target, the measured
    delay (p5/p50/p95 of send - capture), its jitter (p95 - p5) and the late
    frames. ``target_delay_s()`` is what an audio path delays itself by.
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30, *,
                 delay_ms: float | None = None, margin_ms: float = 25.0,
                 warmup_frames: int = 45, **kw) -> None:
        super().__init__(width, height, fps, **kw)
        self.policy = DelayPolicy(delay_ms, margin_ms=margin_ms, warmup_frames=warmup_frames)
        self._wake = threading.Event()
        self._pending: collections.deque[list] = collections.deque()
        # Pending frames kept at most: the longest delay at this rate, plus slack.
        self._max_pending = int(self.fps * MAX_DELAY_MS / 1000.0) + 4
        self._late = 0
        self._hold_sent = 0
        self._delays: collections.deque[float] = collections.deque(maxlen=300)
        self._late_recent: collections.deque[bool] = collections.deque(maxlen=300)

    def target_delay_s(self) -> float | None:
        with self._lock:
            return self.policy.target_s

    def set_delay_ms(self, delay_ms: float | None) -> None:
        with self._lock:
            self.policy.set_target_ms(delay_ms)
        self._wake.set()

    # ---- producer side ------------------------------------------------------
    def submit(self, image: np.ndarray, capture_ts: float) -> None:
        check_image(image)
        img = np.array(image, copy=True, order="C")
        now = time.monotonic()
        with self._lock:
            late = self.policy.observe(now - capture_ts)
            if late:
                self._late += 1
            self._late_recent.append(late)
            self._seq += 1
            self._frames_submitted += 1
            # [image, capture_ts, seq, prepared image or None]
            self._pending.append([img, float(capture_ts), self._seq, None])
            while len(self._pending) > self._max_pending:
                self._pending.popleft()
                self._frames_dropped += 1
        self._wake.set()

    def stop(self) -> None:
        self._wake.set()
        super().stop()

    # ---- sender thread ----------------------------------------------------------
    def _due(self, entry: list, target: float | None) -> float:
        return entry[1] + (target or 0.0)

    def _run(self) -> None:
        period = 1.0 / self.fps
        min_gap = 0.75 * period
        cam = self._cam
        current = self._placeholder
        have_frame = False
        last_send = time.monotonic() - period
        next_repeat = last_send + period
        while not self._stop.is_set():
            now = time.monotonic()
            with self._lock:
                target = self.policy.target_s
                send = None
                if now >= last_send + min_gap:
                    # The newest frame whose due time has come; older due ones are superseded.
                    while self._pending and self._due(self._pending[0], target) <= now:
                        if send is not None:
                            self._frames_dropped += 1
                        send = self._pending.popleft()
                head = self._pending[0] if self._pending else None
                head_due = self._due(head, target) if head is not None else None
                to_prepare = head if (head is not None and head[3] is None and send is None) else None
            # No repeat when a fresh frame is due soon (it keeps the cadence itself).
            repeat_at = None if (head_due is not None and head_due <= last_send + 1.5 * period) \
                else next_repeat
            kind = None
            if send is not None:
                current = send[3] if send[3] is not None else self._prepare(send[0])
                kind = "fresh"
            elif repeat_at is not None and now >= repeat_at:
                kind = "repeat" if have_frame else "placeholder"
            if kind is not None:
                t_sent = self._send(cam, current)
                if t_sent is None:
                    return
                # Repeats stay on a 1/fps grid; a fresh frame restarts it.
                next_repeat = (t_sent if kind == "fresh" else max(next_repeat, t_sent - period)) \
                    + period
                last_send = t_sent
                with self._lock:
                    self._frames_sent += 1
                    self._send_times.append(t_sent)
                    if kind == "fresh":
                        have_frame = True
                        self._sent_seq = send[2]
                        self._hold_sent += 1
                        lat = (t_sent - send[1]) * 1000.0
                        self._latency_ms.append(lat)
                        if target is not None:  # the held delay, not the warm-up's
                            self._delays.append(lat)
                    elif kind == "repeat":
                        self._frames_repeated += 1
                    else:
                        self._frames_placeholder += 1
                continue
            if to_prepare is not None:
                # Letterbox/mirror ahead of the due time, so the send itself is on time.
                prepared = self._prepare(to_prepare[0])
                with self._lock:
                    to_prepare[3] = prepared
                continue
            wake = repeat_at if repeat_at is not None else now + period
            if head_due is not None:
                wake = min(wake, max(head_due, last_send + min_gap))
            timeout = wake - time.monotonic()
            if timeout > 0:
                self._wake.wait(timeout)
            self._wake.clear()

    def stats(self) -> dict:
        out = super().stats()
        with self._lock:
            target = self.policy.target_s
            q = _pct(self._delays, (5, 50, 95))
            late_recent = sum(self._late_recent)
            n_recent = len(self._late_recent)
            out["hold"] = {
                "target_ms": None if target is None else target * 1000.0,
                "auto": self.policy.auto,
                "delay_ms": None if q is None else {"p5": q[0], "p50": q[1], "p95": q[2]},
                "jitter_ms": None if q is None else q[2] - q[0],
                "late": self._late,
                "late_pct": 100.0 * late_recent / n_recent if n_recent else 0.0,
                "sent": self._hold_sent,
                "retargets": self.policy.retargets,
            }
        return out


def hold_summary(snapshot: dict) -> str | None:
    """'video delay 120 ms (jitter 1.2 ms, 3 late)' from a session snapshot,
    or None when no sink holds frames."""
    for s in (snapshot.get("sinks") or {}).values():
        h = s.get("hold") if isinstance(s, dict) else None
        if not h:
            continue
        if h["target_ms"] is None:
            return "video delay: measuring"
        jit = h["jitter_ms"]
        jt = f"{jit:.1f} ms" if jit is not None else "-"
        return f"video delay {h['target_ms']:.0f} ms (jitter {jt}, {h['late']} late)"
    return None
