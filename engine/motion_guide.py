"""Motion guide: a dense backward warp of the portrait's head crop.

The portrait's square head crop (S x S) is warped so that its face landmarks
(mediapipe 478-point mesh, crop pixels) land where the driving landmarks are.
The same code serves training batches on GPU and single frames on CPU.

How (measured choices; numbers from the default portrait driven by the
landmark motion of two real talking-head clips plus synthetic blinks, mouth
opening, yaw and roll; errors are |q(dst) - src| of the dense field at the
landmarks, in px at S = 256):
- Backward warp: every output pixel p samples the portrait at q(p). The
  displacement src - dst is known at the driving points dst and interpolated
  with a thin-plate spline (TPS, tiny ridge `lam` so that coinciding driving
  points stay solvable). TPS: jaw 0.17 / lips 0.25 / eyes 0.16 px mean, folds
  (Jacobian <= 0) on 0.003 % of pixels. Normalised Gaussian RBF, sigma 4 px:
  lips 0.43 px but 0.8 % folded pixels (3 % worst case) as each point only
  pulls its neighbourhood; sigma 16 px: no better folds, jaw 1.8 px.
  Inverse-distance weighting (p=2): jaw 1.6 px (flat spots around each
  point). Same cost class: all three fill one grid x M table with one
  transcendental per entry; TPS adds a ~150x150 solve (~0.4 ms).
- The spline is evaluated on a coarse grid (default 48 x 48) and upsampled
  bilinearly; grid 64 cuts the mean lip error from 0.25 to 0.21 px for 1.8x
  the evaluation cost, grid 32 raises it to 0.36 px.
- Control points: 115 landmarks (every lid and inner-lip point, every other
  jaw / outer-lip / brow / nose point) + 10 lid-brow midpoints (see
  _LID_BROW) + 24 fixed anchors on the crop border.
- Motion is multiplied by a window that is exactly 0 within one coarse cell
  of the crop edge, so the paste-back seam never moves.
- Blinks / closing mouths: lid and inner-lip pairs are held min_gap px apart
  (see _keep_open) so the closed lid renders as a thin lash line.
- Mouth interior: where the driving inner-lip gap is wider than the
  portrait's, the warp would only stretch lip skin into the gap, so the
  driving inner-lip outline is filled with a synthetic, feathered mouth
  interior (dark oral cavity, a band of upper teeth, a muted tongue).

CPU threads: on a loaded 2-core machine run render() in a thread with
torch.set_num_threads(1) (per thread under torch's OpenMP backend): two
OpenMP threads fighting other processes for two cores made it 3-10x slower.

Only torch / numpy / stdlib: engine/ must not import cv2, mediapipe or
kf_desktop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "CONTROL_IDX",
    "INNER_LIP_LOWER",
    "INNER_LIP_UPPER",
    "MotionGuide",
    "mouth_gap",
    "warp_guide",
]

# --- mediapipe face-mesh index groups (478 points, refine_landmarks=True) ---
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365,
             379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93,
             234, 127, 162, 21, 54, 103, 67, 109)
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314,
              17, 84, 181, 91, 146)
# Inner lips, corner to corner (78 = left corner in image, 308 = right corner).
INNER_LIP_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
INNER_LIP_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144,
             163, 7)
LEFT_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373,
            390, 249)
BROWS = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46,
         300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
NOSE = (1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275,
        278, 294, 326, 327, 344, 440)
# Cheeks, forehead, chin, around the mouth corners: carry smiles and jaw motion
# into the skin between the feature groups.
FILL = (151, 9, 50, 280, 205, 425, 187, 411, 118, 347, 199, 57, 287, 212, 432)


def _unique(*groups: tuple[int, ...]) -> tuple[int, ...]:
    seen: dict[int, None] = {}
    for g in groups:
        for i in g:
            seen.setdefault(i, None)
    return tuple(seen)


# The 115 control landmarks (+ 10 lid-brow midpoints, below). Every eye-lid
# and inner-lip point is kept: those contours carry blinks and mouth shape.
# Jaw contour, outer lips, brows and nose are thinned to every other point:
# the spline passes through the kept ones and bends smoothly between them,
# so the whole jaw contour still lands within 0.17 px on average (0.4 px in
# the worst frame) of real talking-head motion, for ~30 % less per frame.
# Irises are left out on purpose: when the driving eye closes, a fixed iris
# point would pin the eyeball open under the lid.
NOSE_THIN = (1, 4, 6, 168, 98, 327, 64, 294, 2, 19)
CONTROL_IDX: tuple[int, ...] = _unique(
    FACE_OVAL[::2], LIPS_OUTER[::2], INNER_LIP_UPPER, INNER_LIP_LOWER, RIGHT_EYE,
    LEFT_EYE, BROWS[5:10], BROWS[15:20], NOSE_THIN, FILL
)
# Virtual control points halfway between an upper-lid point and the brow
# point above it (same blend in portrait and driving space). With no
# landmarks on the upper lid skin, a blink's steep lid step made the spline
# overshoot above the lid and fold the skin into a ring; pinning the lid-brow
# band to a linear stretch keeps the field monotone there.
_LID_BROW = ((246, 46), (161, 53), (159, 52), (158, 65), (173, 55),
             (466, 276), (388, 283), (386, 282), (385, 295), (398, 285))
# Lids and inner lips: (left corner, right corner, upper points, lower points)
# with the corners in image left -> right order of an upright face, so the
# axis normal points from the upper towards the lower contour.
_OPENINGS = (
    (33, 133, (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155)),
    (362, 263, (398, 384, 385, 386, 387, 388, 466), (382, 381, 380, 374, 373, 390, 249)),
    (78, 308, INNER_LIP_UPPER[1:-1], INNER_LIP_LOWER[1:-1]),
)
# Facing inner-lip pairs (upper, lower) for the opening measure.
_GAP_PAIRS = ((81, 178), (82, 87), (13, 14), (312, 317), (311, 402))

# Mouth-interior palette (sRGB in [0, 1]); scaled by the portrait's
# skin tone so a dark photo does not get a glowing mouth.
_CAVITY = (0.20, 0.06, 0.06)
_CAVITY_DEEP = (0.10, 0.025, 0.03)
_TONGUE = (0.42, 0.16, 0.16)
_TEETH = (0.86, 0.82, 0.74)


# ----------------------------------------------------------------------------
# constants that depend only on (S, grid, device)
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Consts:
    size: int
    grid: int
    kernel: str  # radial basis, see _kernel
    still_px: int  # pixels this close to the edge never move (one coarse cell)
    anchors: torch.Tensor  # (A, 2) border anchors, unit coords (px / S)
    axis: torch.Tensor  # (G,) coarse sample positions (unit coords), x and y alike
    eval_rest: torch.Tensor  # (G*G, A+3) [U(e, anchors), 1, x, y] at the coarse
    # points e: the frame-independent columns of the TPS evaluation
    base: torch.Tensor  # (1, 2, G, G) identity sampling grid (grid_sample units)
    fade: torch.Tensor  # (1, 1, G, G) border window x (2/S: px -> grid units)
    ctrl_idx: torch.Tensor  # (M0,) CONTROL_IDX
    mid_idx: torch.Tensor  # (2, 10) lid / brow pairs of the virtual midpoints
    open_idx: torch.Tensor  # (4, K) left corner, right corner, upper, lower


def _solve(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Batched solve of (B, n, n) x = (B, n, 2) in float64.

    On the CPU this goes through NumPy's LAPACK: torch's MKL-backed batched
    LU was seen to corrupt results mid-process in a full test run ("oneMKL
    ERROR: Parameter 6 was incorrect on entry to DLASWP", then wrong pivots),
    and a ~150x150 system costs well under a millisecond either way. On a
    GPU torch's solver is used (no host round trip)."""
    if a.device.type == "cpu":
        x = np.linalg.solve(a.detach().numpy(), b.detach().numpy())
        return torch.from_numpy(x)
    return torch.linalg.solve(a, b)


