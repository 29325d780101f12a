"""Combining mouth sources.

``MouthMixer`` (webcam + mic mode): the webcam's mouth leads while the face is
visible and roughly frontal; when the face is lost or turned away (|yaw| past
~35 degrees, where the far lip corner is hidden and mouth landmarks become
unreliable) the audio-driven mouth takes over, with a ~150 ms crossfade both
ways and a few degrees of hysteresis so a face hovering at the limit does not
flicker between sources.

``AudioMotion`` (audio-only mode, the paper's setting): idle head motion and
blinks from ``IdleMotion`` with the mouth from ``LipSync`` fed by an audio
source; callable as ``motion(t)`` like the session's ``idle_motion`` hook.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from kf_desktop.audio.lipsync import CLOSED, LipSync, MouthShape

# Landmark indices (mediapipe face mesh): mouth corners and face-side points.
_MOUTH_L, _MOUTH_R = 61, 291
_FACE_L, _FACE_R = 234, 454


def mouth_from_face(face, neutral_width_ratio: float = 0.40) -> MouthShape:
    """Approximate MouthShape of a webcam face (``kf_desktop.frames.FaceResult``).

    jaw_open from the inner-lip gap / mouth width (``mouth_open``: ~0 closed,
    >= 0.35 wide open); lip_width from mouth width / face width against a
    neutral ratio; rounding from a narrowed mouth that is still a little open.
    """
    jaw = float(np.clip(face.mouth_open / 0.35, 0.0, 1.0))
    lm = np.asarray(face.landmarks)
    mw = float(np.linalg.norm(lm[_MOUTH_L, :2] - lm[_MOUTH_R, :2]))
    fw = float(np.linalg.norm(lm[_FACE_L, :2] - lm[_FACE_R, :2]))
    if fw <= 1e-6:
        return MouthShape(jaw, 0.0, 0.0)
    rel = mw / fw / neutral_width_ratio - 1.0  # +0.15 ~ wide smile, -0.15 ~ pursed
    width = float(np.clip(rel / 0.15, -1.0, 1.0))
    rounding = float(np.clip(-rel / 0.15, 0.0, 1.0) * min(1.0, 0.3 + 2.0 * jaw))
    return MouthShape(jaw, width, rounding)


def blend(a: MouthShape, b: MouthShape, w: float) -> MouthShape:
    """``w * a + (1 - w) * b`` per field."""
    return MouthShape(w * a.jaw_open + (1 - w) * b.jaw_open,
                      w * a.lip_width + (1 - w) * b.lip_width,
                      w * a.rounding + (1 - w) * b.rounding)


class MouthMixer:
    """Chooses and crossfades between the webcam mouth and the audio mouth.

    ``update(t, webcam, yaw, audio)``: ``webcam`` is the webcam's MouthShape
    or None when no face was found, ``yaw`` the face's yaw in degrees (None
    if unknown), ``audio`` the audio mouth. Returns the mixed shape;
    ``webcam_weight`` (0..1) tells a caller that warps from landmarks how much
    of the webcam mouth to keep.
    """

    def __init__(self, crossfade_ms: float = 150.0, max_yaw_deg: float = 35.0,
                 hysteresis_deg: float = 5.0, lost_grace_ms: float = 100.0) -> None:
        self.crossfade_s = crossfade_ms / 1000.0
        self.max_yaw = max_yaw_deg
        self.hysteresis = hysteresis_deg
        self.lost_grace_s = lost_grace_ms / 1000.0
        self.webcam_weight = 1.0
        self._use_webcam = True
        self._last_t: float | None = None
        self._last_seen: float | None = None  # last time the webcam mouth was usable
        self._last_webcam = CLOSED

    @property
    def source(self) -> str:
        """"webcam", "audio" or "mixing" (during a crossfade)."""
        if self.webcam_weight >= 1.0:
            return "webcam"
        if self.webcam_weight <= 0.0:
            return "audio"
        return "mixing"

    def update(self, t: float, webcam: MouthShape | None, yaw: float | None,
               audio: MouthShape) -> MouthShape:
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        if webcam is not None:
            limit = self.max_yaw - (self.hysteresis if not self._use_webcam else 0.0)
            frontal = yaw is None or abs(yaw) < limit
        else:
            frontal = False
        if webcam is not None and frontal:
            self._last_seen = t
            self._last_webcam = webcam
            self._use_webcam = True
        elif self._last_seen is None or t - self._last_seen > self.lost_grace_s:
            # A single dropped detection does not hand the mouth to audio.
            self._use_webcam = False
        step = dt / self.crossfade_s if self.crossfade_s > 0 else 1.0
        goal = 1.0 if self._use_webcam else 0.0
        if self._last_seen is None:
            self.webcam_weight = goal
        elif self.webcam_weight < goal:
            self.webcam_weight = min(goal, self.webcam_weight + step)
        else:
            self.webcam_weight = max(goal, self.webcam_weight - step)
        # Smoothstep the linear ramp: no velocity jump at either end.
        w = self.webcam_weight
        w = w * w * (3 - 2 * w)
        cam = webcam if (webcam is not None and frontal) else self._last_webcam
        return blend(cam, audio, w)


class AudioMotion:
    """Audio-only mode driver: ``motion(t)`` -> MotionParams with idle head
    motion and blinks plus the audio-driven mouth.

    ``source`` is a MicSource or WavSource (``read_new()``); each call pulls
    the audio that arrived since the last call through LipSync. The mouth
    shown at ``t`` is the newest one available: it lags the audio by the
    LipSync latency (half an analysis window + look-ahead) plus the device's
    input latency. When audio stops (device lost, file ended) the mouth
    closes after 150 ms instead of freezing.

    ``fixed_lag_ms``: show instead the mouth of audio time ``t - lag``
    exactly (interpolated), so every frame's mouth is a known time behind
    its timestamp; the delayed virtual microphone relies on that. The lag
    must cover the LipSync latency plus the audio block delivery (~45 ms);
    while the shape for ``t - lag`` is not there yet the newest one is shown.
    """

    def __init__(self, source, idle=None, lookahead_ms: float = 40.0, seed: int = 0,
                 speech_nods: bool = True, fixed_lag_ms: float | None = None) -> None:
        from kf_desktop.idle_motion import IdleMotion

        self.source = source
        self.idle = idle if idle is not None else IdleMotion(seed)
        self.lipsync = LipSync(lookahead_ms=lookahead_ms)
        self.speech_nods = speech_nods
        self.mouth = CLOSED
        self.mouth_time: float | None = None  # audio time of the newest shape
        self.fixed_lag_s = None if fixed_lag_ms is None else fixed_lag_ms / 1000.0
        self.lag_misses = 0

    def poll(self) -> None:
        x, t_end = self.source.read_new()
        if x.shape[0]:
            self.lipsync.push(x, t_end)
        latest = self.lipsync.latest()
        if latest is not None:
            self.mouth_time = latest[0]

    def __call__(self, t: float):
        self.poll()
        if self.fixed_lag_s is not None:
            tq = t - self.fixed_lag_s
            if self.mouth_time is not None and tq - self.mouth_time < 0.15:
                if tq > self.mouth_time:
                    self.lag_misses += 1  # audio arrived later than the lag allows
                self.mouth = self.lipsync.shape_at(min(tq, self.mouth_time))
            else:
                self.mouth = CLOSED
        elif self.mouth_time is not None and t - self.mouth_time < 0.15 + self.lipsync.latency_s + 0.1:
            self.mouth = self.lipsync.at(self.mouth_time)
        else:
            self.mouth = CLOSED
        f = self.lipsync.features.latest()
        speech = f.loudness if (f is not None and self.speech_nods) else None
        p = self.idle.at(t, speech=speech)
        return dataclasses.replace(p, jaw_open=self.mouth.jaw_open,
                                   lip_width=self.mouth.lip_width, rounding=self.mouth.rounding)

    at = __call__

