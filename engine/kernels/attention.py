"""Chunk attention over the KV cache with RoPE applied as keys are loaded.

The queries of one forward (the c + k chunk frames, the c committed frames
of a clean pass, or the reference prefill) attend to buffer tokens
[0, n_keys) of ``KVCache.k[layer]`` / ``.v[layer]`` (B, H, Ncap, Dh), read in
place: KV_ref, the ring KV_pre and the forward's own tokens (already written
at ``q_offset`` by the cache write). Keys are stored un-rotated; each key
tile is rotated in registers as it is loaded, so there is no rotated copy
of the cache (``KVCache.k_rot`` is not allocated when this kernel is in use),
no concatenation and no per-chunk rotation pass.

Rotation, two sources:
- ``RopePositions`` (the design): a small per-frame temporal position vector
  (one float per buffer frame: the reference at its running-ahead position,
  each ring slot at (slot - window start) mod L, the chunk's frames at
  theirs, all relative to the window start), the temporal inverse
  frequencies and the fixed (T, Dh/2) spatial angle table. The kernel
  computes angle = pos[n // T] * inv_t[j] + spatial[n % T, j] in fp32.
- ``RopeTables``: per-token cos/sin tables (what ``AttnSpec`` carries today;
  the model hook uses them so engine/stream.py needs no change).

Masking: keys [mask_lo, mask_hi) (ring slots not yet written) are skipped
entirely (two key segments, no work spent on them), plus an optional
per-key boolean vector (``AttnSpec.mask`` of shape (1, 1, 1, Nk)). Inside
the chunk attention is bidirectional (no causal mask).

Queries: optionally RMS-normalised (the block's q_norm) and rotated in the
kernel, then scaled by 1/sqrt(Dh) * log2(e) (exp2 softmax). Online softmax
with fp32 running max / sum / accumulator; fp32, bf16 and fp16 inputs, the
dot products take the input dtype (tensor cores) and accumulate in fp32.
Output (B, Nq, H, Dh): exactly the (B, N, D) layout the output projection
reads, so no transpose pass either.

``chunk_attention_reference`` is the torch definition the kernel is tested
against (rotate a temporary copy of the keys, mask, SDPA).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.kernels._triton import LazyKernel, interpreting, next_pow2

try:  # the kernels need Triton; the torch references and cost models do not
    import triton.language as tl
except Exception:  # pragma: no cover - no triton installed
    from engine.kernels._triton import tl_stub as tl

LOG2E = 1.4426950408889634


# --------------------------------------------------------------------------
# RoPE sources
# --------------------------------------------------------------------------


@dataclass
class RopeTables:
    """Per-token tables: cos_q/sin_q (Nq, Dh/2) for the queries, cos_k/sin_k
    (>= n_keys, Dh/2) for buffer tokens."""

    cos_q: torch.Tensor
    sin_q: torch.Tensor
    cos_k: torch.Tensor
    sin_k: torch.Tensor


@dataclass
class RopePositions:
    """t_pos (n_frames,) fp32 temporal position of each buffer frame (frame f
    = tokens [f*T, (f+1)*T)); inv_t (Dh/2,) fp32 temporal inverse frequency
    per rotation pair, 0 on the spatial pairs; spatial (T, Dh/2) fp32 angle
    of each token of a frame, 0 on the temporal pairs."""

    t_pos: torch.Tensor
    inv_t: torch.Tensor
    spatial: torch.Tensor
    tokens_per_frame: int

    def angles(self, start: int, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n, Dh/2) angles of buffer tokens [start, start + n) (fp32 as in the kernel)."""
        tok = torch.arange(start, start + n, device=self.t_pos.device)
        t = self.tokens_per_frame
        return self.t_pos.to(dtype)[tok // t, None] * self.inv_t.to(dtype)[None] + self.spatial.to(dtype)[tok % t]


_ROPE_CACHE: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}


def rope_positions(rope: torch.nn.Module, t_pos: torch.Tensor) -> RopePositions:
    """RopePositions for engine.model.Rope3D ``rope`` and per-frame positions
    ``t_pos`` (the stream's ``_key_positions``). The (T, Dh/2) tables are built
    once per device."""
    dev = t_pos.device
    key = (id(rope), dev)
    tab = _ROPE_CACHE.get(key)
    if tab is None:
        inv_t, spatial = rope._cpu_tables  # (dt/2,), (T, (dh+dw)/2)
        nt, ns = inv_t.shape[0], spatial.shape[1]
        inv_ext = torch.cat((inv_t, torch.zeros(ns))).to(dev)
        sp_ext = torch.cat((torch.zeros(spatial.shape[0], nt), spatial), dim=1).contiguous().to(dev)
        tab = _ROPE_CACHE[key] = (inv_ext, sp_ext)
    return RopePositions(t_pos.to(torch.float32).contiguous(), tab[0], tab[1], rope.tokens_per_frame)


