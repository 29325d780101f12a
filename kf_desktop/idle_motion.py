"""Idle motion for audio-only mode: head sway, breathing and blinks.

Sway (yaw, pitch, roll, tx, ty) is a sum of many sinusoids whose frequencies
are drawn at random (120 per channel, log-uniform 0.03-0.3 Hz, so no two are
commensurate) with random phases and 1/sqrt(f) amplitudes, plus a faint
0.6-1.5 Hz micro-motion, all under a slow random "activity"
envelope: the head moves more for a while, then settles. Nothing repeats on
any time scale a viewer can notice (the test checks that the yaw
autocorrelation over 10 minutes stays below 0.5 at every lag past 5 s).

Breathing is a slow (~0.25 Hz) rhythm whose rate wanders, lifting the head
slightly (ty, pitch). Blinks come at random intervals of 2-6 s, last ~150 ms
(fast close, slower open) and are sometimes doubled. The schedule is
deterministic for a seed, so ``at(t)`` can be called for any ``t``.

Optional speech coupling: ``at(t, speech=loudness)`` adds small nods on
speech onsets and livens the sway while talking.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from kf_desktop.retarget import MotionParams


class _Sines:
    """Sum of sinusoids with random incommensurate frequencies; unit RMS."""

    def __init__(self, rng: np.random.Generator, n: int, f_lo: float, f_hi: float,
                 slope: float = 0.5) -> None:
        self.f = np.exp(rng.uniform(math.log(f_lo), math.log(f_hi), n))
        self.phase = rng.uniform(0.0, 2 * math.pi, n)
        amp = self.f ** -slope * rng.uniform(0.6, 1.4, n)
        self.amp = amp / math.sqrt(0.5 * float(np.sum(amp ** 2)))  # unit RMS

    def __call__(self, t: float) -> float:
        return float(np.dot(self.amp, np.sin(2 * math.pi * self.f * t + self.phase)))


# Standard deviations of the sway (degrees / fraction of face width): a calm
# speaker, comparable to talking-head datasets' head motion.
_SWAY_STD = {"yaw": 2.8, "pitch": 1.8, "roll": 1.2, "tx": 0.010, "ty": 0.006}


class IdleMotion:
    """``IdleMotion(seed).at(t)`` -> MotionParams-like; callable as ``idle(t)``.

    ``t`` is any clock in seconds (time.monotonic()); the first call defines
    the origin. ``amplitude`` scales all head motion (0 = still head, blinks
    and breathing only).
    """

    def __init__(self, seed: int = 0, amplitude: float = 1.0, blink_interval=(2.0, 6.0),
                 blink_ms: float = 150.0, double_blink_p: float = 0.12,
                 breath_hz: float = 0.25) -> None:
        rng = np.random.default_rng(seed)
        self.amplitude = amplitude
        self._sway = {k: _Sines(rng, 120, 0.03, 0.3, slope=0.5) for k in _SWAY_STD}
        # Small quicker micro-motion so the head never looks frozen between drifts.
        self._micro = {k: _Sines(rng, 40, 0.6, 1.5, slope=0.0) for k in _SWAY_STD}
        self._activity = _Sines(rng, 5, 0.004, 0.03, slope=0.0)
        self._breath_rate = _Sines(rng, 4, 0.01, 0.05, slope=0.0)
        self._breath_hz = breath_hz
        self._blink_rng = np.random.default_rng(rng.integers(1 << 62))
        self._blink_lo, self._blink_hi = blink_interval
        self._blink_s = blink_ms / 1000.0
        self._double_p = double_blink_p
        self._blinks: list[float] = []  # start times (relative), increasing
        self._blink_dur: list[float] = []
        self._scheduled_until = 0.0
        self._t0: float | None = None
        self._cls = MotionParams
        self._speech = 0.0  # smoothed speech loudness
        self._nod = 0.0  # nod state (degrees)
        self._last_t: float | None = None

    # -- components ----------------------------------------------------------
    def _activity_gain(self, t: float) -> float:
        return 1.0 + 0.35 * self._activity(t) / math.sqrt(2.0)

    def _breath_phase(self, t: float) -> float:
        # Rate wanders +-15 % around breath_hz; integrate analytically enough
        # for a smooth phase: phase = 2 pi (f0 t + small drift term).
        drift = 0.15 * self._breath_hz * self._breath_rate(t) / math.sqrt(2.0)
        return 2 * math.pi * (self._breath_hz * t) + 2 * math.pi * drift * 8.0

    def _schedule(self, until: float) -> None:
        r = self._blink_rng
        t = self._scheduled_until
        while t < until:
            # Intervals: mostly 2-6 s, skewed toward ~3-4 s.
            gap = float(np.clip(r.gamma(6.0, 0.6), self._blink_lo, self._blink_hi))
            t += gap
            dur = self._blink_s * float(r.uniform(0.8, 1.25))
            self._blinks.append(t)
            self._blink_dur.append(dur)
            if r.random() < self._double_p:
                t2 = t + dur + float(r.uniform(0.12, 0.25))
                self._blinks.append(t2)
                self._blink_dur.append(dur * 0.9)
                t = t2
        self._scheduled_until = t

    def blink_times(self, until: float) -> list[float]:
        """Start times (relative to the origin) of every blink before ``until``."""
        self._schedule(until + 10.0)
        return [b for b in self._blinks if b < until]

    def _eye_open(self, t: float) -> float:
        self._schedule(t + 10.0)
        i = bisect.bisect_right(self._blinks, t) - 1
        closure = 0.0
        for j in (i, i - 1):
            if j < 0:
                continue
            s, d = self._blinks[j], self._blink_dur[j]
            u = (t - s) / d
            if 0.0 <= u < 1.0:
                # Close in 40 % of the blink (fast), open in the rest (slower).
                if u < 0.4:
                    c = u / 0.4
                    c = c * c * (3 - 2 * c)
                else:
                    c = 1.0 - (u - 0.4) / 0.6
                    c = c * c * (3 - 2 * c)
                closure = max(closure, c)
        return 1.0 - closure

    # -- public ------------------------------------------------------------------
    def at(self, t: float, speech: float | None = None):
        """Motion at clock time ``t``. ``speech``: optional loudness 0..1 of the
        audio being spoken (nods on onsets, livelier sway while talking)."""
        if self._t0 is None:
            self._t0 = t
        r = t - self._t0
        g = self.amplitude * self._activity_gain(r)
        if speech is not None and self._last_t is not None and r > self._last_t:
            dt = min(r - self._last_t, 0.2)
            prev = self._speech
            self._speech += (speech - self._speech) * (1.0 - math.exp(-dt / 0.15))
            onset = max(0.0, self._speech - prev) / max(dt, 1e-3)
            # A nod: pitch down on an emphasis, relaxing over ~0.4 s.
            self._nod += -0.9 * min(onset, 4.0) * dt * 4.0
            self._nod *= math.exp(-dt / 0.4)
        if self._last_t is None or r > self._last_t:
            self._last_t = r
        talk = 1.0 + 0.4 * self._speech
        v = {k: _SWAY_STD[k] * g * talk * (s(r) + 0.12 * self._micro[k](r))
             for k, s in self._sway.items()}
        b = math.sin(self._breath_phase(r))
        v["ty"] += -0.0025 * b  # inhale lifts the head (image up)
        v["pitch"] += 0.35 * b + self.amplitude * self._nod
        return self._cls(yaw=v["yaw"], pitch=v["pitch"], roll=v["roll"], tx=v["tx"], ty=v["ty"],
                         eye_open=self._eye_open(r))

    __call__ = at
