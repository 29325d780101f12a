"""The fused implementation of ``engine.model.Block.forward`` (cached mode).

Per block, the eager path's ~20 passes become:

    ln_modulate (LN1 + shift/scale)            1 kernel
    qkv projection                             cuBLAS
    kv_write (k RMSNorm + K/V into the cache)  1 kernel (no transpose copy)
    chunk_attention (q RMSNorm + q/k RoPE +    1 kernel (no rotated copy, no
      masked online softmax over the cache)      concatenation, no transpose)
    output projection                          cuBLAS
    residual_ln_modulate (x + g1*a, LN2 mod)   1 kernel
    MLP                                        cuBLAS + GELU
    gated_residual (x + g2*mlp)                1 kernel

It returns ``NotImplemented`` (the block then runs its eager code) when
autograd is on (the kernels have no backward: training stays eager), for
full-sequence attention without a cache (``forward_full``, the plain path),
for 2-D masks, and for tensors on a device the kernels cannot run on.
"""

import torch

from engine.kernels._triton import interpreting
from engine.kernels.attention import RopeTables, chunk_attention, rope_positions
from engine.kernels.norm import gated_residual, kv_write, ln_modulate, residual_ln_modulate


class TritonBlockKernels:
    name = "triton"

    def supports(self, x: torch.Tensor, attn) -> bool:
        if torch.is_grad_enabled() or attn.k_cache is None:
            return False
        if not (x.is_cuda or (interpreting() and x.device.type == "cpu")):
            return False
        m = attn.mask
        return m is None or (m.dim() == 4 and tuple(m.shape[:3]) == (1, 1, 1))

    def block_forward(self, blk, x: torch.Tensor, tcond: torch.Tensor, attn, layer: int, kv_only: bool):
        if not self.supports(x, attn):
            return NotImplemented
        b, f, t, d = x.shape
        n = f * t
        eps = blk.norm1.eps
        sh1, sc1, g1, sh2, sc2, g2 = blk.modulation(tcond).unbind(2)  # (B, F, D) views of (B, F, 6, D)
        h = ln_modulate(x, sh1, sc1, eps)
        qkv = blk.qkv(h.view(b, n, d)).view(b, n, 3, blk.heads, blk.head_dim)
        q, k, v = qkv.unbind(2)  # (B, N, H, Dh) views
        kc, vc = attn.k_cache[layer], attn.v_cache[layer]  # (B, H, Ncap, Dh), read and written in place
        qw = getattr(blk.q_norm, "weight", None)
        kw = getattr(blk.k_norm, "weight", None)
        qk_eps = getattr(blk.q_norm, "eps", eps)
        kv_write(k, v, kc, vc, attn.write_at, kw, qk_eps)
        if kv_only:
            return None
        t_pos = getattr(attn, "t_pos", None)
        if t_pos is not None:  # per-frame positions: angles computed in the kernel
            rope = rope_positions(blk_rope(blk), t_pos)
        else:
            rope = RopeTables(attn.cos_q, attn.sin_q, attn.cos_k, attn.sin_k)
        o = chunk_attention(q, kc, vc, n_keys=attn.n_keys, q_offset=attn.write_at, rope=rope,
                            q_norm_weight=qw, eps=qk_eps, key_mask=attn.mask)  # (B, N, H, Dh)
        a = blk.proj(o.view(b, n, d))
        x, h = residual_ln_modulate(x, g1, a, sh2, sc2, eps)
        return gated_residual(x, g2, blk.mlp(h.view(b, n, d)))


def blk_rope(blk):
    """The model's Rope3D for a block (set by dispatch.install)."""
    rope = getattr(blk, "_kf_rope", None)
    if rope is None:
        raise RuntimeError("AttnSpec.t_pos needs the block's Rope3D: install the kernels with engine.kernels.install(model)")
    return rope[0]
