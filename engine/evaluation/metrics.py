"""Metrics (torch only). Images are float in [0, 1], (N, 3, H, W) or (3, H, W)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean PSNR (dB) over the batch; identical images give inf."""
    a, b = a.float(), b.float()
    if a.dim() == 3:
        a, b = a[None], b[None]
    mse = ((a - b) ** 2).flatten(1).mean(1)
    vals = torch.where(mse > 0, 10 * torch.log10(1.0 / mse.clamp_min(1e-20)), torch.full_like(mse, math.inf))
    return float(vals.mean())


def _gauss(size: int, sigma: float, device) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, Gaussian window, per channel, 'valid'
    region); the window shrinks for images smaller than it."""
    a, b = a.float(), b.float()
    if a.dim() == 3:
        a, b = a[None], b[None]
    c = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    if window % 2 == 0:
        window -= 1
    g = _gauss(window, sigma, a.device)
    k = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    f = lambda x: F.conv2d(x, k, groups=c)  # noqa: E731
    mu_a, mu_b = f(a), f(b)
    saa = f(a * a) - mu_a ** 2
    sbb = f(b * b) - mu_b ** 2
    sab = f(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(m.mean())


def seam_ratio(frames: torch.Tensor, chunk: int, offset: int = 0) -> float:
    """Mean |frame change| at chunk boundaries / mean inside chunks.
    frames (N, ...); boundary pairs are (i-1, i) with (i - offset) % chunk == 0.
    1.0 = seamless; NaN when there are no pairs of one kind (or chunk == 1)."""
    x = frames.float().flatten(1)
    d = (x[1:] - x[:-1]).abs().mean(1)  # (N-1,) change into frame i = 1..N-1
    i = torch.arange(1, x.shape[0], device=x.device)
    at = (i - offset) % chunk == 0
    if chunk <= 1 or at.sum() == 0 or (~at).sum() == 0:
        return math.nan
    inside = float(d[~at].mean())
    return float(d[at].mean()) / inside if inside > 0 else (1.0 if float(d[at].mean()) == 0 else math.inf)


def landmark_error(pred: torch.Tensor, drive: torch.Tensor, eyes: tuple[int, int] = (33, 263)) -> float:
    """Mean landmark distance normalised by the driving inter-ocular distance
    (outer eye corners of the 478-point mesh). pred, drive (N, P, 2); rows
    with NaN (no face found in the output) are skipped; NaN if none is left."""
    pred, drive = pred.float(), drive.float()
    ok = torch.isfinite(pred).flatten(1).all(1) & torch.isfinite(drive).flatten(1).all(1)
    if not ok.any():
        return math.nan
    pred, drive = pred[ok], drive[ok]
    iod = (drive[:, eyes[0]] - drive[:, eyes[1]]).norm(dim=-1).clamp_min(1e-6)  # (N,)
    return float(((pred - drive).norm(dim=-1).mean(1) / iod).mean())


def drift(values: torch.Tensor | list[float], fps: float, window_s: float = 60.0) -> float:
    """Mean of the last window minus the first (e.g. identity distance over a
    10-minute run, 1-minute windows). Runs shorter than 2 windows use quarters."""
    v = torch.as_tensor(values, dtype=torch.float64)
    v = v[torch.isfinite(v)]
    if len(v) < 2:
        return math.nan
    n = int(round(window_s * fps))
    if n <= 0 or 2 * n > len(v):
        n = max(1, len(v) // 4)
    return float(v[-n:].mean() - v[:n].mean())


def region_boxes(lms: torch.Tensor, idx: tuple[int, ...], size: int, pad: float = 1.35,
                 min_side: int = 8) -> list[tuple[int, int, int, int]]:
    """lms (N, 478, 2) crop px of the REAL frames -> per frame (x0, y0, x1, y1)
    integer box around landmarks ``idx``, padded by ``pad`` (the training
    loss's region), at least ``min_side`` px, clipped to the crop."""
    p = lms[:, list(idx), :2].float()  # (N, k, 2)
    lo, hi = p.amin(1), p.amax(1)
    c, half = (lo + hi) / 2, ((hi - lo) / 2 * pad).clamp_min(min_side / 2)
    out = []
    for (cx, cy), (hx, hy) in zip(c.tolist(), half.tolist()):
        x0, x1 = max(0, int(math.floor(cx - hx))), min(size, int(math.ceil(cx + hx)))
        y0, y1 = max(0, int(math.floor(cy - hy))), min(size, int(math.ceil(cy + hy)))
        out.append((x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)))
    return out


def region_psnr_ssim(a: torch.Tensor, b: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> tuple[float, float]:
    """Mean PSNR and SSIM inside per-frame boxes. a, b (N, 3, H, W) in [0, 1]."""
    ps, ss = [], []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        pa, pb = a[i, :, y0:y1, x0:x1], b[i, :, y0:y1, x0:x1]
        ps.append(psnr(pa, pb))
        ss.append(ssim(pa, pb))
    finite = [p for p in ps if math.isfinite(p)]
    return (float(sum(finite) / len(finite)) if finite else math.inf), float(sum(ss) / max(len(ss), 1))
