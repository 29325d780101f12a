"""Fused elementwise kernels of a block: adaLN modulation, gated residual,
q/k RMSNorm with the cache write.

A block's eager path (engine/model.py ``Block.forward``) makes separate
passes for LayerNorm, ``* (1 + scale)``, ``+ shift``, ``gate *``, ``+ x``,
the q/k RMSNorm and the copy of keys/values into the cache. Here:

- ``ln_modulate(x, shift, scale)``: h = LN(x) * (1 + scale) + shift, one
  read of x, one write of h; shift/scale are per frame (B, F, D) views of
  the block's (B, F, 6, D) modulation, read in place.
- ``residual_ln_modulate(x, gate, y, shift, scale)``: x' = x + gate * y and
  h = LN(x') * (1 + scale) + shift in one pass (the attention residual and
  the MLP's input), both outputs written once.
- ``gated_residual(x, gate, y)``: x + gate * y (the MLP residual).
- ``kv_write(k, v, k_cache, v_cache, write_at, k_norm_weight)``: RMSNorm of
  the keys (per head) and the copy of keys and values into the cache's
  (B, H, Ncap, Dh) layout, straight from the qkv projection's (B, N, 3, H,
  Dh) output (no transpose, no normalised temporary). The queries' RMSNorm
  and RoPE are fused into the attention kernel's query load
  (engine/kernels/attention.py), where they cost nothing extra.

All statistics in fp32; one rounding to the output dtype. Each kernel has
its torch reference below it (``*_reference``), written like the eager
block code.
"""

import torch
import torch.nn.functional as F

from engine.kernels._triton import LazyKernel, next_pow2

try:
    import triton.language as tl
except Exception:  # pragma: no cover - no triton installed
    from engine.kernels._triton import tl_stub as tl


# --------------------------------------------------------------------------
# Torch references (the eager block's arithmetic)
# --------------------------------------------------------------------------


def ln_modulate_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (B, F, T, D); shift, scale (B, F, D) -> LN(x) * (1 + scale) + shift."""
    return F.layer_norm(x, x.shape[-1:], eps=eps) * (1 + scale[:, :, None]) + shift[:, :, None]


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (B, F, T, D), gate (B, F, D), y (B, F*T, D) or (B, F, T, D)."""
    return x + gate[:, :, None] * y.view(x.shape)


