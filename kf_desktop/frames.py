"""Plain data passed between the capture, engine and output threads."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Frame:
    """One captured video frame.

    image: (H, W, 3) uint8 RGB, C-contiguous.
    timestamp: time.monotonic() seconds when the frame was captured (for a
        file source: when it was handed out), used for end-to-end latency.
    index: frame number within its source, starting at 0.
    """

    image: np.ndarray
    timestamp: float
    index: int


@dataclass(frozen=True)
class FaceResult:
    """Face mesh result for one image.

    landmarks: (478, 3) float32; x, y in pixels of the analysed image, z in
        the same pixel scale (mediapipe z multiplied by the image width).
    yaw, pitch, roll: head pose in degrees (yaw > 0: face turns to the image's
        right; pitch > 0: looks up; roll > 0: head tilts clockwise in image).
    eye_open: (left, right) eyelid gap / eye width, ~0.25-0.35 open, <0.1 shut.
        "left" is the subject's left eye (image right).
    mouth_open: inner-lip gap / mouth width, ~0 closed, >0.3 wide open.
    """

    landmarks: np.ndarray
    yaw: float
    pitch: float
    roll: float
    eye_open: tuple[float, float]
    mouth_open: float


@dataclass
class StageTimes:
    """Per-frame stage durations in milliseconds, filled as the frame flows."""

    values: dict[str, float] = field(default_factory=dict)
