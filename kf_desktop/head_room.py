"""Keep the retargeted head where the motion guide can still move it.

The motion guide's field is exactly 0 at the crop border and ramps up to full
motion over a band (engine/motion_guide.py: one coarse cell + fade_frac * S).
When the driver leans toward the camera, the portrait's head grows; once its
hair reaches that band, the warp squeezes it against a straight line parallel
to the crop edge (the "head cut flat" of issue 13). Moving far to one side does
the same to the ear and hair on that side.

``HeadRoom.fit`` soft-limits the head's size and position so that its hull (the
landmark box grown by the hair above, the ears and hair at the sides, less a
little below the chin: the neck may be squeezed, nobody sees that as a cut)
stays inside the crop less that band:

- fill: the hull's larger side over the free span. The portrait's own fill
  ``f0`` maps to itself; above it the fill follows the driver for the first
  ``KNEE`` part of the room and then eases (tanh) toward the limit, so growth slows
  down smoothly instead of stopping at a wall. The landmarks are scaled about
  the hull's centre to that fill.
- position: per axis the hull's centre is eased the same way toward the
  furthest centre that keeps the hull inside.

Identity where nothing comes near the band: the portrait's own landmarks come
back unchanged, and so does any pose within ``knee`` of the room.
numpy only; no state beyond the portrait's own figures (one per portrait).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["HeadRoom", "area_ratio", "band_mask", "hair_mask", "hull", "soft_cap", "squeeze_of"]

# Hull margins, in face extents (the larger side of the landmarks' box: the
# mesh spans forehead to chin). Measured on the default portrait: its hair
# rises 0.52 face above the mesh top and spreads 0.24 beyond the mesh sides.
HAIR_UP = 0.45
HAIR_SIDE = 0.2
CHIN_DOWN = -0.1  # the chin may enter the band by this much (neck squeeze only)
KNEE = 0.5  # the first half of the free room is passed through unchanged


def soft_cap(x: float, knee: float, limit: float) -> float:
    """x up to ``knee``, then easing to ``limit`` (C1: slope 1 at the knee)."""
    if x <= knee:
        return x
    span = limit - knee
    if span <= 1e-9:
        return min(x, limit)
    return knee + span * math.tanh((x - knee) / span)


def hull(lm: np.ndarray) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of the head: landmark box + hair and chin margins.
    lm: (478, 2+) crop px."""
    xy = np.asarray(lm, dtype=np.float64)[:, :2]
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    f = max(x1 - x0, y1 - y0)
    return (float(x0 - HAIR_SIDE * f), float(y0 - HAIR_UP * f),
            float(x1 + HAIR_SIDE * f), float(y1 + CHIN_DOWN * f))


