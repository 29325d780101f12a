"""Controls for the mouth (issue 17, item 1): how much room there is, and
what a model must beat that a few numbers can do.

- ``ceiling``: the guide with the REAL inner mouth pasted in through the
  target's feathered inner-lip mask: what a perfect mouth could gain over
  guide-only (only defined where the real frame exists: self-reenactment).
- ``interior``: the guide with a non-learned interior in the same mask: a
  teeth band under the upper lip and a cavity colour below it, both mean
  colours fitted on the training frames (``fit_interior``), the band's
  depth as a fitted share of the opening.

Openness bins (inner-lip gap / outer-eye-corner distance of the real frame,
engine/training/data.py ``mouth_openness``): the registry + shared clips'
median is 0.06, a quarter of frames are above 0.11.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.mouth_region import RegionSpec, inner_mouth_mask

BINS = (("closed", 0.0, 0.03), ("slight", 0.03, 0.10), ("open", 0.10, 0.20), ("wide", 0.20, 9.0))
OPEN = 0.10  # "open-mouth" frames: openness above this


def bin_of(openness: float) -> str:
    for name, lo, hi in BINS:
        if lo <= openness < hi:
            return name
    return BINS[-1][0]


def full_mask(lms: torch.Tensor, size: int, feather: int = 3) -> torch.Tensor:
    """lms (N, 478, 2) crop px -> (N, 1, S, S) feathered inner-mouth mask at
    crop resolution (32 frames at a time: the polygon test holds N x V x S x S
    booleans)."""
    spec = RegionSpec(hw=(size, size))
    return torch.cat([inner_mouth_mask(lms[a:a + 32].float(), spec, feather=feather)
                      for a in range(0, len(lms), 32)])


def _depth(mask: torch.Tensor) -> torch.Tensor:
    """mask (N, 1, H, W) -> (N, 1, H, W) relative depth in [0, 1] from the
    top of the opening (0, the upper lip) to its bottom (1), per column."""
    hard = mask > 0.5
    h = mask.shape[-2]
    ys = torch.arange(h, device=mask.device, dtype=torch.float32).view(1, 1, h, 1)
    big = torch.full_like(mask, 1e9)
    top = torch.where(hard, ys.expand_as(mask), big).amin(-2, keepdim=True)
    bot = torch.where(hard, ys.expand_as(mask), -big).amax(-2, keepdim=True)
    return ((ys - top) / (bot - top + 1).clamp_min(1)).clamp(0, 1)


@dataclass
class Interior:
    teeth: tuple[float, float, float]
    cavity: tuple[float, float, float]
    band: float  # teeth band depth, share of the opening

    def to_dict(self) -> dict:
        return {"teeth": list(self.teeth), "cavity": list(self.cavity), "band": self.band}


def fit_interior(clips, every: int = 5, band_grid=(0.2, 0.3, 0.4, 0.5)) -> Interior:
    """Mean teeth-band and cavity colours inside the inner mouth of the
    training frames with an open mouth; the band depth that fits best."""
    from engine.training.data import mouth_openness

    imgs, masks = [], []
    for c in clips:
        if c.n_train == 0:
            continue
        op = mouth_openness(c.landmarks[:c.n_train])
        idx = np.flatnonzero(op > OPEN)[::every]
        if len(idx) == 0:
            continue
        im = torch.from_numpy(c.frames[idx]).permute(0, 3, 1, 2).float() / 255
        imgs.append(im)
        masks.append(full_mask(torch.from_numpy(c.landmarks[idx]), im.shape[-1], feather=0))
    if not imgs:
        return Interior((0.8, 0.78, 0.72), (0.2, 0.06, 0.06), 0.3)
    im, m = torch.cat(imgs), torch.cat(masks)
    d = _depth(m)
    best = None
    for band in band_grid:
        up = (m > 0.5) & (d < band)
        lo = (m > 0.5) & (d >= band)
        t = (im * up).sum((0, 2, 3)) / up.sum().clamp_min(1)
        c = (im * lo).sum((0, 2, 3)) / lo.sum().clamp_min(1)
        pred = torch.where(d < band, t.view(1, 3, 1, 1), c.view(1, 3, 1, 1))
        err = (((pred - im) ** 2) * (m > 0.5)).sum() / (m > 0.5).sum().clamp_min(1)
        if best is None or err < best[0]:
            best = (float(err), band, t, c)
    _, band, t, c = best
    return Interior(tuple(float(x) for x in t), tuple(float(x) for x in c), float(band))


def ceiling(guides: torch.Tensor, real: torch.Tensor, lms: torch.Tensor) -> torch.Tensor:
    """guides, real (N, 3, S, S), lms (N, 478, 2) of the real frames -> the
    guide with the real inner mouth through the feathered mask."""
    m = full_mask(lms, guides.shape[-1])
    return guides * (1 - m) + real * m


def with_interior(guides: torch.Tensor, lms: torch.Tensor, fit: Interior) -> torch.Tensor:
    """The guide with the fitted non-learned interior in the same mask."""
    m = full_mask(lms, guides.shape[-1])
    d = _depth(m)
    t = torch.tensor(fit.teeth, dtype=guides.dtype).view(1, 3, 1, 1)
    c = torch.tensor(fit.cavity, dtype=guides.dtype).view(1, 3, 1, 1)
    fill = torch.where(d < fit.band, t, c)
    return guides * (1 - m) + fill * m
