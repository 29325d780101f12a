"""The mouth region: where the mouth model works inside the head crop.

The mouth model (preset ``mouth``, docs/MOUTH_MODEL.md) does not see the
whole head crop. Every frame it gets the lower face cut out of the full-size
(256 px) guide around that frame's mouth, resampled to the model canvas
(64x96 for the shipped preset), and its output is pasted back into the
full-size guide through a feathered mask, so everything outside the region
is the guide pixel for pixel.

Geometry (all in head-crop pixels, pixel i spans [i, i + 1)):

    eye_d   distance of the outer eye corners (33, 263) of the *reference*:
            one scale per stream, so the region does not breathe when the
            user turns or opens the mouth
    centre  mean of the outer lip contour of the frame (the target's mouth)
    size    width = width_eyes * eye_d, height = width * h / w

The guide's inner mouth (the target's inner-lip polygon, feathered) is
blanked to flat grey before the model sees it (``blank_inner_mouth``): the
warp's "white strip over a dark hole" cannot be copied, and the grey area is
the model's lip-contour raster of the target (issue 17, item 4). Training
(engine/training/trainer.py) and the stream wrapper below use these same
functions, so the model sees at inference what it saw in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.detail import ComposingStream
from engine.motion_guide import INNER_LIP_LOWER, INNER_LIP_UPPER, LIPS_OUTER

EYE_CORNERS = (33, 263)
# inner-lip polygon, corner 78 -> upper lip -> corner 308 -> lower lip back
_INNER_POLY = INNER_LIP_UPPER + tuple(reversed(INNER_LIP_LOWER[1:-1]))
BLANK = 0.5  # the blanked inner mouth's value in [0, 1] image space (0 in codec space)
_MOUTH_W = (61, 291, 0, 17, 40, 270, 91, 321, 37, 267, 84, 314)  # lips, for the loss ellipse


@dataclass(frozen=True)
class RegionSpec:
    """Shape of the mouth region; ``hw`` is the model canvas (height, width)."""

    hw: tuple[int, int] = (64, 96)
    width_eyes: float = 1.35  # region width / outer-eye-corner distance
    down: float = 0.05  # centre offset below the lips' centre, in eye distances (keeps the chin)
    feather: float = 0.3  # paste mask: fraction of the half-size over which it fades to 0

    @classmethod
    def for_model(cls, height: int, width: int, **kw) -> "RegionSpec":
        return cls(hw=(int(height), int(width)), **kw)

    def to_record(self) -> dict:
        return {"hw": list(self.hw), "width_eyes": self.width_eyes, "down": self.down, "feather": self.feather}

    @classmethod
    def from_record(cls, training: dict | None) -> "RegionSpec | None":
        """The region a checkpoint was trained on (its training record's
        ``region``), or None for a whole-head model."""
        r = (training or {}).get("region")
        if not r:
            return None
        return cls(hw=(int(r["hw"][0]), int(r["hw"][1])), width_eyes=float(r["width_eyes"]),
                   down=float(r.get("down", 0.05)), feather=float(r.get("feather", 0.3)))


def eye_distance(lms: torch.Tensor) -> torch.Tensor:
    """lms (..., 478, 2) -> (...,) outer-eye-corner distance in px."""
    return (lms[..., EYE_CORNERS[0], :] - lms[..., EYE_CORNERS[1], :]).norm(dim=-1).clamp_min(1.0)


def region_box(lms: torch.Tensor, eye_d: torch.Tensor, spec: RegionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """lms (..., 478, 2), eye_d (...) -> centre (..., 2), half size (..., 2) in crop px."""
    c = lms[..., list(LIPS_OUTER), :].mean(-2)
    c = torch.stack((c[..., 0], c[..., 1] + spec.down * eye_d), -1)
    hw_ = spec.width_eyes * eye_d / 2
    hh = hw_ * spec.hw[0] / spec.hw[1]
    return c, torch.stack((hw_, hh), -1)


def _theta(centre: torch.Tensor, half: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, 2), (N, 2), crop (H, W) -> (N, 2, 3) affine_grid theta (region -> crop, normalised)."""
    hs, ws = size
    n = centre.shape[0]
    th = torch.zeros(n, 2, 3, device=centre.device, dtype=torch.float32)
    th[:, 0, 0] = half[:, 0] * 2 / ws
    th[:, 1, 1] = half[:, 1] * 2 / hs
    th[:, 0, 2] = centre[:, 0] * 2 / ws - 1
    th[:, 1, 2] = centre[:, 1] * 2 / hs - 1
    return th


