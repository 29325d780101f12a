"""Run a stream at the model's (lower) resolution and give frames at the
head crop's resolution, keeping the guide's high-frequency detail.

The laptop model generates 128x128 frames; the app's head crop is 256x256
(or any size). Upsampling the model's frame would blur the portrait's own
hair, skin and eye detail that the guide already carries. Instead the
model's *correction* of the guide is upsampled and added to the full-size
guide:

    low_guide = down(guide)                      (B, 3, h, w), what the model saw
    out       = guide + up(model_frame - low_guide)   (B, 3, S, S)

so where the model keeps the guide (the correction is 0) the output is the
guide pixel for pixel, and where it changes it (the open mouth, the lids,
shading) the change arrives at the model's resolution. When the crop is the
model's size this is the model's frame itself.

``FullResStream`` is used by the app's generator stage
(kf_desktop/kf_generator.py) and by the evaluation (engine/evaluation), so
both measure and show the same thing.
"""

from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from engine.stream import KnotForcingStream


def resize(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, *hw); antialiased when shrinking, so the model
    sees the same low-pass image at inference as the dataset builder's
    area-style downscale gives it in training."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2]
    return F.interpolate(x, size=hw, mode="bilinear", antialias=shrink, align_corners=False)


class ComposingStream:
    """A stream fed full-size guides and giving full-size frames: each guide
    is turned into the model's input by ``_prepare`` (which also returns what
    ``_compose`` needs to rebuild the full-size frame), and the frames the
    stream returns are composed with the pending entries, oldest first.
    FullResStream (the whole crop, scaled) and engine/mouth_region.py's
    MouthRegionStream (the mouth region, pasted back) are the two kinds."""

    def __init__(self, stream) -> None:
        self.stream = stream
        # what _compose needs for every frame fed but not yet returned, oldest first
        self._pending: deque = deque()

    def _prepare(self, guide: torch.Tensor, *args):  # -> (pending entry, model input)
        raise NotImplementedError

    def _compose(self, out: torch.Tensor) -> torch.Tensor:  # pops one pending entry
        raise NotImplementedError

    def push(self, guide: torch.Tensor, *args) -> list[torch.Tensor]:
        """guide (B, 3, S, S) (and what the kind needs, e.g. landmarks) -> 0 or c frames (B, 3, S, S)."""
        entry, model_in = self._prepare(guide, *args)
        self._pending.append(entry)
        try:
            frames = self.stream.push(model_in)
        except Exception:
            self._pending.pop()
            raise
        return [self._compose(f) for f in frames]

    def flush(self) -> list[torch.Tensor]:
        out = self.stream.flush()
        frames = [] if out is None else [self._compose(out[:, i]) for i in range(out.shape[1])]
        self._pending.clear()
        return frames

    def reset(self) -> None:
        self.stream.reset()
        self._pending.clear()


class FullResStream(ComposingStream):
    """A KnotForcingStream fed and read at crop size S (any S >= the model's)."""

    def __init__(self, stream: KnotForcingStream) -> None:
        # pending entries: (full-size guide, its model-size version); the
        # downscale is done once per frame
        super().__init__(stream)
        self.model_hw = (stream.H * stream.codec.downsample, stream.W * stream.codec.downsample)

    def _down(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.stream.device, torch.float32)
        return resize(x, self.model_hw).clamp_(0.0, 1.0)

    def _compose(self, low: torch.Tensor) -> torch.Tensor:
        """low (B, 3, h, w) model frame -> (B, 3, S, S) with the oldest pending guide's detail."""
        guide, low_guide = self._pending.popleft()
        if tuple(guide.shape[-2:]) == self.model_hw:
            return low.float().clamp(0.0, 1.0)
        corr = low.float() - low_guide  # (B, 3, h, w)
        return (guide.to(low.device, torch.float32) + resize(corr, tuple(guide.shape[-2:]))).clamp_(0.0, 1.0)

    def set_reference(self, crop: torch.Tensor, *, switch: bool = False) -> None:
        """crop (B, 3, S, S) [0, 1]. switch=True on a running stream prefills
        the new reference without a stall (engine/stream.py)."""
        ref = self._down(crop)
        if switch and self.stream.has_reference:
            self.stream.begin_reference_switch(ref)
        else:
            self.stream.set_reference(ref)
            self._pending.clear()

    def _prepare(self, guide: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        low_guide = self._down(guide)
        return (guide, low_guide), low_guide
