"""Streaming audio -> mouth shape (jaw open, lip width, lip rounding).

Method: signal processing on the 10 ms feature hop (features.py), chosen by
measurement (docs in the module report / tests/audio/test_lipsync.py):

* jaw opening follows loudness relative to the running speech level (dB), so
  silence and the quiet closure of /m/ /b/ /p/ close the mouth and stressed
  vowels open it; it is scaled by vowel height from the first formant (open
  vowels such as /a/ have F1 ~ 700-800 Hz, close vowels /i/ /u/ ~ 300 Hz);
* bilabial closure: a voiced, quiet (>= 8 dB below the speech level) frame
  whose energy sits below 500 Hz (nasal murmur / voice bar) forces the lips
  shut; a stop's silent closure is already closed by the loudness term;
* rounding: low F2 together with low F1 while voiced (/u/ /o/);
  lip width: spread for high F2 (/i/ /e/), narrowed by rounding.

Look-ahead: the shape for audio time ``t`` is emitted once features up to
``t + lookahead`` exist. It is used to open the jaw ahead of a vowel onset (as
speakers do) and to see the burst after a closure; it never delays closing.
Smoothing is a one-pole attack/release (12 ms / 25 ms), fast enough that
silence closes the mouth well within 100 ms.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from kf_desktop.audio.features import SR, AudioFeatures, FeatureTracker


@dataclass(frozen=True)
class MouthShape:
    """jaw_open 0 (closed) .. 1 (wide open); lip_width -1 (narrow/pursed) ..
    1 (spread), 0 neutral; rounding 0 .. 1 (protruded, as in /u/)."""

    jaw_open: float = 0.0
    lip_width: float = 0.0
    rounding: float = 0.0


CLOSED = MouthShape()


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at lo, 1 at hi, linear between (lo > hi gives a falling ramp)."""
    if hi == lo:
        return float(x >= hi)
    return float(min(1.0, max(0.0, (x - lo) / (hi - lo))))


@dataclass(frozen=True)
class _Target:
    t: float
    jaw: float
    closure: float
    width: float
    rounding: float
    voiced: float