def crop(images: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, spec: RegionSpec) -> torch.Tensor:
    """images (N, C, S, S) -> (N, C, h, w) region, bilinear (antialiased when
    the region is smaller than the canvas it is cut from)."""
    n, c = images.shape[:2]
    size = tuple(images.shape[-2:])
    h, w = spec.hw
    # sample at 2x and average when the region is smaller on the canvas than
    # in the crop (a plain bilinear sample would alias the hair and teeth)
    ss = 2 if float((2 * half[:, 0]).max()) > w * 1.25 else 1
    grid = F.affine_grid(_theta(centre.float(), half.float(), size), [n, c, h * ss, w * ss], align_corners=False)
    out = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.avg_pool2d(out, ss) if ss > 1 else out


def to_region(lms: torch.Tensor, centre: torch.Tensor, half: torch.Tensor, spec: RegionSpec) -> torch.Tensor:
    """lms (N, P, 2) crop px -> region canvas px."""
    h, w = spec.hw
    scale = torch.stack((w / (2 * half[:, 0]), h / (2 * half[:, 1])), -1)  # (N, 2)
    return (lms - (centre - half)[:, None]) * scale[:, None]


def _inside(poly: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """poly (N, V, 2) canvas px -> (N, h, w) bool, even-odd rule at pixel centres."""
    h, w = hw
    dev = poly.device
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    a, b = poly, poly.roll(-1, dims=1)  # edges a -> b, (N, V, 2)
    ay, by = a[..., 1][:, :, None, None], b[..., 1][:, :, None, None]  # (N, V, 1, 1)
    ax, bx = a[..., 0][:, :, None, None], b[..., 0][:, :, None, None]
    py, px = ys.view(1, 1, h, 1), xs.view(1, 1, 1, w)
    crosses = (ay > py) != (by > py)  # (N, V, h, 1)
    xint = ax + (py - ay) * (bx - ax) / torch.where(by == ay, torch.ones_like(by), by - ay)
    hit = crosses & (px < xint)  # (N, V, h, w)
    return hit.sum(1) % 2 == 1


def inner_mouth_mask(lms_region: torch.Tensor, spec: RegionSpec, feather: int = 2) -> torch.Tensor:
    """lms_region (N, 478, 2) canvas px -> (N, 1, h, w) soft inner-mouth mask
    in [0, 1] (the inner-lip polygon, edges feathered over ~``feather`` px)."""
    m = _inside(lms_region[:, list(_INNER_POLY)], spec.hw).float()[:, None]
    for _ in range(feather):
        m = F.avg_pool2d(m, 3, stride=1, padding=1, count_include_pad=False)
    return m


def blank_inner_mouth(guide: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """guide (N, 3, h, w) [0, 1], mask (N, 1, h, w) -> the guide with its inner mouth flat grey."""
    return guide * (1 - mask) + BLANK * mask


def mouth_weight(lms_region: torch.Tensor, spec: RegionSpec, pad: float = 1.3) -> torch.Tensor:
    """lms_region (N, 478, 2) -> (N, 1, h, w) in [0, 1]: a soft ellipse over the lips and inner mouth."""
    h, w = spec.hw
    dev = lms_region.device
    p = lms_region[:, list(_MOUTH_W)]
    lo, hi = p.amin(1), p.amax(1)
    c = (lo + hi) / 2
    r = ((hi - lo) / 2 * pad).clamp_min(2.0)  # (N, 2)
    ys = torch.arange(h, device=dev, dtype=torch.float32) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32) + 0.5
    dx = (xs.view(1, 1, w) - c[:, 0, None, None]) / r[:, 0, None, None]
    dy = (ys.view(1, h, 1) - c[:, 1, None, None]) / r[:, 1, None, None]
    return torch.clamp(1.5 - (dx * dx + dy * dy), 0, 1)[:, None]


def paste_mask(spec: RegionSpec, device: torch.device | str = "cpu") -> torch.Tensor:
    """(1, 1, h, w): 1 in the middle, fading to 0 at the region's border
    (a rounded rectangle, smoothstep over ``spec.feather`` of the half size)."""
    h, w = spec.hw
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1
    r = (ys.view(h, 1) ** 4 + xs.view(1, w) ** 4) ** 0.25  # (h, w), 1 at the edge midpoints
    t = ((1 - r) / spec.feather).clamp(0, 1)
    return (t * t * (3 - 2 * t))[None, None]


def paste(full: torch.Tensor, region: torch.Tensor, centre: torch.Tensor, half: torch.Tensor,
          spec: RegionSpec, mask: torch.Tensor | None = None) -> torch.Tensor:
    """full (N, 3, S, S), region (N, 3, h, w) -> full with the region pasted
    through the feathered mask (resampled back to crop pixels)."""
    n, _, hs, ws = full.shape
    dev = full.device
    m = paste_mask(spec, dev) if mask is None else mask
    # inverse map: crop pixel -> region normalised coordinates
    ys = (torch.arange(hs, device=dev, dtype=torch.float32) + 0.5)
    xs = (torch.arange(ws, device=dev, dtype=torch.float32) + 0.5)
    c, hf = centre.float().to(dev), half.float().to(dev)
    gx = (xs.view(1, 1, ws) - c[:, 0, None, None]) / hf[:, 0, None, None]  # (N, 1, S)
    gy = (ys.view(1, hs, 1) - c[:, 1, None, None]) / hf[:, 1, None, None]  # (N, S, 1)
    grid = torch.stack((gx.expand(n, hs, ws), gy.expand(n, hs, ws)), -1)  # (N, S, S, 2)
    both = torch.cat((region.float(), m.expand(n, -1, -1, -1)), 1)
    back = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    a = back[:, 3:4]
    return full.float() * (1 - a) + back[:, :3] * a


def region_inputs(guide: torch.Tensor, lms: torch.Tensor, eye_d: torch.Tensor, spec: RegionSpec
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Full-size guides (N, 3, S, S) and their target landmarks (N, 478, 2)
    -> (model guide (N, 3, h, w) with the inner mouth blanked, centre, half,
    inner-mouth mask (N, 1, h, w))."""
    centre, half = region_box(lms, eye_d, spec)
    g = crop(guide, centre, half, spec)
    m = inner_mouth_mask(to_region(lms, centre, half, spec), spec)
    return blank_inner_mouth(g, m), centre, half, m


class MouthRegionStream(ComposingStream):
    """A stream on the mouth region, fed full-size guides with their target
    landmarks and giving full-size frames: the model's region pasted into
    the guide it was made from (the same interface as engine/detail.py's
    FullResStream, plus landmarks).

    ``stream``: a KnotForcingStream or the app's one-slot EngineStream
    (anything with set_reference / begin_reference_switch / push / flush /
    reset) whose model works at the region's canvas size.
    """

    def __init__(self, stream, spec: RegionSpec | None = None) -> None:
        super().__init__(stream)
        cfg = stream.model.cfg
        self.spec = spec or RegionSpec.for_model(cfg.height, cfg.width)
        if tuple(self.spec.hw) != (cfg.height, cfg.width):
            raise ValueError(f"region {self.spec.hw} does not match the model's {cfg.height}x{cfg.width}")
        self.eye_d: torch.Tensor | None = None
        # pending entries: (full-size guide, region centre, half size)
        self._mask: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:
        return self.stream.device

    def _lms(self, landmarks, n: int) -> torch.Tensor:
        lms = torch.as_tensor(landmarks, dtype=torch.float32, device=self.device)
        return lms[..., :2].reshape(n, -1, 2)

    def set_reference(self, crop_img: torch.Tensor, landmarks, *, switch: bool = False) -> None:
        """crop_img (B, 3, S, S) [0, 1], landmarks (B, 478, 2+) its crop-pixel landmarks.
        switch=True on a running stream prefills the new reference without a stall."""
        portrait = crop_img.to(self.device, torch.float32)
        lms = self._lms(landmarks, portrait.shape[0])
        self.eye_d = eye_distance(lms)  # the region's scale follows the new portrait at once
        centre, half = region_box(lms, self.eye_d, self.spec)
        ref = crop(portrait, centre, half, self.spec).clamp_(0, 1)
        if switch and getattr(self.stream, "has_reference", False):
            self.stream.begin_reference_switch(ref)
        else:
            self.stream.set_reference(ref)
            self._pending.clear()

    def _compose(self, region: torch.Tensor) -> torch.Tensor:
        full, c, h = self._pending.popleft()
        if self._mask is None:
            self._mask = paste_mask(self.spec, self.device)
        return paste(full, region.float(), c, h, self.spec, self._mask).clamp_(0, 1)

    def _prepare(self, guide: torch.Tensor, landmarks) -> tuple[tuple, torch.Tensor]:
        """guide (B, 3, S, S) [0, 1], landmarks (B, 478, 2+) the frame's target."""
        if self.eye_d is None:
            raise RuntimeError("set_reference first")
        guide = guide.to(self.device, torch.float32)
        g, centre, half, _ = region_inputs(guide, self._lms(landmarks, guide.shape[0]), self.eye_d, self.spec)
        return (guide, centre, half), g.clamp_(0, 1)
