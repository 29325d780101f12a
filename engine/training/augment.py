"""Augmentations that stop the model memorising the few training identities.

All of them act on a whole sample at once (reference, context, chunk), so
the sample stays a consistent self-reenactment:

- ``scale_jitter``: one random zoom/shift per sample on images AND landmarks
  (before the guides are computed): crop jitter / scale.
- ``color_jitter``: brightness, contrast, saturation, a hue-ish channel mix
  and gamma, one draw per sample.
- flips: horizontal, applied AFTER the guides are computed, to every image
  (reference, guides, knot, targets) and to the loss weight map. The model
  never sees landmarks, so no landmark index permutation is needed (the
  478-point mirror permutation could not be derived reliably from detections:
  nearest-neighbour matching of a frame and its flip confuses dense
  mouth-corner points).
- ``synthetic_motion``: a still (one frame) becomes a short clip under a
  smooth random rigid motion (rotation, zoom, translation); landmarks move
  with it, so the guide of each frame is the reference warped to a moved
  face: "still portraits used with synthetic motion".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _theta(scale: torch.Tensor, rot: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    """Forward map M (N, 2, 3) in normalised coords (out = M @ [in; 1])."""
    c, s = torch.cos(rot) * scale, torch.sin(rot) * scale
    return torch.stack([torch.stack([c, -s, tx], -1), torch.stack([s, c, ty], -1)], -2)


def apply_affine(images: torch.Tensor, lms: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """images (N, 3, S, S), lms (N, P, 2) crop px, m (N, 2, 3) forward map in
    normalised coords -> moved images and landmarks."""
    n, _, s, _ = images.shape
    a, t = m[:, :, :2], m[:, :, 2:]
    ainv = torch.linalg.inv(a)
    theta = torch.cat([ainv, -ainv @ t], 2)  # output -> input sampling
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    u = lms * (2.0 / s) - 1.0  # (N, P, 2) normalised (pixel i spans [i, i+1))
    u = u @ a.transpose(1, 2) + t.transpose(1, 2)
    return out, (u + 1.0) * (s / 2.0)


def scale_jitter(images: torch.Tensor, lms: torch.Tensor, gen: torch.Generator, amount: float = 0.08
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """images (B, N, 3, S, S), lms (B, N, P, 2): one zoom+shift per sample."""
    b, n = images.shape[:2]
    dev = images.device
    r = torch.rand(b, 3, generator=gen, device=dev) * 2 - 1
    scale = 1.0 + amount * r[:, 0]
    tx, ty = amount * r[:, 1], amount * r[:, 2]
    m = _theta(scale, torch.zeros_like(scale), tx, ty)  # (B, 2, 3)
    m = m[:, None].expand(b, n, 2, 3).reshape(b * n, 2, 3)
    im, lm = apply_affine(images.flatten(0, 1), lms.flatten(0, 1), m)
    return im.view_as(images), lm.view_as(lms)


def color_jitter(images: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """images (B, N, 3, H, W) in [0, 1]; one draw per sample b."""
    b = images.shape[0]
    dev = images.device
    r = torch.rand(b, 6, generator=gen, device=dev) * 2 - 1
    shape = (b, 1, 1, 1, 1)
    x = images
    x = x * (1 + 0.25 * strength * r[:, 0]).view(shape)  # brightness
    mean = x.mean(dim=(1, 2, 3, 4), keepdim=True)
    x = (x - mean) * (1 + 0.25 * strength * r[:, 1]).view(shape) + mean  # contrast
    grey = (0.299 * x[:, :, 0:1] + 0.587 * x[:, :, 1:2] + 0.114 * x[:, :, 2:3])
    x = grey + (x - grey) * (1 + 0.4 * strength * r[:, 2]).view(shape)  # saturation
    gains = 1 + 0.08 * strength * torch.stack([r[:, 3], r[:, 4], -r[:, 3] - r[:, 4]], 1)  # white balance
    x = x * gains.view(b, 1, 3, 1, 1)
    x = x.clamp(0, 1) ** (1 + 0.2 * strength * r[:, 5]).view(shape)  # gamma
    return x.clamp(0, 1)


def synthetic_motion(still: torch.Tensor, lms: torch.Tensor, n: int, gen: torch.Generator,
                     amount: float = 0.06) -> tuple[torch.Tensor, torch.Tensor]:
    """still (3, S, S), lms (P, 2) -> (n, 3, S, S), (n, P, 2) under a smooth
    random rigid motion (rotation up to ~8 deg, zoom, shift)."""
    dev = still.device
    r = torch.rand(2, 4, generator=gen, device=dev) * 2 - 1  # start, end
    t = torch.linspace(0, 1, n, device=dev)[:, None]
    wob = torch.sin(t * math.pi) * (torch.rand(1, 4, generator=gen, device=dev) * 2 - 1)
    p = r[0] * (1 - t) + r[1] * t + 0.5 * wob  # (n, 4)
    m = _theta(1 + amount * p[:, 0], 0.14 * p[:, 1], amount * p[:, 2], amount * p[:, 3])
    return apply_affine(still[None].expand(n, -1, -1, -1), lms[None].expand(n, -1, -1), m)


# Landmark groups for the loss weight map (mediapipe mesh indices).
RIGHT_EYE = (33, 133, 159, 145, 158, 153, 160, 144, 246, 7, 163, 161, 157, 154, 155, 173, 70, 105, 107)
LEFT_EYE = (263, 362, 386, 374, 385, 380, 387, 373, 466, 249, 390, 388, 384, 381, 382, 398, 300, 334, 336)
MOUTH = (61, 291, 0, 17, 13, 14, 37, 267, 84, 314, 40, 270, 91, 321, 78, 308, 82, 87, 312, 317, 181, 405)


def region_weights(lms: torch.Tensor, size: int, extra: float = 2.0, pad: float = 1.35) -> torch.Tensor:
    """lms (..., 478, 2) crop px -> weight map (..., 1, S, S): 1 + extra inside
    soft ellipses around the eyes (with brows) and the mouth."""
    dev = lms.device
    ys = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    xs = ys
    w = torch.zeros(*lms.shape[:-2], size, size, device=dev)
    for idx in (RIGHT_EYE, LEFT_EYE, MOUTH):
        p = lms[..., list(idx), :]  # (..., k, 2)
        lo, hi = p.amin(-2), p.amax(-2)
        c = (lo + hi) / 2
        r = ((hi - lo) / 2 * pad).clamp_min(size / 64)  # (..., 2)
        dx = (xs.view(*([1] * (lms.dim() - 2)), 1, size) - c[..., 0, None, None]) / r[..., 0, None, None]
        dy = (ys.view(*([1] * (lms.dim() - 2)), size, 1) - c[..., 1, None, None]) / r[..., 1, None, None]
        d2 = dx * dx + dy * dy
        w = torch.maximum(w, torch.clamp(1.5 - d2, 0, 1))  # soft edge
    return (1 + extra * w).unsqueeze(-3)
