"""The per-frame work between a driving signal and an output frame.

Used two ways: synchronously by `kf-desktop render` (every frame, no drops),
and from the engine worker thread of the live ``Session``. Stages: retarget
(driving face -> portrait landmarks), motion guide (dense warp), generator,
paste-back (head crop into the full portrait, letterboxed to the output).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from engine.motion_guide import MotionGuide
from engine.paste_back import PasteBack
from kf_desktop.compute import engine_threads
from kf_desktop.frames import FaceResult
from kf_desktop.generators import Generator, GuideOnlyGenerator
from kf_desktop.portrait import Portrait
from kf_desktop.retarget import Gains, MotionParams, Retargeter
from kf_desktop.stats import RollingStats, Timer


@dataclass(frozen=True)
class DrivingSignal:
    """What the capture side hands the engine for one video frame.

    timestamp: capture time (time.monotonic()), carried to the sink for
        end-to-end latency.
    face: the webcam face, or None (no face, no camera, source lost).
    params: explicit motion (idle / audio-driven), used when ``face`` is None.
    """

    timestamp: float
    face: FaceResult | None = None
    params: MotionParams | None = None
    index: int = 0


@dataclass(frozen=True)
class RenderedFrame:
    image: np.ndarray  # (H_out, W_out, 3) uint8 RGB
    timestamp: float  # capture time of the driving frame it answers


class AvatarRenderer:
    """Owns the portrait-dependent state; not thread-safe: one thread calls
    ``step``; ``request_*`` methods may be called from any thread and take
    effect at the next step (a chunk boundary for the generator)."""

    def __init__(self, portrait: Portrait, *, out_size: tuple[int, int] = (1280, 720),
                 device: str = "cpu", gains: Gains | None = None,
                 generator: Generator | None = None, mirror: bool = False,
                 stats: RollingStats | None = None) -> None:
        self.out_size = out_size
        self.device = torch.device(device)
        self.stats = stats or RollingStats()
        self.generator: Generator = generator or GuideOnlyGenerator()
        self.mirror = mirror
        self._crop_size = portrait.crop.shape[0]
        self._guide = MotionGuide(crop_size=self._crop_size, device=str(self.device))
        self._retarget = Retargeter(portrait.crop_landmarks, gains or Gains(),
                                    crop_size=self._crop_size,
                                    still_margin=self._guide.full_motion_px)
        self._pending_ts: deque[float] = deque()
        self._lock = threading.Lock()
        self._next_portrait: Portrait | None = None
        self._next_gains: Gains | None = None
        self._reset_neutral = False
        self._install_portrait(portrait)

    # -- requests from other threads -------------------------------------
    def request_portrait(self, portrait: Portrait) -> None:
        with self._lock:
            self._next_portrait = portrait

    def request_gains(self, gains: Gains) -> None:
        with self._lock:
            self._next_gains = gains

    def request_reset_neutral(self) -> None:
        with self._lock:
            self._reset_neutral = True

    def configure_thread(self) -> None:
        """Call once from the thread that will run ``step``: torch's intra-op
        threads per kf_desktop.compute.engine_threads (one on a 2-core CPU).
        torch's setting may be process-wide; nothing else in the process
        needs more."""
        if self.device.type == "cpu":
            torch.set_num_threads(engine_threads(isinstance(self.generator, GuideOnlyGenerator)))

    @property
    def portrait(self) -> Portrait:
        return self._portrait

    # -- work ---------------------------------------------------------------
    def _install_portrait(self, portrait: Portrait) -> None:
        if portrait.crop.shape[0] != self._crop_size:
            raise ValueError("portrait crop size changed; build a new renderer")
        self._portrait = portrait
        crop_t = torch.from_numpy(portrait.crop).to(self.device)
        crop_t = crop_t.permute(2, 0, 1).float().div_(255.0)  # (S,S,3) u8 -> (3,S,S) [0,1]
        self._guide.set_portrait(portrait.crop, portrait.crop_landmarks[:, :2])
        self._paste = PasteBack(portrait.image, portrait.crop_box, self._crop_size,
                                self.out_size, device=str(self.device), mirror=self.mirror)
        self._retarget.set_portrait(portrait.crop_landmarks)
        self.generator.set_reference(crop_t, portrait.crop_landmarks[:, :2])

    def _apply_requests(self) -> None:
        with self._lock:
            portrait, self._next_portrait = self._next_portrait, None
            gains, self._next_gains = self._next_gains, None
            reset, self._reset_neutral = self._reset_neutral, False
        if portrait is not None:
            self._install_portrait(portrait)
        if gains is not None:
            self._retarget.set_gains(gains)
        if reset:
            self._retarget.reset_neutral()

    def driving_landmarks(self, signal: DrivingSignal) -> np.ndarray:
        """(478, 2) target landmarks in portrait-crop pixels."""
        if signal.face is None and signal.params is not None:
            return self._retarget.synthesize(signal.params, signal.timestamp)
        return self._retarget.update(signal.face, signal.timestamp)

    def step(self, signal: DrivingSignal) -> list[RenderedFrame]:
        """One driving signal in, zero or more finished frames out."""
        self._apply_requests()
        st = self.stats
        with Timer(st, "retarget"):
            driving = self.driving_landmarks(signal)
        with Timer(st, "guide"):
            guide = self._guide.render(driving)  # (3, S, S) in [0, 1]
        self._pending_ts.append(signal.timestamp)
        with Timer(st, "generator"):
            crops = self.generator.push(guide, driving)
        return self._compose(crops)

    def flush(self) -> list[RenderedFrame]:
        return self._compose(self.generator.flush())

    def _compose(self, crops: list[torch.Tensor]) -> list[RenderedFrame]:
        out = []
        for crop in crops:
            ts = self._pending_ts.popleft() if self._pending_ts else time.monotonic()
            with Timer(self.stats, "paste"):
                image = self._paste.compose(crop)
            out.append(RenderedFrame(image, ts))
        return out