class LipSync:
    """Feature frames in, mouth shapes out, on the feature hop.

    ``update(features)`` takes one ``AudioFeatures`` (10 ms hop) and returns
    ``(t, MouthShape)`` for the frame ``lookahead_ms`` earlier, or None while
    the look-ahead is filling. ``push(samples, t_end)`` does the feature
    extraction too. ``at(t)`` looks up the emitted shape nearest ``t``.
    """

    def __init__(self, lookahead_ms: float = 40.0, hop_ms: float = 10.0,
                 samplerate: int = SR, attack_ms: float = 12.0, release_ms: float = 25.0,
                 history_s: float = 2.0) -> None:
        self.hop_s = hop_ms / 1000.0
        self.lookahead_frames = max(0, int(round(lookahead_ms / hop_ms)))
        self.lookahead_s = self.lookahead_frames * self.hop_s
        self.features = FeatureTracker(samplerate, hop_ms)
        self._a_att = 1.0 - np.exp(-self.hop_s / (attack_ms / 1000.0))
        self._a_rel = 1.0 - np.exp(-self.hop_s / (release_ms / 1000.0))
        self._a_rel_fast = 1.0 - np.exp(-self.hop_s / 0.010)
        self._a_shape = 1.0 - np.exp(-self.hop_s / 0.040)
        self._queue: deque[_Target] = deque()
        self._jaw = 0.0
        self._width = 0.0
        self._round = 0.0
        self._since_speech = 1e9  # seconds since the last loud frame
        self._f1 = 500.0  # smoothed formants (voiced frames only)
        self._f2 = 1500.0
        self._out: deque[tuple[float, MouthShape]] = deque(maxlen=max(1, int(history_s / self.hop_s)))

    # -- per-frame mapping -------------------------------------------------
    def _target(self, f: AudioFeatures) -> _Target:
        rel = f.rms_db - f.level_db  # dB below the running speech level
        above_floor = _ramp(f.rms_db, f.floor_db + 6.0, f.floor_db + 16.0)
        loud = _ramp(rel, -20.0, -4.0) * above_floor
        voiced = _ramp(f.voicing, 0.35, 0.65) * above_floor
        if voiced > 0.0 and f.f1_hz > 0.0:
            a = 0.35 * voiced
            self._f1 += a * (f.f1_hz - self._f1)
            if f.f2_hz > 0.0:
                self._f2 += a * (f.f2_hz - self._f2)
        # Vowel height: F1 300 Hz (/i/ /u/) -> 0.45, 750 Hz (/a/) -> 1.
        height = 0.45 + 0.55 * _ramp(self._f1, 300.0, 720.0)
        height = voiced * height + (1.0 - voiced) * 0.75
        # Bilabial / nasal closure: voiced, quiet, energy below ~500 Hz.
        murmur = (_ramp(f.centroid_hz, 650.0, 420.0)
                  * _ramp(f.mid_db - f.low_db, -3.0, -7.0)
                  * _ramp(rel, -5.0, -9.0))
        closure = murmur * voiced
        # A quiet gap shortly after speech is a stop closure (/p/ /b/ /t/ ...):
        # hold the mouth shut through it instead of opening early for the
        # next vowel. After a long pause, anticipation is allowed again.
        if loud > 0.5:
            self._since_speech = 0.0
        else:
            self._since_speech += self.hop_s
        if self._since_speech < 0.15:
            closure = max(closure, _ramp(rel, -14.0, -22.0))
        jaw = loud * height * (1.0 - closure)
        rnd = (_ramp(self._f2, 1800.0, 1200.0) * _ramp(self._f1, 620.0, 420.0)
               * voiced * loud * (1.0 - closure))
        spread = _ramp(self._f2, 1750.0, 2200.0) * voiced * loud
        width = float(np.clip(spread - 0.8 * rnd, -1.0, 1.0))
        return _Target(f.t, jaw, closure, width, rnd, voiced)

    def update(self, f: AudioFeatures) -> tuple[float, MouthShape] | None:
        self._queue.append(self._target(f))
        if len(self._queue) <= self.lookahead_frames:
            return None
        cur = self._queue.popleft()
        # Anticipation: open toward an upcoming vowel, weaker the further ahead.
        ahead = 0.0
        n = len(self._queue)
        for d, nxt in enumerate(self._queue, start=1):
            ahead = max(ahead, nxt.jaw * (1.0 - d / (n + 1.0)))
        target = max(cur.jaw, ahead * (1.0 - cur.closure))
        if target > self._jaw:
            self._jaw += self._a_att * (target - self._jaw)
        else:
            a = self._a_rel_fast if cur.closure > 0.5 else self._a_rel
            self._jaw += a * (target - self._jaw)
        self._width += self._a_shape * (cur.width - self._width)
        self._round += self._a_shape * (cur.rounding - self._round)
        # Closed lips are neither rounded nor spread much.
        shape = MouthShape(jaw_open=float(np.clip(self._jaw, 0.0, 1.0)),
                           lip_width=float(np.clip(self._width, -1.0, 1.0)),
                           rounding=float(np.clip(self._round, 0.0, 1.0)))
        self._out.append((cur.t, shape))
        return cur.t, shape

    # -- convenience ---------------------------------------------------------
    def push(self, samples: np.ndarray, t_end: float) -> list[tuple[float, MouthShape]]:
        """Feed 16 kHz samples ending just before ``t_end``; returns new shapes."""
        out = []
        for f in self.features.push(samples, t_end):
            r = self.update(f)
            if r is not None:
                out.append(r)
        return out

    def latest(self) -> tuple[float, MouthShape] | None:
        return self._out[-1] if self._out else None

    def at(self, t: float, stale_s: float = 0.15) -> MouthShape:
        """Shape nearest audio time ``t``. If ``t`` is past the newest shape by
        more than ``stale_s`` (audio stopped arriving: device lost, source
        ended) the mouth closes instead of freezing open."""
        if not self._out:
            return CLOSED
        t_last, last = self._out[-1]
        if t >= t_last:
            if t - t_last > stale_s:
                return CLOSED
            return last
        t0 = self._out[0][0]
        k = int(round((t - t0) / self.hop_s))
        k = min(max(k, 0), len(self._out) - 1)
        return self._out[k][1]

    def shape_at(self, t: float, stale_s: float = 0.15) -> MouthShape:
        """Like ``at`` but linearly interpolated between the two shapes around
        ``t`` (no 10 ms hop quantisation: a fixed-lag reader gets the mouth of
        exactly audio time ``t``)."""
        if not self._out:
            return CLOSED
        t_last, last = self._out[-1]
        if t >= t_last:
            return CLOSED if t - t_last > stale_s else last
        t0 = self._out[0][0]
        x = (t - t0) / self.hop_s
        if x <= 0:
            return self._out[0][1]
        k = min(int(x), len(self._out) - 2)
        w = x - k
        a, b = self._out[k][1], self._out[k + 1][1]
        return MouthShape(a.jaw_open + w * (b.jaw_open - a.jaw_open),
                          a.lip_width + w * (b.lip_width - a.lip_width),
                          a.rounding + w * (b.rounding - a.rounding))

    @property
    def latency_s(self) -> float:
        """Audio-to-shape algorithmic latency: half the analysis window (the
        newest frame's centre lags the newest sample) plus the look-ahead."""
        return self.features.latency_s + self.lookahead_s


def mouth_track(samples: np.ndarray, samplerate: int = SR, lookahead_ms: float = 40.0,
                t0: float = 0.0) -> tuple[np.ndarray, list[MouthShape]]:
    """Offline helper (tests, benches): run LipSync over a whole signal in 10 ms
    chunks, flushing the look-ahead with trailing silence. Returns the times of
    the shapes (audio time, t0 = first sample) and the shapes."""
    ls = LipSync(lookahead_ms=lookahead_ms, samplerate=samplerate)
    x = np.asarray(samples, dtype=np.float32)
    tail = int(samplerate * (ls.lookahead_s + 0.05))
    x = np.concatenate([x, np.zeros(tail, dtype=np.float32)])
    step = samplerate // 100
    res = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        res.extend(ls.push(chunk, t0 + (i + len(chunk)) / samplerate))
    n = int(np.ceil(len(samples) / step))
    res = res[:n]
    return np.array([r[0] for r in res]), [r[1] for r in res]
