"""An offline audio track for rendering: mouth shapes and loudness at any
video time, computed once from a WAV file with the streaming lip-sync."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from kf_desktop.audio.lipsync import MouthShape, mouth_track
from kf_desktop.audio.wav import load_mono16k
from kf_desktop.errors import UserError
from kf_desktop.idle_motion import IdleMotion
from kf_desktop.retarget import MotionParams

SR = 16000


class AudioTrack:
    """``params(t)``: idle head motion and blinks with the audio-driven mouth
    at video time ``t`` seconds from the start of the WAV."""

    def __init__(self, path: str | Path, seed: int = 0, lead_s: float = 0.04,
                 max_seconds: float | None = None) -> None:
        """``max_seconds``: only that much of the file is read and analysed
        (a render of 2 s from an hour-long WAV needs 2 s of mouth shapes)."""
        self.path = Path(path)
        # Offline the future is known: showing the shape from ``lead_s`` ahead
        # cancels the lip-sync's attack smoothing (measured: the rendered mouth
        # correlated best with loudness one 25 fps frame later without it).
        self.lead_s = lead_s
        # (n,) float32 at 16 kHz; a little beyond the end for the look-ahead
        self.samples = load_mono16k(self.path, max_seconds=None if max_seconds is None
                                    else max_seconds + lead_s + 0.5)
        hop = SR // 100
        if len(self.samples) < hop:
            what = "no audio" if len(self.samples) == 0 else \
                f"only {1000 * len(self.samples) / SR:.1f} ms of audio"
            raise UserError(f"the WAV file {self.path} holds {what}: too short to drive the "
                            "mouth (at least 10 ms)", "use a longer speech recording")
        self.duration = len(self.samples) / SR
        # Offline there is no need to trade latency for look-ahead: the shape
        # shown at t is the one computed for audio time t.
        self._times, self._shapes = mouth_track(self.samples, SR, lookahead_ms=40.0)
        self._idle = IdleMotion(seed)
        n = len(self.samples) // hop
        rms = np.sqrt(np.mean(self.samples[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
        db = 20 * np.log10(rms)
        self._loud = np.clip((db - np.percentile(db, 10)) / 30.0, 0.0, 1.0)  # 0..1 per 10 ms

    def mouth(self, t: float) -> MouthShape:
        if len(self._times) == 0 or t > self.duration:
            return MouthShape(0.0, 0.0, 0.0)
        k = int(np.clip(np.searchsorted(self._times, t + self.lead_s), 0, len(self._shapes) - 1))
        return self._shapes[k]

    def params(self, t: float) -> MotionParams:
        k = min(int(t * 100), len(self._loud) - 1)
        speech = float(self._loud[k]) if k >= 0 and t <= self.duration else 0.0
        m = self.mouth(t)
        p = self._idle.at(t, speech=speech)
        return dataclasses.replace(p, jaw_open=m.jaw_open, lip_width=m.lip_width,
                                   rounding=m.rounding)