# --------------------------------------------------------------------------
# Torch reference
# --------------------------------------------------------------------------


def _rms(x: torch.Tensor, w: torch.Tensor | None, eps: float) -> torch.Tensor:
    if w is None:
        return x
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.to(x.dtype) * w.to(x.dtype)


def _rot(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def chunk_attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_keys: int,
    q_offset: int,
    rope: RopeTables | RopePositions,
    q_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    key_mask: torch.Tensor | None = None,
    masked: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The torch definition of ``chunk_attention`` (same arguments), computed
    in q's dtype: q (B, Nq, H, Dh) un-normalised, un-rotated; k, v (B, H,
    Ncap, Dh) un-rotated -> (B, Nq, H, Dh)."""
    nq = q.shape[1]
    if isinstance(rope, RopeTables):
        cq, sq = rope.cos_q[:nq], rope.sin_q[:nq]
        ck, sk = rope.cos_k[:n_keys], rope.sin_k[:n_keys]
    else:
        adt = torch.float64 if q.dtype == torch.float64 else torch.float32
        aq, ak = rope.angles(q_offset, nq, adt), rope.angles(0, n_keys, adt)
        cq, sq, ck, sk = aq.cos(), aq.sin(), ak.cos(), ak.sin()
    qh = _rot(_rms(q, q_norm_weight, eps).transpose(1, 2), cq, sq)  # (B, H, Nq, Dh)
    keys = _rot(k[:, :, :n_keys], ck, sk)
    valid = torch.ones(n_keys, dtype=torch.bool, device=q.device)
    if key_mask is not None:
        valid &= key_mask.reshape(-1)[:n_keys].to(torch.bool)
    if masked is not None:
        valid[masked[0] : masked[1]] = False
    o = F.scaled_dot_product_attention(qh, keys, v[:, :, :n_keys], attn_mask=valid.view(1, 1, 1, -1))
    return o.transpose(1, 2)  # (B, Nq, H, Dh)


# --------------------------------------------------------------------------
# Triton kernel
# --------------------------------------------------------------------------


def _chunk_attention_kernel(
    Q, K, V, O, QW,
    COS_Q, SIN_Q, COS_K, SIN_K,
    TPOS, INV_T, SPATIAL,
    KMASK,
    n_q, n_keys, q_offset, seg_lo, seg_hi, tokens_per_frame, n_heads,
    qk_scale, eps,
    s_qb, s_qn, s_qh, s_qd,
    s_kb, s_kh, s_kn, s_kd,
    s_vb, s_vh, s_vn, s_vd,
    s_ob, s_on, s_oh, s_od,
    s_cq, s_ck,
    HALF: tl.constexpr, HALF_P: tl.constexpr,
    ROPE_TABLE: tl.constexpr, HAS_QNORM: tl.constexpr, HAS_KMASK: tl.constexpr,
    DOT_PREC: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_j = tl.arange(0, HALF_P)
    m_ok = offs_m < n_q
    j_ok = offs_j < HALF
    qm = m_ok[:, None] & j_ok[None, :]

    # ---- queries: load, RMSNorm, rotate, scale (fp32) --------------------
    qp = Q + b * s_qb + h * s_qh + offs_m[:, None] * s_qn + offs_j[None, :] * s_qd
    q1 = tl.load(qp, mask=qm, other=0.0).to(tl.float32)
    q2 = tl.load(qp + HALF * s_qd, mask=qm, other=0.0).to(tl.float32)
    if HAS_QNORM:
        ms = (tl.sum(q1 * q1, 1) + tl.sum(q2 * q2, 1)) / (2 * HALF)
        r = 1.0 / tl.sqrt(ms + eps)
        w1 = tl.load(QW + offs_j, mask=j_ok, other=0.0).to(tl.float32)
        w2 = tl.load(QW + HALF + offs_j, mask=j_ok, other=0.0).to(tl.float32)
        q1 = q1 * r[:, None] * w1[None, :]
        q2 = q2 * r[:, None] * w2[None, :]
    if ROPE_TABLE:
        cq = tl.load(COS_Q + offs_m[:, None] * s_cq + offs_j[None, :], mask=qm, other=1.0).to(tl.float32)
        sq = tl.load(SIN_Q + offs_m[:, None] * s_cq + offs_j[None, :], mask=qm, other=0.0).to(tl.float32)
    else:
        tq = q_offset + offs_m
        posq = tl.load(TPOS + tq // tokens_per_frame, mask=m_ok, other=0.0)
        invt = tl.load(INV_T + offs_j, mask=j_ok, other=0.0)
        spq = tl.load(SPATIAL + (tq % tokens_per_frame)[:, None] * HALF + offs_j[None, :], mask=qm, other=0.0)
        ang = posq[:, None] * invt[None, :] + spq
        cq = tl.cos(ang)
        sq = tl.sin(ang)
    qr1 = ((q1 * cq - q2 * sq) * qk_scale).to(K.dtype.element_ty)
    qr2 = ((q1 * sq + q2 * cq) * qk_scale).to(K.dtype.element_ty)
    if UPCAST:  # interpreter: 16-bit dots are not emulated; round to 16 bits, multiply in fp32
        qr1 = qr1.to(tl.float32)
        qr2 = qr2.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc1 = tl.zeros([BLOCK_M, HALF_P], tl.float32)
    acc2 = tl.zeros([BLOCK_M, HALF_P], tl.float32)
    kbase = K + b * s_kb + h * s_kh
    vbase = V + b * s_vb + h * s_vh
    if not ROPE_TABLE:
        invt_k = tl.load(INV_T + offs_j, mask=j_ok, other=0.0)

    # ---- keys: [0, seg_lo) then [seg_hi, n_keys) --------------------------
    for seg in tl.static_range(2):
        if seg == 0:
            lo = 0
            hi = seg_lo
        else:
            lo = seg_hi
            hi = n_keys
        for start in range(lo, hi, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            n_ok = offs_n < hi
            km = n_ok[:, None] & j_ok[None, :]
            kp = kbase + offs_n[:, None] * s_kn + offs_j[None, :] * s_kd
            k1 = tl.load(kp, mask=km, other=0.0).to(tl.float32)
            k2 = tl.load(kp + HALF * s_kd, mask=km, other=0.0).to(tl.float32)
            if ROPE_TABLE:
                ck = tl.load(COS_K + offs_n[:, None] * s_ck + offs_j[None, :], mask=km, other=1.0).to(tl.float32)
                sk = tl.load(SIN_K + offs_n[:, None] * s_ck + offs_j[None, :], mask=km, other=0.0).to(tl.float32)
            else:
                posk = tl.load(TPOS + offs_n // tokens_per_frame, mask=n_ok, other=0.0)
                spk = tl.load(SPATIAL + (offs_n % tokens_per_frame)[:, None] * HALF + offs_j[None, :],
                              mask=km, other=0.0)
                angk = posk[:, None] * invt_k[None, :] + spk
                ck = tl.cos(angk)
                sk = tl.sin(angk)
            kr1 = (k1 * ck - k2 * sk).to(K.dtype.element_ty)
            kr2 = (k1 * sk + k2 * ck).to(K.dtype.element_ty)
            if UPCAST:
                kr1 = kr1.to(tl.float32)
                kr2 = kr2.to(tl.float32)
            s = tl.dot(qr1, tl.trans(kr1), input_precision=DOT_PREC)
            s = tl.dot(qr2, tl.trans(kr2), acc=s, input_precision=DOT_PREC)  # (BLOCK_M, BLOCK_N) fp32, log2 units
            ok = n_ok
            if HAS_KMASK:
                ok = ok & (tl.load(KMASK + offs_n, mask=n_ok, other=0) != 0)
            s = tl.where(ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked tile so far
            alpha = tl.exp2(m_i - m_use)
            p = tl.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vp = vbase + offs_n[:, None] * s_vn + offs_j[None, :] * s_vd
            v1 = tl.load(vp, mask=km, other=0.0)
            v2 = tl.load(vp + HALF * s_vd, mask=km, other=0.0)
            pv = p.to(V.dtype.element_ty)
            if UPCAST:
                pv = pv.to(tl.float32)
                v1 = v1.to(tl.float32)
                v2 = v2.to(tl.float32)
            acc1 = tl.dot(pv, v1, acc=acc1 * alpha[:, None], input_precision=DOT_PREC)
            acc2 = tl.dot(pv, v2, acc=acc2 * alpha[:, None], input_precision=DOT_PREC)
            m_i = m_new

    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    op = O + b * s_ob + h * s_oh + offs_m[:, None] * s_on + offs_j[None, :] * s_od
    tl.store(op, (acc1 / l_i[:, None]).to(O.dtype.element_ty), mask=qm)
    tl.store(op + HALF * s_od, (acc2 / l_i[:, None]).to(O.dtype.element_ty), mask=qm)


def _attn_configs(family: str) -> list[dict]:
    if family == "hopper":
        return [
            {"meta": {"BLOCK_M": bm, "BLOCK_N": bn}, "num_warps": w, "num_stages": st}
            for bm, bn, w, st in [(128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 4, 2),
                                  (64, 128, 4, 3), (128, 32, 4, 3)]
        ]
    if family == "ampere_ada":
        return [
            {"meta": {"BLOCK_M": bm, "BLOCK_N": bn}, "num_warps": w, "num_stages": st}
            for bm, bn, w, st in [(64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 2), (64, 32, 4, 3),
                                  (64, 64, 4, 3)]
        ]
    return [{"meta": {"BLOCK_M": 64, "BLOCK_N": 32}, "num_warps": 4, "num_stages": 1}]


_KERNEL = LazyKernel(
    _chunk_attention_kernel,
    interp_meta={"BLOCK_M": 64, "BLOCK_N": 64},  # few programs: the interpreter pays per op
    configs=_attn_configs,
    key=["n_q", "n_keys", "HALF"],
)


def chunk_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    n_keys: int,
    q_offset: int,
    rope: RopeTables | RopePositions,
    q_norm_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
    key_mask: torch.Tensor | None = None,
    masked: tuple[int, int] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton chunk attention.

    q (B, Nq, H, Dh), any strides (e.g. a view of the qkv projection),
    un-normalised and un-rotated; k, v (B, H, Ncap, Dh) views of the cache
    (``KVCache.k[layer]``), un-rotated keys; the queries' own keys must
    already be in [q_offset, q_offset + Nq). Attends to [0, n_keys) minus
    ``masked`` = (lo, hi) minus the False entries of ``key_mask`` (Nk,) or
    (1, 1, 1, Nk). -> (B, Nq, H, Dh) in q's dtype (or ``out``)."""
    b, nq, nh, dh = q.shape
    if dh % 2:
        raise ValueError("head dim must be even")
    half = dh // 2
    if out is None:
        out = torch.empty((b, nq, nh, dh), device=q.device, dtype=q.dtype)
    lo, hi = masked if masked is not None else (n_keys, n_keys)
    lo, hi = max(0, min(int(lo), n_keys)), max(0, min(int(hi), n_keys))
    if hi < lo:
        lo, hi = n_keys, n_keys
    dummy = q  # never read when its constexpr flag is off
    if isinstance(rope, RopeTables):
        cq, sq, ck, sk = (t if t.stride(-1) == 1 else t.contiguous() for t in
                          (rope.cos_q, rope.sin_q, rope.cos_k, rope.sin_k))
        if sq.stride(0) != cq.stride(0) or sk.stride(0) != ck.stride(0):
            cq, sq, ck, sk = cq.contiguous(), sq.contiguous(), ck.contiguous(), sk.contiguous()
        tpos = inv_t = spatial = dummy
        tpf, s_cq, s_ck, table = 1, cq.stride(0), ck.stride(0), True
    else:
        cq = sq = ck = sk = dummy
        tpos, inv_t, spatial = rope.t_pos, rope.inv_t, rope.spatial
        tpf, s_cq, s_ck, table = rope.tokens_per_frame, 0, 0, False
    kmask = dummy
    if key_mask is not None:
        kmask = key_mask.reshape(-1)
        if kmask.dtype == torch.bool:
            kmask = kmask.view(torch.uint8) if kmask.is_contiguous() else kmask.to(torch.uint8)
    qw = q_norm_weight if q_norm_weight is not None else dummy
    upcast = interpreting() and k.dtype != torch.float32
    prec = "ieee" if (k.dtype == torch.float32 or upcast) else "tf32"
    grid = lambda meta: (triton_cdiv(nq, meta["BLOCK_M"]), b * nh)  # noqa: E731
    _KERNEL[grid](
        q, k, v, out, qw,
        cq, sq, ck, sk,
        tpos, inv_t, spatial,
        kmask,
        nq, n_keys, q_offset, lo, hi, tpf, nh,
        LOG2E / math.sqrt(dh), eps,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        s_cq, s_ck,
        HALF=half, HALF_P=next_pow2(half, 16),
        ROPE_TABLE=table, HAS_QNORM=q_norm_weight is not None, HAS_KMASK=key_mask is not None,
        DOT_PREC=prec, UPCAST=upcast,
    )
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --------------------------------------------------------------------------
# Cost model (bench and floors)
# --------------------------------------------------------------------------


def attention_flops(b: int, h: int, nq: int, nk: int, dh: int) -> float:
    """Matmul FLOPs of one call: QK^T and PV."""
    return 4.0 * b * h * nq * nk * dh


def attention_bytes(b: int, h: int, nq: int, nk: int, dh: int, elem: int) -> float:
    """Minimum traffic: q in, o out, K and V read once."""
    return float(elem) * b * h * dh * (2 * nq + 2 * nk)
