"""Paste the generated head crop back into the portrait and letterbox it.

Everything that depends only on the portrait, the crop box and the output size
is computed once in PasteBack.__init__: the letterboxed portrait (the output
frame without the head), the sampling grid that maps output pixels inside the
crop's region to crop coordinates, and the feathered blend mask. compose() is
then one grid_sample of the crop, one blend over the crop's region and a copy.

Coordinate conventions (shared with the crop cutter in kf_desktop/portrait.py
and the engine tests): pixel i of an image covers [i, i + 1). A CropBox
(x0, y0, size) covers [x0, x0 + size)^2 of the portrait, so crop pixel c
covers [x0 + c * size / S, x0 + (c + 1) * size / S). The letterbox maps the
portrait onto [ox, ox + W * sx) x [oy, oy + H * sy) of the output.

Only torch / numpy / stdlib: engine/ must not import cv2 or kf_desktop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CropBox", "Letterbox", "PasteBack", "letterbox", "letterbox_geometry"]


@dataclass(frozen=True)
class CropBox:
    """Square head crop in full-portrait pixels; may extend past the image."""

    x0: float
    y0: float
    size: float


@dataclass(frozen=True)
class Letterbox:
    """Where an (in_w x in_h) image lands in an (out_w x out_h) frame.

    The image is resized to (w, h) (aspect preserved, rounded to whole pixels)
    and placed at (ox, oy); sx = w / in_w and sy = h / in_h are the exact
    scales of that resize (they differ from each other by rounding only).
    """

    w: int
    h: int
    ox: int
    oy: int
    sx: float
    sy: float


def letterbox_geometry(in_size: tuple[int, int], out_size: tuple[int, int]
                       ) -> Letterbox:
    """in_size, out_size: (width, height)."""
    in_w, in_h = in_size
    out_w, out_h = out_size
    if min(in_w, in_h, out_w, out_h) <= 0:
        raise ValueError(f"empty size: in {in_size}, out {out_size}")
    scale = min(out_w / in_w, out_h / in_h)
    w = min(out_w, max(1, round(in_w * scale)))
    h = min(out_h, max(1, round(in_h * scale)))
    return Letterbox(w, h, (out_w - w) // 2, (out_h - h) // 2, w / in_w, h / in_h)


def _resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) float -> (B, C, h, w), size = (h, w). Antialiased when it
    shrinks (plain bilinear would alias fine texture such as hair)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    down = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    return F.interpolate(img, size=size, mode="bilinear", align_corners=False,
                         antialias=down)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 255] -> (H, W, 3) uint8 ndarray (C-contiguous)."""
    out = img.clamp(0.0, 255.0).round_().to(torch.uint8)
    return np.ascontiguousarray(out.permute(1, 2, 0).cpu().numpy())