def residual_ln_modulate_reference(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    xn = gated_residual_reference(x, gate, y)
    return xn, ln_modulate_reference(xn, shift, scale, eps)


def _rms_ref(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    if w is None:
        return x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.to(x.dtype) * w.to(x.dtype)


def kv_write_reference(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, write_at: int,
    k_norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
) -> None:
    """k, v (B, N, H, Dh) (views of the qkv output) -> k_cache/v_cache (B, H,
    Ncap, Dh) tokens [write_at, write_at + N), keys RMS-normalised."""
    n = k.shape[1]
    k_cache[:, :, write_at : write_at + n].copy_(_rms_ref(k, k_norm_weight, eps).transpose(1, 2))
    v_cache[:, :, write_at : write_at + n].copy_(v.transpose(1, 2))


# --------------------------------------------------------------------------
# Triton: modulation / residual
# --------------------------------------------------------------------------


def _modulate_kernel(
    X, Y, G, SH, SC, XO, HO,
    n_rows, d, tokens_per_frame, n_frames,
    s_y, s_mb, s_mf,
    eps,
    RESIDUAL: tl.constexpr, LN: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    r_ok = rows < n_rows
    c_ok = cols < d
    m = r_ok[:, None] & c_ok[None, :]
    bf = rows // tokens_per_frame  # global frame index b * F + f
    moff = (bf // n_frames) * s_mb + (bf % n_frames) * s_mf  # offset of this row's modulation vectors
    x = tl.load(X + rows[:, None] * d + cols[None, :], mask=m, other=0.0).to(tl.float32)
    if RESIDUAL:
        y = tl.load(Y + rows[:, None] * s_y + cols[None, :], mask=m, other=0.0).to(tl.float32)
        g = tl.load(G + moff[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        xr = (x + g * y).to(XO.dtype.element_ty)
        tl.store(XO + rows[:, None] * d + cols[None, :], xr, mask=m)
        x = xr.to(tl.float32)  # the LN reads the rounded residual stream, as the eager path does
    if LN:
        mean = tl.sum(x, 1) / d
        xc = tl.where(m, x - mean[:, None], 0.0)
        var = tl.sum(xc * xc, 1) / d
        rstd = 1.0 / tl.sqrt(var + eps)
        sh = tl.load(SH + moff[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        sc = tl.load(SC + moff[:, None] + cols[None, :], mask=m, other=0.0).to(tl.float32)
        h = xc * rstd[:, None] * (1.0 + sc) + sh
        tl.store(HO + rows[:, None] * d + cols[None, :], h.to(HO.dtype.element_ty), mask=m)


def _mod_configs(family: str) -> list[dict]:
    if family in ("hopper", "ampere_ada"):
        return [{"meta": {"BLOCK_R": r}, "num_warps": w, "num_stages": 1}
                for r, w in [(1, 4), (2, 4), (4, 4), (4, 8), (8, 8), (16, 8)]]
    return [{"meta": {"BLOCK_R": 4}, "num_warps": 4, "num_stages": 1}]


_MOD = LazyKernel(_modulate_kernel, interp_meta={"BLOCK_R": 64}, configs=_mod_configs,
                  key=["n_rows", "d", "RESIDUAL", "LN"])


def _mod_views(*mods: torch.Tensor) -> tuple[int, int]:
    """Strides (b, f) shared by the (B, F, D) modulation views; last dim unit."""
    s = mods[0].stride()
    for t in mods:
        if t.stride() != s or t.stride(-1) != 1:
            raise ValueError("modulation vectors must be (B, F, D) views with the same strides and unit last stride")
    return s[0], s[1]


def _launch_mod(x, y, gate, shift, scale, eps, residual: bool, ln: bool):
    b, f, t, d = x.shape
    if not x.is_contiguous():
        x = x.contiguous()
    rows = b * f * t
    mods = [m for m in (gate, shift, scale) if m is not None]
    s_mb, s_mf = _mod_views(*mods)
    xo = torch.empty_like(x) if residual else x
    ho = torch.empty_like(x) if ln else x
    if residual:
        y2 = y.reshape(rows, d)
        if y2.stride(1) != 1:
            y2 = y2.contiguous()
        s_y = y2.stride(0)
    else:
        y2, s_y = x, d
    dummy = mods[0]
    grid = lambda meta: (-(-rows // meta["BLOCK_R"]),)  # noqa: E731
    _MOD[grid](
        x, y2, gate if gate is not None else dummy, shift if shift is not None else dummy,
        scale if scale is not None else dummy, xo, ho,
        rows, d, t, f, s_y, s_mb, s_mf, eps,
        RESIDUAL=residual, LN=ln, BLOCK_D=next_pow2(d, 16),
    )
    return xo, ho


def ln_modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x (B, F, T, D); shift, scale (B, F, D) views -> LN(x) * (1 + scale) + shift (B, F, T, D)."""
    return _launch_mod(x, None, None, shift, scale, eps, residual=False, ln=True)[1]


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x (B, F, T, D), gate (B, F, D), y (B, F*T, D) -> x + gate * y (B, F, T, D)."""
    return _launch_mod(x, y, gate, None, None, 0.0, residual=True, ln=False)[0]


def residual_ln_modulate(
    x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (x + gate * y, LN(x + gate * y) * (1 + scale) + shift), both (B, F, T, D)."""
    return _launch_mod(x, y, gate, shift, scale, eps, residual=True, ln=True)


# --------------------------------------------------------------------------
# Triton: key RMSNorm + cache write
# --------------------------------------------------------------------------


def _kv_write_kernel(
    K, V, KC, VC, KW,
    n_tok, write_at, n_heads, dh, eps,
    s_kb, s_kn, s_kh, s_kd,
    s_vb, s_vn, s_vh, s_vd,
    s_cb, s_ch, s_cn, s_cd,
    s_wb, s_wh, s_wn, s_wd,
    HAS_NORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_DH: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    toks = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_DH)
    m = (toks < n_tok)[:, None] & (cols < dh)[None, :]
    k = tl.load(K + b * s_kb + h * s_kh + toks[:, None] * s_kn + cols[None, :] * s_kd, mask=m, other=0.0)
    if HAS_NORM:
        kf = k.to(tl.float32)
        r = 1.0 / tl.sqrt(tl.sum(kf * kf, 1) / dh + eps)
        w = tl.load(KW + cols, mask=cols < dh, other=0.0).to(tl.float32)
        k = kf * r[:, None] * w[None, :]
    dst = write_at + toks
    tl.store(KC + b * s_cb + h * s_ch + dst[:, None] * s_cn + cols[None, :] * s_cd, k.to(KC.dtype.element_ty), mask=m)
    v = tl.load(V + b * s_vb + h * s_vh + toks[:, None] * s_vn + cols[None, :] * s_vd, mask=m, other=0.0)
    tl.store(VC + b * s_wb + h * s_wh + dst[:, None] * s_wn + cols[None, :] * s_wd, v.to(VC.dtype.element_ty), mask=m)


def _kv_configs(family: str) -> list[dict]:
    if family in ("hopper", "ampere_ada"):
        return [{"meta": {"BLOCK_T": t}, "num_warps": w, "num_stages": 1}
                for t, w in [(16, 2), (32, 4), (64, 4), (128, 8)]]
    return [{"meta": {"BLOCK_T": 32}, "num_warps": 4, "num_stages": 1}]


_KV = LazyKernel(_kv_write_kernel, interp_meta={"BLOCK_T": 64}, configs=_kv_configs, key=["n_tok", "dh"])


def kv_write(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, write_at: int,
    k_norm_weight: torch.Tensor | None = None, eps: float = 1e-6,
) -> None:
    """Triton ``kv_write_reference``: k, v (B, N, H, Dh) any strides; caches
    (B, H, Ncap, Dh) (e.g. ``KVCache.k[layer]``), written in place."""
    b, n, nh, dh = k.shape
    if write_at < 0 or write_at + n > k_cache.shape[2]:
        raise ValueError(f"tokens [{write_at}, {write_at + n}) do not fit a cache of {k_cache.shape[2]}")
    grid = lambda meta: (-(-n // meta["BLOCK_T"]), b * nh)  # noqa: E731
    _KV[grid](
        k, v, k_cache, v_cache, k_norm_weight if k_norm_weight is not None else k,
        n, write_at, nh, dh, eps,
        *k.stride(), *v.stride(), *k_cache.stride(), *v_cache.stride(),
        HAS_NORM=k_norm_weight is not None, BLOCK_DH=next_pow2(dh, 16),
    )


# --------------------------------------------------------------------------
# Cost model
# --------------------------------------------------------------------------


def modulate_bytes(rows: int, d: int, elem: int, residual: bool, ln: bool) -> float:
    """Minimum traffic of one call (modulation vectors are per frame: ignored)."""
    n = 1 + (2 if residual else 0) + (1 if ln else 0)  # x in, y in + x' out, h out
    return float(elem) * rows * d * n