def _kernel(r2: torch.Tensor, kind: str) -> torch.Tensor:
    """Radial basis of squared distance, in place: r2 must be a temporary
    (for the big per-frame table a copy would cost as much as the log)."""
    if kind == "tps":  # U = r^2 log r^2 (factor 1/2 absorbed by the weights)
        r2 = r2.clamp_min_(1e-20)  # U(0) = 0 without a NaN from 0 * log 0
        return torch.log(r2).mul_(r2)
    if kind == "r3":  # polyharmonic r^3, same family; measured no faster here
        return torch.sqrt(r2).mul_(r2)
    raise ValueError(f"unknown kernel {kind!r}")


def _smoothstep(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _make_consts(size: int, grid: int, device: torch.device, *, fade_frac: float,
                 kernel: str, anchors_per_side: int = 7) -> _Consts:
    if grid < 4 or size < grid:
        raise ValueError(f"need 4 <= grid <= crop size, got grid {grid}, size {size}")
    s = float(size)
    # Anchors on the border ring, in pixel-centre coordinates 0..S-1.
    t = torch.linspace(0.0, s - 1.0, anchors_per_side, dtype=torch.float64)
    lo, hi = torch.zeros_like(t), torch.full_like(t, s - 1.0)
    ring = torch.cat([
        torch.stack([t, lo], 1), torch.stack([t, hi], 1),
        torch.stack([lo[1:-1], t[1:-1]], 1), torch.stack([hi[1:-1], t[1:-1]], 1),
    ])  # (A, 2)
    anchors = ring / s
    # Coarse grid covering pixel centres 0..S-1 so that bilinear upsampling
    # with align_corners=True lands exactly on the pixel grid.
    g = torch.linspace(0.0, s - 1.0, grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    eval_pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1) / s  # (G*G, 2)
    u_ea = _kernel(torch.cdist(eval_pts, anchors) ** 2, kernel)  # (G*G, A)

    # Identity sampling grid for grid_sample(align_corners=False) at the
    # coarse points: pixel x sits at (2x + 1)/S - 1. Upsampling it bilinearly
    # is exact (it is linear), so base + flow is built coarse and upsampled
    # once instead of adding full-resolution tensors.
    lin = (2.0 * g + 1.0) / s - 1.0  # (G,)
    base = torch.stack([lin[None, :].expand(grid, grid),
                        lin[:, None].expand(grid, grid)])[None]  # (1, 2, G, G)

    # Border window on the coarse points: exactly 0 on the outer two rings of
    # samples, so after bilinear upsampling every pixel within one coarse cell
    # of the edge has exactly zero motion (paste-back seam stays put); then a
    # smooth ramp to 1 over fade_frac * S. Separable product: smooth corners.
    d = torch.minimum(g, s - 1.0 - g)  # (G,) distance to the edge, px
    w1 = _smoothstep((d - d[1]) / max(fade_frac * s, 1.0))
    fade = (w1[:, None] * w1[None, :] * (2.0 / s))[None, None]  # (1, 1, G, G)

    one = torch.ones_like(eval_pts[:, :1])
    eval_rest = torch.cat([u_ea, one, eval_pts], 1)  # (G*G, A+3)
    opening = torch.tensor([[ca, cb, up, lo] for ca, cb, ups, los in _OPENINGS
                            for up, lo in zip(ups, los)]).T  # (4, K)
    f32 = dict(device=device, dtype=torch.float32)
    i64 = dict(device=device, dtype=torch.long)
    return _Consts(size, grid, kernel, int(np.ceil(float(d[1]))), anchors.to(**f32),
                   (g / s).to(**f32), eval_rest.to(**f32), base.to(**f32),
                   fade.to(**f32), torch.tensor(CONTROL_IDX, **i64),
                   torch.tensor(_LID_BROW, **i64).T.contiguous(), opening.to(**i64))


def _keep_open(dst: torch.Tensor, min_gap: float, idx: torch.Tensor) -> torch.Tensor:
    """Hold every lid / inner-lip pair at least min_gap px apart.

    dst: (B, 478, 2) -> (B, 478, 2); idx: _Consts.open_idx. When a driving
    eye or mouth closes, the upper and lower contour land on the same pixels
    with opposite displacements; a smooth field then averages them and shows
    the middle of the opening (the iris) instead of a closed lid. A small gap
    lets the field switch from "sample the upper lid" to "sample the lower
    lid" within a few px, which renders as a thin lash / lip line.
    """
    ca, cb, ups, los = idx  # (K,) each: corners, upper and lower points
    axis = dst[:, cb] - dst[:, ca]  # (B, K, 2)
    n = torch.stack([-axis[..., 1], axis[..., 0]], -1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (B, K, 2) points down
    up, lo = dst[:, ups], dst[:, los]  # (B, K, 2)
    sep = ((lo - up) * n).sum(-1, keepdim=True)  # (B, K, 1) signed opening
    push = (min_gap - sep).clamp_min(0.0) * 0.5 * n
    out = dst.clone()
    out[:, ups] = up - push
    out[:, los] = lo + push
    return out


def _control_points(lms: torch.Tensor, c: _Consts) -> torch.Tensor:
    """(B, 478, 2) -> (B, M, 2): the CONTROL_IDX subset plus lid-brow midpoints."""
    mid = 0.5 * (lms[:, c.mid_idx[0]] + lms[:, c.mid_idx[1]])  # (B, 10, 2)
    return torch.cat([lms[:, c.ctrl_idx], mid], 1)


# ----------------------------------------------------------------------------
# dense field
# ----------------------------------------------------------------------------
def _sampling_grid(c: _Consts, src: torch.Tensor, dst: torch.Tensor, lam: float
                   ) -> torch.Tensor:
    """The backward warp as a grid_sample grid.

    src, dst: (B, M, 2) control points in crop pixels. Returns (B, S, S, 2)
    that samples the portrait at q(p), with q(dst_i) ~= src_i.
    """
    b = src.shape[0]
    s = float(c.size)
    a = c.anchors.shape[0]
    # Unit coordinates keep the TPS system well scaled for any S.
    ctrl = torch.cat([dst / s, c.anchors.expand(b, a, 2)], 1)  # (B, M+A, 2)
    val = torch.cat([(src - dst) / s, ctrl.new_zeros(b, a, 2)], 1)  # (B, M+A, 2)
    n = ctrl.shape[1]

    # Solve [[K + lam I, P], [P^T, 0]] [w; aff] = [val; 0] in float64: the
    # r^2 log r^2 kernel matrix is badly conditioned in float32.
    c64 = ctrl.double()
    k = _kernel(torch.cdist(c64, c64) ** 2, c.kernel)  # (B, n, n)
    k = k + lam * torch.eye(n, dtype=k.dtype, device=k.device)
    p = torch.cat([c64.new_ones(b, n, 1), c64], 2)  # (B, n, 3)
    top = torch.cat([k, p], 2)  # (B, n, n+3)
    bot = torch.cat([p.transpose(1, 2), c64.new_zeros(b, 3, 3)], 2)  # (B, 3, n+3)
    rhs = torch.cat([val.double(), c64.new_zeros(b, 3, 2)], 1)  # (B, n+3, 2)
    # sol rows: [w_control (M), w_anchor (A), affine (3: 1, x, y)], (B, n+3, 2)
    sol = _solve(torch.cat([top, bot], 1), rhs).to(src.dtype)

    # Evaluate on the coarse grid. The grid is separable, so
    # r^2 = (ex - cx)^2 + (ey - cy)^2 is one broadcast add of two (G, M)
    # tables; anchor kernels and the affine part do not depend on the frame
    # and are one constant matmul.
    m = n - a
    g = c.grid
    cm = ctrl[:, :m]  # (B, M, 2) driving control points
    dx2 = (c.axis[None, :, None] - cm[:, None, :, 0]).square_()  # (B, G, M)
    dy2 = (c.axis[None, :, None] - cm[:, None, :, 1]).square_()  # (B, G, M)
    r2 = (dy2[:, :, None] + dx2[:, None]).view(b, g * g, m)  # (B, G*G, M) row-major
    u_em = _kernel(r2, c.kernel)
    flow = torch.baddbmm(torch.matmul(c.eval_rest, sol[:, m:]), u_em, sol[:, :m])
    flow = flow.transpose(1, 2).reshape(b, 2, g, g)  # (B, 2, G, G) unit coords
    # Sampling grid = identity + faded flow (in grid_sample units: the unit
    # coords scale by S and c.fade carries the 2/S), upsampled once.
    grid = torch.addcmul(c.base, flow, c.fade, value=s)  # (B, 2, G, G)
    grid = F.interpolate(grid, size=(c.size, c.size), mode="bilinear",
                         align_corners=True)  # (B, 2, S, S)
    return grid.permute(0, 2, 3, 1)  # (B, S, S, 2)


# ----------------------------------------------------------------------------
# mouth interior
# ----------------------------------------------------------------------------
def mouth_gap(lms: torch.Tensor) -> torch.Tensor:
    """Mean inner-lip opening in pixels. lms: (B, 478, 2) -> (B,)."""
    up = lms[:, [u for u, _ in _GAP_PAIRS]]
    lo = lms[:, [v for _, v in _GAP_PAIRS]]
    return (lo - up).norm(dim=-1).mean(-1)


def _lip_profiles(dst: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inner-lip curves in the mouth's own frame.

    dst: (B, 478, 2). The frame has its origin at corner 78, u runs along the
    corner axis (0 at 78, 1 at 308) and w is the offset (px) along the axis
    normal, pointing from the upper to the lower lip. Returns
    origin (B, 2), axis / length^2 (B, 2), unit normal (B, 2) and the lip
    curves w_up(u), w_lo(u) sampled at k evenly spaced u: (B, 2, 1, k).
    """
    b = dst.shape[0]
    c0 = dst[:, INNER_LIP_UPPER[0]]  # (B, 2)
    axis = dst[:, INNER_LIP_UPPER[-1]] - c0  # (B, 2)
    len2 = (axis * axis).sum(-1, keepdim=True).clamp_min(1e-6)
    ax_n = axis / len2  # u = (p - c0) . ax_n
    nrm = torch.stack([-axis[:, 1], axis[:, 0]], -1) / len2.sqrt()  # (B, 2)
    lips = dst[:, list(INNER_LIP_UPPER + INNER_LIP_LOWER)] - c0[:, None]  # (B, 22, 2)
    u = (lips * ax_n[:, None]).sum(-1).view(b * 2, -1)  # (2B, 11) upper; lower
    w = (lips * nrm[:, None]).sum(-1).view(b * 2, -1)  # (2B, 11)
    # A curve must be a function of u; extreme poses can fold it, so force
    # u to be non-decreasing (points that fold back collapse onto the curve).
    u = u.cummax(-1).values.contiguous()
    q = torch.linspace(0.0, 1.0, k, device=dst.device, dtype=dst.dtype)
    q = q.expand(b * 2, k).contiguous()  # (2B, k)
    hi = torch.searchsorted(u, q).clamp_(1, u.shape[1] - 1)  # (2B, k)
    u0, u1 = u.gather(1, hi - 1), u.gather(1, hi)
    w0, w1 = w.gather(1, hi - 1), w.gather(1, hi)
    t = ((q - u0) / (u1 - u0).clamp_min(1e-6)).clamp_(0.0, 1.0)
    prof = torch.lerp(w0, w1, t).view(b, 2, 1, k)  # (B, 2, 1, k)
    return c0, ax_n, nrm, prof


def _mouth_layer(dst: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor,
                 gap: torch.Tensor, feather: torch.Tensor, tone: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic mouth interior on the pixel grid ys x xs.

    dst: (B, 478, 2) driving landmarks; xs: (W,), ys: (H,) pixel centres;
    gap, feather, tone: (B,). Returns colour (B, 3, H, W) in [0, 1] and
    coverage (B, H, W): 1 inside the inner-lip outline, feathered across it.
    """
    b = dst.shape[0]
    c0, ax_n, nrm, prof = _lip_profiles(dst, 32)
    width = 1.0 / ax_n.norm(dim=-1)  # (B,) corner-to-corner length, px
    # Every pixel in the mouth frame; the grid is separable, so each is a
    # sum of a per-column and a per-row term.
    dx = xs[None, None, :] - c0[:, 0, None, None]  # (B, 1, W)
    dy = ys[None, :, None] - c0[:, 1, None, None]  # (B, H, 1)
    u = dx * ax_n[:, 0, None, None] + dy * ax_n[:, 1, None, None]  # (B, H, W)
    w = dx * nrm[:, 0, None, None] + dy * nrm[:, 1, None, None]  # (B, H, W)
    # Both lip curves at every pixel's u: one grid_sample of the profiles.
    g = torch.stack([2.0 * u - 1.0, torch.zeros_like(u)], -1)  # (B, H, W, 2)
    lip = F.grid_sample(prof, g, mode="bilinear", padding_mode="border",
                        align_corners=True)  # (B, 2, H, W)
    d_up = w - lip[:, 0]  # px below the upper lip
    d_lo = lip[:, 1] - w  # px above the lower lip
    # Distance to the outline, measured along the lip normal (and along the
    # axis past the corners): > 0 inside. Feathered across the outline.
    wid = width[:, None, None]
    sd = torch.minimum(torch.minimum(d_up, d_lo), torch.minimum(u, 1.0 - u) * wid)
    cover = _smoothstep(sd / feather[:, None, None] + 0.5)  # (B, H, W)

    v = (d_up / (d_up + d_lo).clamp_min(1e-3)).clamp_(0.0, 1.0)  # 0 upper .. 1 lower
    mid = 1.0 - (2.0 * u - 1.0).abs()  # 0 at the corners, 1 in the middle
    pal = torch.tensor((_CAVITY, _CAVITY_DEEP, _TONGUE, _TEETH), dtype=xs.dtype,
                       device=xs.device)[:, None, :, None, None]  # (4, 1, 3, 1, 1)
    # Cavity: darker towards the back of the mouth (middle of the opening).
    depth = (_smoothstep(mid * 1.6) * (1.0 - (2.0 * v - 1.0).abs()))[:, None]
    rgb = torch.lerp(pal[0], pal[1], depth)  # (B, 3, H, W)
    # Tongue: a muted hump in the lower part of a wide opening, kept off the
    # lower lip by a dark rim: a lip-coloured tongue touching the lip made
    # the lip read (to mediapipe too) as thicker and the mouth as less open.
    open_rel = (gap / width.clamp_min(1.0))[:, None, None]  # (B, 1, 1)
    tongue = _smoothstep((v - 0.55) / 0.2) * (1.0 - _smoothstep((v - 0.8) / 0.12)) \
        * _smoothstep((open_rel - 0.15) / 0.4) * _smoothstep(mid * 2.0)
    rgb = torch.lerp(rgb, pal[2], 0.7 * tongue[:, None])
    rgb = rgb * tone.clamp(0.6, 1.15).view(b, 1, 1, 1)
    # Upper teeth: a band under the upper lip, its height proportional to the
    # opening and capped at real incisor height relative to mouth width.
    teeth_h = torch.minimum(0.38 * gap, 0.13 * width)[:, None, None]  # (B, 1, 1)
    soft = (0.25 * teeth_h).clamp_min(0.8)
    band = _smoothstep((teeth_h - d_up) / soft + 0.5) * _smoothstep((mid - 0.12) / 0.35)
    # Shade teeth: darker towards the corners (they recede into the mouth),
    # in the lip's shadow right under it, and faint gaps between the teeth
    # (~9 visible across the mouth, a gap at the midline).
    shade = (0.5 + 0.5 * _smoothstep(mid / 0.8)) \
        * (0.8 + 0.2 * _smoothstep(d_up / (0.5 * teeth_h).clamp_min(0.8)))
    phase = torch.frac((u - 0.5) * 9.0 + 100.0)  # 0 at a gap, per tooth 0..1
    shade = shade * (1.0 - 0.1 * _smoothstep(1.0 - (phase - 0.5).abs() * 8.0))
    shade = shade * tone.clamp(0.7, 1.0).view(b, 1, 1)
    rgb = torch.lerp(rgb, pal[3] * shade[:, None], band[:, None]).clamp_(0.0, 1.0)
    return rgb, cover


def _fill_mouth(out: torch.Tensor, gap_src: torch.Tensor, dst: torch.Tensor,
                c: _Consts, tone: torch.Tensor, open_px: tuple[float, float]
                ) -> torch.Tensor:
    """Blend the synthetic interior into out (B,3,S,S), in place, where the
    driving mouth opens wider than the portrait's. gap_src: (B,) portrait
    opening (mouth_gap); dst: (B, 478, 2)."""
    s = c.size
    unit = s / 256.0  # thresholds are tuned at S = 256
    gap_d = mouth_gap(dst)  # (B,)
    alpha = _smoothstep((gap_d - gap_src - open_px[0] * unit) / (open_px[1] * unit))
    if not bool((alpha > 0).any()):
        return out
    feather = (0.06 * gap_d).clamp(0.9 * unit, 2.5 * unit)  # (B,)
    # Work only on the union bounding box of the inner lips (plus feather),
    # kept off the still border so the paste-back seam is never painted.
    lips = dst[:, list(INNER_LIP_UPPER + INNER_LIP_LOWER)]  # (B, 22, 2)
    box = torch.cat([lips.amin(dim=(0, 1)) - 3.0 * unit, lips.amax(dim=(0, 1))
                     + 3.0 * unit]).clamp_(c.still_px, s - 1 - c.still_px).tolist()
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    if x1 <= x0 or y1 <= y0:
        return out
    xs = torch.arange(x0, x1 + 1, device=out.device, dtype=out.dtype)  # (w,)
    ys = torch.arange(y0, y1 + 1, device=out.device, dtype=out.dtype)  # (h,)
    rgb, cover = _mouth_layer(dst, xs, ys, gap_d, feather, tone)
    k = cover[:, None] * alpha.view(-1, 1, 1, 1)  # (B, 1, h, w)
    roi = out[:, :, y0:y1 + 1, x0:x1 + 1]
    roi.copy_(torch.lerp(roi, rgb, k))
    return out


def _skin_tone(portrait: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """Brightness factor for the interior palette from the portrait's face.

    portrait (B,3,S,S), src (B,478,2) -> (B,). Mean luma at the cheek/nose
    landmarks relative to a typical 0.55, clamped so odd photos stay sane.
    """
    s = portrait.shape[-1]
    pts = src[:, [50, 280, 205, 425, 5, 151]]  # (B, 6, 2) cheeks, nose, forehead
    g = ((2.0 * pts + 1.0) / s - 1.0)[:, None]  # (B, 1, 6, 2)
    smp = F.grid_sample(portrait, g, mode="bilinear", padding_mode="border",
                        align_corners=False)  # (B, 3, 1, 6)
    luma = (smp[:, 0] * 0.299 + smp[:, 1] * 0.587 + smp[:, 2] * 0.114).mean((1, 2))
    return (luma / 0.55).clamp(0.55, 1.3)


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Opts:
    lam: float  # TPS ridge, unit coordinates
    mouth: bool  # synthesise the mouth interior
    open_px: tuple[float, float]  # (start, ramp) of the interior fade-in, px@256
    min_gap: float  # closed lids / lips are held this far apart, px@256


@dataclass(frozen=True)
class _Prepared:
    """Everything that depends only on the portrait (batch of B)."""

    image: torch.Tensor  # (B, 3, S, S) float [0, 1]
    src: torch.Tensor  # (B, N, 2) landmarks, crop px
    ctrl: torch.Tensor  # (B, M, 2) control points (full mesh) or src
    tone: torch.Tensor | None  # (B,) palette brightness (full mesh only)
    gap: torch.Tensor | None  # (B,) inner-lip opening, px (full mesh only)


def _as_points(lms, device: torch.device) -> torch.Tensor:
    """ndarray / tensor (..., N, 2|3) -> float32 (..., N, 2) on device."""
    t = lms if torch.is_tensor(lms) else torch.from_numpy(np.asarray(lms, np.float32))
    if t.shape[-1] not in (2, 3):
        raise ValueError(f"landmarks must be (..., N, 2|3), got {tuple(t.shape)}")
    return t[..., :2].to(device=device, dtype=torch.float32)


def _prepare(image: torch.Tensor, src: torch.Tensor, c: _Consts, o: _Opts
             ) -> _Prepared:
    if src.shape[1] != 478:
        return _Prepared(image, src, src, None, None)
    # Lids / lips that nearly touch in the photo get the same push as the
    # driving ones (see _keep_open), so an identity drive stays an identity.
    ctrl = _control_points(_keep_open(src, o.min_gap * c.size / 256.0, c.open_idx), c)
    return _Prepared(image, src, ctrl, _skin_tone(image, src), mouth_gap(src))


def _grid(p: _Prepared, dst: torch.Tensor, c: _Consts, o: _Opts) -> torch.Tensor:
    """dst: (B, N, 2) driving landmarks -> (B, S, S, 2) grid_sample grid."""
    if p.tone is not None:  # the mediapipe mesh: held-open lids/lips, control subset
        held = _keep_open(dst, o.min_gap * c.size / 256.0, c.open_idx)
        dst = _control_points(held, c)  # (B, M, 2)
    return _sampling_grid(c, p.ctrl, dst, o.lam)


def _render(p: _Prepared, dst: torch.Tensor, c: _Consts, o: _Opts) -> torch.Tensor:
    """dst: (B, N, 2) -> (B, 3, S, S)."""
    full = p.tone is not None
    grid = _grid(p, dst, c, o)  # (B, S, S, 2)
    out = F.grid_sample(p.image, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)  # (B, 3, S, S)
    if o.mouth and full:
        out = _fill_mouth(out, p.gap, dst, c, p.tone, o.open_px)
    return out


def warp_guide(portrait: torch.Tensor, src, dst, *, grid: int = 48,
               lam: float = 1e-5, mouth: bool = True, fade_frac: float = 0.12,
               open_px: tuple[float, float] = (1.0, 3.0), min_gap: float = 1.5,
               kernel: str = "tps") -> torch.Tensor:
    """Warp portrait crops so that landmarks src move to dst.

    portrait: (B, 3, S, S) float in [0, 1], any device.
    src: (B, N, 2|3) portrait landmarks, dst: (B, N, 2|3) driving landmarks,
    both in crop pixels (tensors or arrays). With N == 478 (the mediapipe
    mesh) CONTROL_IDX drives the warp and the mouth interior is synthesised;
    with any other N every point is a control point and no mouth is drawn.
    grid: coarse field resolution (the field is evaluated on grid x grid
    points and upsampled). lam: TPS ridge in unit coordinates.
    Motion is exactly 0 within one coarse cell of the edge ((S-1)/(grid-1)
    px, 5.4 px at the defaults) and ramps up to full over fade_frac * S. open_px: (start, ramp) of the
    mouth-interior fade-in, in px of extra opening at S = 256. min_gap: closed
    lids / lips are held this many px@256 apart. kernel: "tps" or "r3".
    Returns (B, 3, S, S) float in [0, 1].
    """
    if portrait.dim() != 4 or portrait.shape[1] != 3 \
            or portrait.shape[-1] != portrait.shape[-2]:
        raise ValueError(f"portrait must be (B, 3, S, S), got {tuple(portrait.shape)}")
    dev = portrait.device
    src, dst = _as_points(src, dev), _as_points(dst, dev)
    if src.shape != dst.shape or src.shape[0] != portrait.shape[0]:
        raise ValueError(f"src {tuple(src.shape)} / dst {tuple(dst.shape)} do not "
                         f"match each other or the batch of {portrait.shape[0]}")
    c = _make_consts(portrait.shape[-1], grid, dev, fade_frac=fade_frac,
                     kernel=kernel)
    o = _Opts(lam, mouth, open_px, min_gap)
    return _render(_prepare(portrait.float(), src, c, o), dst, c, o)


class MotionGuide:
    """Per-portrait cache around warp_guide for real-time inference.

    set_portrait() does everything that depends only on the photo; render()
    then costs one ~150x150 linear solve, a 48x48 spline evaluation, one
    bilinear upsample, one grid_sample and, only while the mouth opens wider
    than the photo's, a polygon fill over the mouth's bounding box.
    Same keyword options as warp_guide, same output for the same input.
    """

    def __init__(self, crop_size: int = 256, device: str | torch.device = "cpu", *,
                 grid: int = 48, lam: float = 1e-5, mouth: bool = True,
                 fade_frac: float = 0.12,
                 open_px: tuple[float, float] = (1.0, 3.0),
                 min_gap: float = 1.5, kernel: str = "tps") -> None:
        self.crop_size = int(crop_size)
        self.device = torch.device(device)
        self._o = _Opts(lam, mouth, open_px, min_gap)
        self._c = _make_consts(self.crop_size, grid, self.device,
                               fade_frac=fade_frac,
                               kernel=kernel)
        self._fade_px = fade_frac * self.crop_size
        self._p: _Prepared | None = None

    @property
    def full_motion_px(self) -> float:
        """Distance from the crop edge (px) at which motion reaches full
        strength: content the driver moves closer than this is squeezed
        (kf_desktop/head_room.py keeps the head out of it)."""
        return float(self._c.still_px) + self._fade_px

    @torch.inference_mode()
    def set_portrait(self, crop, landmarks) -> None:
        """crop: (S, S, 3) uint8 RGB ndarray or (3, S, S) float tensor in [0, 1];
        landmarks: (N, 2|3) in crop pixels (N = 478 for the mediapipe mesh)."""
        s = self.crop_size
        if isinstance(crop, np.ndarray):
            if crop.shape != (s, s, 3) or crop.dtype != np.uint8:
                raise ValueError(f"crop must be ({s}, {s}, 3) uint8, got "
                                 f"{crop.shape} {crop.dtype}")
            # Copy once per portrait: the caller's array may be read-only.
            t = torch.from_numpy(np.array(crop)).to(self.device)
            t = t.permute(2, 0, 1).float().div_(255.0)  # (3, S, S)
        else:
            if tuple(crop.shape) != (3, s, s):
                raise ValueError(f"crop must be (3, {s}, {s}), got {tuple(crop.shape)}")
            t = crop.to(self.device, torch.float32)
        src = _as_points(landmarks, self.device)[None]  # (1, N, 2)
        self._p = _prepare(t[None].contiguous(), src, self._c, self._o)

    @property
    def portrait(self) -> torch.Tensor:
        """The cached portrait crop, (3, S, S) float on device."""
        if self._p is None:
            raise RuntimeError("MotionGuide.set_portrait() has not been called")
        return self._p.image[0]

    @torch.inference_mode()
    def sample_points(self, driving) -> torch.Tensor:
        """Where render(driving) samples the portrait: (S, S, 2) crop px (x, y)
        per output pixel (pixel centres at integers). For diagnostics:
        kf_desktop.head_room.area_ratio turns it into the local squeeze."""
        if self._p is None:
            raise RuntimeError("MotionGuide.set_portrait() has not been called")
        dst = _as_points(driving, self.device)[None]  # (1, N, 2)
        grid = _grid(self._p, dst, self._c, self._o)[0]  # (S, S, 2) in [-1, 1]
        return ((grid + 1.0) * self.crop_size - 1.0) * 0.5

    @torch.inference_mode()
    def render(self, driving) -> torch.Tensor:
        """driving: (N, 2|3) landmarks in crop pixels -> (3, S, S) float [0, 1]."""
        if self._p is None:
            raise RuntimeError("MotionGuide.set_portrait() has not been called")
        dst = _as_points(driving, self.device)[None]  # (1, N, 2)
        if dst.shape != self._p.src.shape:
            raise ValueError(f"driving landmarks {tuple(dst.shape[1:])} do not match "
                             f"the portrait's {tuple(self._p.src.shape[1:])}")
        return _render(self._p, dst, self._c, self._o)[0]