def letterbox(image: np.ndarray, out_size: tuple[int, int], *,
              device: str | torch.device = "cpu") -> np.ndarray:
    """Fit a whole (H, W, 3) uint8 frame into out_size = (W_out, H_out),
    aspect ratio preserved, black bars. Returns a new (H_out, W_out, 3) uint8."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"need (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h_in, w_in = image.shape[:2]
    out_w, out_h = out_size
    g = letterbox_geometry((w_in, h_in), out_size)
    # Copy when the caller's array is read-only (torch would warn and could
    # not promise not to write into it).
    arr = image if image.flags.writeable else image.copy()
    t = torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    t = t.permute(2, 0, 1)[None].float()  # (1, 3, H, W) in [0, 255]
    t = _resize(t, (g.h, g.w))[0]  # (3, h, w)
    out = np.zeros((out_h, out_w, 3), np.uint8)
    out[g.oy:g.oy + g.h, g.ox:g.ox + g.w] = _to_uint8(t)
    return out


def _ramp(d: torch.Tensor, feather: float) -> torch.Tensor:
    """Smoothstep from 0 at d <= 0 to 1 at d >= feather."""
    x = (d / max(feather, 1e-6)).clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


class PasteBack:
    """Blend generated head crops into a fixed, letterboxed portrait.

    portrait: (H, W, 3) uint8 RGB; crop_box: where the crop was cut, portrait
    pixels; crop_size: S of the (3, S, S) crops; out_size: (W_out, H_out);
    mirror: flip the output horizontally (selfie view).
    """

    def __init__(self, portrait: np.ndarray, crop_box: CropBox, crop_size: int,
                 out_size: tuple[int, int], device: str | torch.device = "cpu",
                 mirror: bool = False, feather: float = 0.06) -> None:
        if portrait.ndim != 3 or portrait.shape[2] != 3 or portrait.dtype != np.uint8:
            raise ValueError(f"need (H, W, 3) uint8, got {portrait.shape} "
                             f"{portrait.dtype}")
        if crop_box.size <= 0 or crop_size <= 0:
            raise ValueError(f"empty crop: {crop_box}, crop_size {crop_size}")
        self.crop_box = crop_box
        self.crop_size = s = int(crop_size)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        self.device = torch.device(device)
        self.mirror = bool(mirror)
        out_w, out_h = self.out_size
        h_in, w_in = portrait.shape[:2]
        g = self.geometry = letterbox_geometry((w_in, h_in), self.out_size)

        base = letterbox(portrait, self.out_size)  # (H_out, W_out, 3) uint8
        if self.mirror:
            base = np.ascontiguousarray(base[:, ::-1])
        self._base = base
        self._base.flags.writeable = False  # compose() must never touch it

        # The crop's square in output pixels (continuous coordinates),
        # clipped to the letterboxed portrait: outside the photo the crop
        # holds only edge-replicated padding, which must not cover the bars.
        bx0 = g.ox + crop_box.x0 * g.sx
        by0 = g.oy + crop_box.y0 * g.sy
        bw, bh = crop_box.size * g.sx, crop_box.size * g.sy
        u0 = max(int(np.floor(bx0)), g.ox)
        v0 = max(int(np.floor(by0)), g.oy)
        u1 = min(int(np.ceil(bx0 + bw)), g.ox + g.w)
        v1 = min(int(np.ceil(by0 + bh)), g.oy + g.h)
        self._empty = u1 <= u0 or v1 <= v0
        if self._empty:
            return

        # When the crop shrinks in the output, pre-shrink it once per compose
        # with an antialiased resize to about the output size, then map
        # sub-pixel exactly with grid_sample (interpolate alone cannot place
        # a non-integer offset). Upscaling needs no prefilter.
        rw, rh = min(s, max(1, round(bw))), min(s, max(1, round(bh)))
        self._pre = (rh, rw) if (rw < s or rh < s) else None
        sw, sh = (rw, rh) if self._pre else (s, s)  # size of what grid_sample sees

        # Output pixel centre u + 0.5 lies at crop-continuous position
        # (u + 0.5 - bx0) / bw * sw; grid_sample(align_corners=False) wants
        # that as 2 * pos / sw - 1.
        u = torch.arange(u0, u1, dtype=torch.float64) + 0.5  # (w_roi,)
        v = torch.arange(v0, v1, dtype=torch.float64) + 0.5  # (h_roi,)
        gx = 2.0 * (u - bx0) / bw - 1.0
        gy = 2.0 * (v - by0) / bh - 1.0
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), -1)
        # Feathered mask: 1 inside, smooth to 0 at the crop border, measured
        # in crop pixels so it matches the motion guide's still border.
        fpx = feather * s
        dx = torch.minimum(gx + 1.0, 1.0 - gx) * (s / 2.0)  # (w_roi,) crop px
        dy = torch.minimum(gy + 1.0, 1.0 - gy) * (s / 2.0)  # (h_roi,)
        mask = _ramp(dy, fpx)[:, None] * _ramp(dx, fpx)[None, :]  # (h_roi, w_roi)
        roi_base = base[v0:v1, u0:u1] if not self.mirror else None
        if self.mirror:
            # Mirror the ROI horizontally: output column u -> out_w - 1 - u.
            grid = grid.flip(1)
            mask = mask.flip(1)
            u0, u1 = out_w - u1, out_w - u0
            roi_base = base[v0:v1, u0:u1]
        self._roi = (v0, v1, u0, u1)
        f32 = dict(device=self.device, dtype=torch.float32)
        self._grid = grid[None].to(**f32)  # (1, h_roi, w_roi, 2)
        self._mask = mask.to(**f32)[None]  # (1, h_roi, w_roi)
        # Own copy: the base is read-only and torch wants writable memory.
        self._roi_base = torch.from_numpy(np.array(roi_base)).to(
            self.device).permute(2, 0, 1).float()  # (3, h_roi, w_roi) in [0, 255]

    @property
    def base(self) -> np.ndarray:
        """The letterboxed portrait without any crop, (H_out, W_out, 3) uint8
        (read-only; mirrored when mirror=True)."""
        return self._base

    @property
    def roi(self) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the region compose() writes, output pixels."""
        return (0, 0, 0, 0) if self._empty else self._roi

    @torch.inference_mode()
    def compose(self, crop: torch.Tensor) -> np.ndarray:
        """crop: (3, S, S) float in [0, 1] -> new (H_out, W_out, 3) uint8 frame."""
        s = self.crop_size
        if tuple(crop.shape) != (3, s, s):
            raise ValueError(f"need (3, {s}, {s}) crop, got {tuple(crop.shape)}")
        out = self._base.copy()  # ~0.3 ms at 1280x720; the base stays pristine
        if self._empty:
            return out
        c = crop.to(self.device, torch.float32)[None]  # (1, 3, S, S)
        if self._pre is not None:
            c = _resize(c, self._pre)  # (1, 3, rh, rw) antialiased shrink
        patch = F.grid_sample(c, self._grid, mode="bilinear", padding_mode="border",
                              align_corners=False)[0]  # (3, h_roi, w_roi) in [0, 1]
        blended = torch.lerp(self._roi_base, patch.mul_(255.0), self._mask)
        v0, v1, u0, u1 = self._roi
        out[v0:v1, u0:u1] = _to_uint8(blended)
        return out