class HeadRoom:
    """Soft limits for one portrait in an S x S crop.

    portrait_landmarks: (478, 2+) in crop px. size: S. margin: px from each
    edge where the guide's motion is attenuated (MotionGuide.full_motion_px).
    """

    def __init__(self, portrait_landmarks: np.ndarray, size: float, margin: float) -> None:
        lm = np.asarray(portrait_landmarks, dtype=np.float64)[:, :2]
        self.size = float(size)
        self.margin = float(margin)
        self.span = self.size - 2.0 * self.margin
        if self.span <= 0:
            raise ValueError(f"margin {margin} leaves no room in a {size} px crop")
        x0, y0, x1, y1 = hull(lm)
        self.fill0 = max(x1 - x0, y1 - y0) / self.span
        # A portrait whose own hull does not fit is never shrunk below itself.
        self.fill_limit = max(1.0, self.fill0)
        self.center0 = np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1)])
        # Where the portrait's own hull already pokes into the band (a very
        # wide face), that much is allowed, so its own pose is never moved.
        half0 = 0.5 * np.array([x1 - x0, y1 - y0])
        self.slack_lo = np.maximum(0.0, self.margin + half0 - self.center0)
        self.slack_hi = np.maximum(0.0, self.center0 - (self.size - self.margin - half0))

    def fit(self, lm: np.ndarray) -> np.ndarray:
        """(478, 2+) landmarks -> (478, 2) float64, scaled / shifted back into
        the room."""
        out = np.asarray(lm, dtype=np.float64)[:, :2]
        x0, y0, x1, y1 = hull(out)
        w, h = x1 - x0, y1 - y0
        centre = np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1)])
        fill = max(w, h) / self.span
        knee = self.fill0 + KNEE * (self.fill_limit - self.fill0)
        capped = soft_cap(fill, knee, self.fill_limit)
        k = capped / fill if fill > 0 else 1.0
        if k < 1.0:
            out = centre + k * (out - centre)
            w, h = k * w, k * h
        new_centre = centre.copy()
        for axis, half in ((0, 0.5 * w), (1, 0.5 * h)):
            # Centres that keep this hull out of the band.
            lo = self.margin + half - self.slack_lo[axis]
            hi = self.size - self.margin - half + self.slack_hi[axis]
            if lo > hi:
                lo = hi = 0.5 * (lo + hi)
            # Eased from the portrait's own centre, or from the nearest
            # allowed centre when a grown hull no longer fits around it.
            ref = min(max(float(self.center0[axis]), lo), hi)
            c = float(centre[axis])
            if c > ref:
                room = hi - ref
                new_centre[axis] = ref + soft_cap(c - ref, KNEE * room, room)
            else:
                room = ref - lo
                new_centre[axis] = ref - soft_cap(ref - c, KNEE * room, room)
        return out + (new_centre - centre)  # + 0.0 where nothing moved: bit-exact


def band_mask(size: int, margin: float) -> np.ndarray:
    """(S, S) bool: the pixels closer than ``margin`` to the crop edge."""
    yy, xx = np.mgrid[0:size, 0:size]
    edge = np.minimum.reduce([xx, yy, size - 1 - xx, size - 1 - yy])
    return edge < margin


def area_ratio(points: np.ndarray) -> np.ndarray:
    """(S, S, 2) sample positions (MotionGuide.sample_points) -> (S, S) portrait
    area drawn into each output pixel (Jacobian determinant): 1 = untouched,
    above 1 = squeezed (> 1.5 reads as a hard edge), below 1 = stretched."""
    q = np.asarray(points, dtype=np.float64)
    qx_y, qx_x = np.gradient(q[..., 0])
    qy_y, qy_x = np.gradient(q[..., 1])
    return qx_x * qy_y - qx_y * qy_x


def hair_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """(S, S) bool: the portrait's hair and head outline around the face, i.e.
    the ellipse inside its hull minus the landmarks' own box. This is what a
    lean-in squeezes against the crop edge; the face inside the box moves
    with the landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    x0, y0, x1, y1 = hull(lm)
    yy, xx = np.mgrid[0:size, 0:size]
    ellipse = (((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2
               + ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2) <= 1.0
    (fx0, fy0), (fx1, fy1) = lm.min(axis=0), lm.max(axis=0)
    face = (xx >= fx0) & (xx <= fx1) & (yy >= fy0) & (yy <= fy1)
    return ellipse & ~face


def squeeze_of(points: np.ndarray, source_mask: np.ndarray,
               where: np.ndarray | None = None) -> np.ndarray:
    """Area ratios (area_ratio) of the output pixels whose sample falls in
    ``source_mask`` (portrait pixels, e.g. hair_mask), optionally only those
    output pixels in ``where`` (e.g. band_mask): (K,) float."""
    s = source_mask.shape[0]
    q = np.asarray(points)
    qi = np.clip(np.rint(q), 0, s - 1).astype(int)
    pick = source_mask[qi[..., 1], qi[..., 0]]
    if where is not None:
        pick &= where
    return area_ratio(q)[pick]
