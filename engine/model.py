"""The causal video DiT behind Knot Forcing.

One small readable file (after gpt-fast's model.py). Per frame the input is
the channel concatenation [noisy frame, motion guide, knot mask, knot frame]
(``ModelConfig.frame_channels`` = 3 C + 1); the model predicts the clean frame
x0 in [-1, 1] codec space (x-prediction).

    frames (B, F, 3C+1, H, W) --patchify--> (B, F, T, 3C+1 * p * p)
        --linear--> (B, F, T, D) --N blocks--> --adaLN + linear--> (B, F, T, C*p*p)
        --unpatchify--> x0 (B, F, C, H, W)

With ``ModelConfig.stem == "conv"`` (the mouth model, docs/MOUTH_MODEL.md)
a convolutional stem and decoder sit around the same transformer:

    frames (B*F, 3C+1, H, W) --conv s2--> s1 (sc, H/2, W/2) --conv s2--> s2 (2sc, H/4, W/4)
        --patchify (patch/4)--> --linear--> tokens (B, F, T, D) --N blocks-->
        --adaLN + linear--> (2sc, H/4, W/4) --[cat s2] conv, up x2--> --[cat s1] conv, up x2-->
        --[cat frames] conv (zero init)--> x0 (B, F, C, H, W)

Each block: adaLN-zero modulation from the per-frame timestep (so the
reference at t = 0 and a chunk at t can share one forward), self attention
with 3D RoPE over (t, h, w) and q/k RMSNorm, an MLP.

Attention runs in one of two modes, chosen by ``AttnSpec``:
- full:   keys are this forward's own tokens, with an optional boolean mask
          (the plain reference path and the tests' full-sequence forwards);
- cached: this forward's un-rotated keys and values are written into a KV
          buffer at ``write_at`` and the queries attend to buffer tokens
          [0, n_keys) (KV_ref + KV_pre + this chunk), rotated at read with
          ``cos_k``/``sin_k`` (into ``k_rot`` once per chunk for the cached
          prefix, every forward for the chunk's own tokens). See
          engine/kv_cache.py for the layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig


# --------------------------------------------------------------------------
# RoPE
# --------------------------------------------------------------------------


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (j, j + Dh/2) of the last dim. x (..., N, Dh); cos, sin (N, Dh/2)."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., N, Dh/2) each
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def apply_rope_into(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """apply_rope written into ``out`` (same shape, must not alias x): four
    passes, no temporaries, no concatenation."""
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-1.0)  # x1 cos - x2 sin
    torch.mul(x1, sin, out=o2).addcmul_(x2, cos)  # x1 sin + x2 cos
    return out


class Rope3D(nn.Module):
    """3D rotary embedding. The head dim's Dh/2 rotation pairs are split into
    temporal, height and width groups (``ModelConfig.rope_split``); spatial
    angles are fixed per token of a frame, temporal angles come from a
    per-frame position that the caller supplies (positions are relative to
    the window start, so they stay small however long a stream runs)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dt, dh, dw = cfg.rope_split
        hp, wp = cfg.grid

        def inv_freq(d: int) -> torch.Tensor:  # (d/2,)
            return 1.0 / (cfg.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64, device="cpu") / d))

        # explicit CPU: a model built under `with torch.device("meta")` still gets real tables
        ys = torch.arange(hp, dtype=torch.float64, device="cpu").repeat_interleave(wp)  # (T,) row of each token
        xs = torch.arange(wp, dtype=torch.float64, device="cpu").repeat(hp)  # (T,) column of each token
        spatial = torch.cat(
            (ys[:, None] * inv_freq(dh)[None], xs[:, None] * inv_freq(dw)[None]), dim=1
        )  # (T, (dh + dw)/2)
        # Plain attributes, not buffers: the tables must stay fp32 when the model
        # is cast to bf16/fp16 (angles up to ~30 rad lose digits in 16 bits).
        # They follow the positions' device lazily (one copy per device).
        self._cpu_tables = (inv_freq(dt).float(), spatial.float())
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.tokens_per_frame = hp * wp

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tab = self._tables.get(device)
        if tab is None:
            tab = tuple(t.to(device) for t in self._cpu_tables)  # type: ignore[assignment]
            self._tables[device] = tab  # type: ignore[assignment]
        return tab  # type: ignore[return-value]

    def angles(self, t_pos: torch.Tensor, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """t_pos (F,) temporal positions -> cos, sin (F*T, Dh/2), frame-major."""
        f = t_pos.shape[0]
        t = self.tokens_per_frame
        inv_t, spatial = self._tables_on(t_pos.device)
        temporal = t_pos.to(torch.float32)[:, None] * inv_t[None]  # (F, dt/2)
        ang = torch.cat(
            (
                temporal[:, None, :].expand(f, t, temporal.shape[1]),  # (F, T, dt/2)
                spatial[None].expand(f, t, spatial.shape[1]),  # (F, T, (dh+dw)/2)
            ),
            dim=2,
        ).reshape(f * t, -1)  # (F*T, Dh/2)
        cos, sin = ang.cos(), ang.sin()
        if dtype is not None:
            cos, sin = cos.to(dtype), sin.to(dtype)
        return cos, sin


# --------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features. t (...) float -> (..., dim), computed in fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t.to(torch.float32)[..., None] * freqs  # (..., half)
    emb = torch.cat((torch.cos(args), torch.sin(args)), dim=-1)  # (..., 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


@dataclass
class AttnSpec:
    """Where a forward's attention keys come from (see module docstring)."""

    cos_q: torch.Tensor  # (Nq, Dh/2) rotation of this forward's tokens
    sin_q: torch.Tensor
    mask: torch.Tensor | None = None  # bool, True = may attend; (Nq, Nk) or (1, 1, 1, Nk)
    k_cache: torch.Tensor | None = None  # (n_layers, B, H, Ncap, Dh) un-rotated keys
    v_cache: torch.Tensor | None = None  # (n_layers, B, H, Ncap, Dh)
    # Rotated keys, derived from k_cache for the current chunk's positions.
    # Tokens [0, rotate_from) are already rotated (done by the chunk's first
    # forward; positions do not change within a chunk), [rotate_from, n_keys)
    # are rotated by this forward. None: rotate everything into a temporary.
    k_rot: torch.Tensor | None = None
    rotate_from: int = 0
    write_at: int = 0  # buffer token offset for this forward's keys/values
    n_keys: int = 0  # attend to buffer tokens [0, n_keys)
    cos_k: torch.Tensor | None = None  # (n_keys, Dh/2)
    sin_k: torch.Tensor | None = None
    # Optional (Ncap / T,) temporal position of each buffer frame: the fused
    # kernels (engine/kernels) then compute the angles on read instead of
    # loading cos_k/sin_k. The eager path ignores it.
    t_pos: torch.Tensor | None = None


class Block(nn.Module):
    #: Fused implementation of forward (engine/kernels/dispatch.py installs
    #: it on CUDA); None = the eager code below.
    kernels = None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, eps = cfg.dim, cfg.norm_eps
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=eps)
        self.qkv = nn.Linear(d, 3 * d)
        self.q_norm = RMSNorm(cfg.head_dim, eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, eps) if cfg.qk_norm else nn.Identity()
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=eps)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.hidden_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.hidden_dim, d)
        )
        self.shared_adaln = cfg.adaln == "shared"
        if self.shared_adaln:
            self.ada_bias = nn.Parameter(torch.zeros(6, d))  # added to the shared projection
        else:
            self.ada = nn.Linear(d, 6 * d)  # silu(temb) -> 6 modulation vectors

    def modulation(self, tcond: torch.Tensor) -> torch.Tensor:
        """per_block: tcond = temb (B, F, D); shared: tcond (B, F, 6, D). -> (B, F, 6, D)."""
        if self.shared_adaln:
            return tcond + self.ada_bias.to(tcond.dtype)
        return self.ada(F.silu(tcond)).unflatten(-1, (6, -1))

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """h (B, N, D) -> q, k, v (B, H, N, Dh), q/k normalised, not rotated."""
        b, n, _ = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, self.head_dim).unbind(2)  # (B, N, H, Dh)
        q, k = self.q_norm(q), self.k_norm(k)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def pre_attention(self, x: torch.Tensor, tcond: torch.Tensor) -> torch.Tensor:
        """x (B, F, T, D) -> the modulated attention input (B, F*T, D)."""
        b, f, t, d = x.shape
        sh1, sc1 = self.modulation(tcond).unsqueeze(2).unbind(3)[:2]  # (B, F, 1, D) each
        return (self.norm1(x) * (1 + sc1) + sh1).reshape(b, f * t, d)

    def keys_values(self, x: torch.Tensor, tcond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-rotated keys and values this block computes for x (B, F, T, D)
        -> (B, H, F*T, Dh) each (what the KV cache stores)."""
        _, k, v = self.project(self.pre_attention(x, tcond))
        return k, v

    def attention(self, h: torch.Tensor, attn: AttnSpec, layer: int, kv_only: bool) -> torch.Tensor | None:
        b, n, d = h.shape  # (B, N, D), N = F*T frame-major
        q, k, v = self.project(h)  # (B, H, N, Dh)
        if attn.k_cache is None:
            if kv_only:
                raise ValueError("kv_only needs a KV buffer")
            keys = apply_rope(k, attn.cos_q, attn.sin_q)
            values = v
        else:
            kc, vc = attn.k_cache[layer], attn.v_cache[layer]  # (B, H, Ncap, Dh)
            a = attn.write_at
            kc[:, :, a : a + n].copy_(k)  # keys stored un-rotated
            vc[:, :, a : a + n].copy_(v)
            if kv_only:
                return None
            nk = attn.n_keys
            if attn.k_rot is None:
                keys = apply_rope(kc[:, :, :nk], attn.cos_k, attn.sin_k)  # (B, H, Nk, Dh)
            else:
                r0, kr = attn.rotate_from, attn.k_rot[layer]
                apply_rope_into(kc[:, :, r0:nk], attn.cos_k[r0:nk], attn.sin_k[r0:nk], out=kr[:, :, r0:nk])
                keys = kr[:, :, :nk]  # (B, H, Nk, Dh)
            values = vc[:, :, :nk]
        q = apply_rope(q, attn.cos_q, attn.sin_q)
        o = F.scaled_dot_product_attention(q, keys, values, attn_mask=attn.mask)  # (B, H, N, Dh)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))  # (B, N, D)

    def forward(
        self, x: torch.Tensor, tcond: torch.Tensor, attn: AttnSpec, layer: int, kv_only: bool = False
    ) -> torch.Tensor | None:
        if self.kernels is not None:  # NotImplemented: this case stays on the eager code
            out = self.kernels.block_forward(self, x, tcond, attn, layer, kv_only)
            if out is not NotImplemented:
                return out
        b, f, t, d = x.shape  # (B, F, T, D)
        mod = self.modulation(tcond).unsqueeze(2)  # (B, F, 1, 6, D): one set per frame
        sh1, sc1, g1, sh2, sc2, g2 = mod.unbind(3)  # (B, F, 1, D) each
        h = self.norm1(x) * (1 + sc1) + sh1
        a = self.attention(h.reshape(b, f * t, d), attn, layer, kv_only)
        if a is None:
            return None
        x = x + g1 * a.view(b, f, t, d)
        h = self.norm2(x) * (1 + sc2) + sh2
        return x + g2 * self.mlp(h)


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


class ConvStem(nn.Module):
    """Two stride-2 3x3 stages: frames (N, 3C+1, H, W) -> s1 (N, sc, H/2, W/2),
    s2 (N, 2sc, H/4, W/4). Both are the decoder's skip features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        sc = cfg.stem_channels
        self.conv1 = nn.Conv2d(cfg.frame_channels, sc, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(sc, 2 * sc, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s1 = F.silu(self.conv1(x))
        return s1, F.silu(self.conv2(s1))


class ConvDecoder(nn.Module):
    """Token features at 1/4 resolution back to pixels through the stem's
    skips and the input frame: (N, 2sc, H/4, W/4) -> (N, C, H, W)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        sc, cin = cfg.stem_channels, cfg.frame_channels
        self.up2 = nn.Conv2d(4 * sc, 2 * sc, 3, padding=1)  # [tokens, s2] at H/4
        self.up1 = nn.Conv2d(3 * sc, sc, 3, padding=1)  # [up(.), s1] at H/2
        self.out = nn.Conv2d(sc + cin, cfg.in_channels, 3, padding=1)  # [up(.), frames] at H

    def forward(self, h: torch.Tensor, frames: torch.Tensor, s1: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.up2(torch.cat((h, s2), 1)))
        h = F.interpolate(h, size=s1.shape[-2:], mode="nearest")  # (N, 2sc, H/2, W/2)
        h = F.silu(self.up1(torch.cat((h, s1), 1)))
        h = F.interpolate(h, size=frames.shape[-2:], mode="nearest")  # (N, sc, H, W)
        return self.out(torch.cat((h, frames), 1))


class KnotForcingDiT(nn.Module):
    #: "torch" | "triton": the kernels chosen at the first forward
    #: (engine.kernels.install; KF_KERNELS overrides). None = not chosen yet.
    kernel_backend: str | None = None

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        d = cfg.dim
        if cfg.stem == "conv":
            self.stem = ConvStem(cfg)
            self.decoder = ConvDecoder(cfg)
        self.patch_embed = nn.Linear(cfg.patch_dim, d)
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        if cfg.adaln == "shared":
            self.time_proj = nn.Linear(d, 6 * d)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=cfg.norm_eps)
        self.ada_out = nn.Linear(d, 2 * d)
        self.head = nn.Linear(d, cfg.out_patch_dim)
        self.rope = Rope3D(cfg)
        #: True only when weights were loaded from a checkpoint marked trained
        #: (engine/weights.py). Streams refuse untrained models unless asked.
        self.trained = False
        self.init_weights("adaln_zero")

    # ---- init ------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, mode: str = "adaln_zero", generator: torch.Generator | None = None) -> None:
        """Initialise every parameter (the model may come from ``to_empty``).
        'adaln_zero': DiT init, modulation and output head zero (each block
        starts as the identity; the untrained output is 0). 'random': every
        weight random, for tests and benchmarks that need non-trivial outputs."""
        if mode not in ("adaln_zero", "random"):
            raise ValueError(f"unknown init mode {mode!r}")
        done: set[int] = set()

        def mark(*ps: torch.Tensor) -> None:
            done.update(id(p) for p in ps)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1.0, generator=generator)
                if mode == "random":
                    nn.init.normal_(m.bias, std=0.02, generator=generator)
                else:
                    nn.init.zeros_(m.bias)
                mark(m.weight, m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                if mode == "random":
                    nn.init.normal_(m.bias, std=0.02, generator=generator)
                else:
                    nn.init.zeros_(m.bias)
                mark(m.weight, m.bias)
            elif isinstance(m, RMSNorm):
                if mode == "random":
                    # sharp attention (|logit| up to ~9*sqrt(Dh)), as in trained
                    # models, so tests notice a wrong position or mask
                    nn.init.normal_(m.weight, mean=3.0, std=0.3, generator=generator)
                else:
                    nn.init.ones_(m.weight)
                mark(m.weight)
            elif isinstance(m, Block) and m.shared_adaln:
                if mode == "random":
                    nn.init.normal_(m.ada_bias, std=0.1, generator=generator)
                else:
                    nn.init.zeros_(m.ada_bias)
                mark(m.ada_bias)
        for lin in self.time_embed:
            if isinstance(lin, nn.Linear):
                nn.init.normal_(lin.weight, std=0.02, generator=generator)
        zero: list[nn.Linear] = [self.ada_out, self.head]
        zero += [b.ada for b in self.blocks if hasattr(b, "ada")]
        if hasattr(self, "time_proj"):
            zero.append(self.time_proj)
        for lin in zero:
            if mode == "adaln_zero":
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
            else:
                lin.weight.mul_(0.5)  # keep modulations O(1) so depth does not blow up
        if hasattr(self, "decoder") and mode == "adaln_zero":
            # the untrained conv model outputs 0 too (= the guide with guide_residual)
            nn.init.zeros_(self.decoder.out.weight)
            nn.init.zeros_(self.decoder.out.bias)
        missed = [n for n, p in self.named_parameters() if id(p) not in done]
        if missed:
            raise RuntimeError(f"init_weights left parameters uninitialised: {missed}")

    # ---- pieces (also used by the stream's layer-by-layer reference prefill)
    def patchify(self, frames: torch.Tensor, p: int | None = None) -> torch.Tensor:
        """(B, F, Cin, H, W) -> (B, F, T, Cin*p*p)."""
        b, f, c, h, w = frames.shape
        p = self.cfg.patch if p is None else p
        x = frames.reshape(b, f, c, h // p, p, w // p, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (B, F, Hp, Wp, C, p, p)
        return x.reshape(b, f, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, p: int | None = None, c: int | None = None) -> torch.Tensor:
        """(B, F, T, C*p*p) -> (B, F, C, H, W) (H = Hp * p)."""
        b, f, _, _ = tokens.shape
        cfg = self.cfg
        p = cfg.patch if p is None else p
        c = cfg.in_channels if c is None else c
        hp, wp = cfg.grid
        x = tokens.reshape(b, f, hp, wp, c, p, p).permute(0, 1, 4, 2, 5, 3, 6)  # (B, F, C, Hp, p, Wp, p)
        return x.reshape(b, f, c, hp * p, wp * p)

    def stem_features(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """conv stem: frames (B, F, 3C+1, H, W) -> s1 (B*F, sc, H/2, W/2), s2 (B*F, 2sc, H/4, W/4)."""
        return self.stem(frames.flatten(0, 1).to(self.patch_embed.weight.dtype))

    def embed(self, frames: torch.Tensor, skips: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, F, 3C+1, H, W) -> tokens (B, F, T, D)."""
        if self.cfg.stem == "conv":
            b, f = frames.shape[:2]
            s2 = (skips if skips is not None else self.stem_features(frames))[1]
            cells = self.patchify(s2.unflatten(0, (b, f)), self.cfg.patch // 4)  # (B, F, T, 2sc*q*q)
            return self.patch_embed(cells)
        return self.patch_embed(self.patchify(frames.to(self.patch_embed.weight.dtype)))

    def time_condition(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """sigma (B, F) in [0, 1] -> temb (B, F, D) and the blocks' tcond
        ((B, F, D) per_block, (B, F, 6, D) shared)."""
        dtype = self.patch_embed.weight.dtype
        tf = timestep_embedding(sigma * self.cfg.time_scale, self.cfg.time_freq_dim).to(dtype)  # (B, F, freq)
        temb = self.time_embed(tf)  # (B, F, D)
        if self.cfg.adaln == "shared":
            return temb, self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, F, 6, D)
        return temb, temb

    def run_blocks(
        self,
        x: torch.Tensor,
        tcond: torch.Tensor,
        attn: AttnSpec,
        start: int = 0,
        stop: int | None = None,
        kv_only: bool = False,
    ) -> torch.Tensor | None:
        """Blocks [start, stop). With kv_only the last one only writes its keys
        and values (nothing after it is needed) and None is returned."""
        stop = self.cfg.depth if stop is None else stop
        if self.kernel_backend is None:
            from engine.kernels.dispatch import install

            install(self)
        for i in range(start, stop):
            x = self.blocks[i](x, tcond, attn, i, kv_only=kv_only and i == stop - 1)
        return x

    def final(self, x: torch.Tensor, temb: torch.Tensor, frames: torch.Tensor | None = None,
              skips: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, F, T, D) -> x0 (B, F, C, H, W). The conv decoder also needs the
        forward's input frames (B, F, 3C+1, H, W) (and reuses their stem
        features ``skips`` when the caller kept them)."""
        shift, scale = self.ada_out(F.silu(temb)).unsqueeze(2).chunk(2, dim=-1)  # (B, F, 1, D) each
        h = self.head(self.norm_out(x) * (1 + scale) + shift)  # (B, F, T, out_patch_dim)
        if self.cfg.stem != "conv":
            return self.unpatchify(h)
        if frames is None:
            raise ValueError("the conv decoder needs the input frames")
        b, f = x.shape[:2]
        s1, s2 = skips if skips is not None else self.stem_features(frames)
        h = self.unpatchify(h, self.cfg.patch // 4, 2 * self.cfg.stem_channels).flatten(0, 1)  # (B*F, 2sc, H/4, W/4)
        out = self.decoder(h, frames.flatten(0, 1).to(h.dtype), s1, s2)  # (B*F, C, H, W)
        return out.unflatten(0, (b, f))

    # ---- forward -----------------------------------------------------------
    def forward(
        self, frames: torch.Tensor, sigma: torch.Tensor, attn: AttnSpec, kv_only: bool = False
    ) -> torch.Tensor | None:
        """frames (B, F, 3C+1, H, W), sigma (B, F) -> x0 (B, F, C, H, W) in the
        model dtype; None with kv_only (a cache-writing pass)."""
        temb, tcond = self.time_condition(sigma)
        skips = self.stem_features(frames) if self.cfg.stem == "conv" else None
        x = self.run_blocks(self.embed(frames, skips), tcond, attn, kv_only=kv_only)
        if kv_only:
            return None
        x0 = self.final(x, temb, frames, skips)  # (B, F, C, H, W)
        if self.cfg.predict == "guide_residual":
            c = self.cfg.in_channels
            x0 = x0 + frames[:, :, c : 2 * c].to(x0.dtype)  # the guide channels, codec space
        return x0

    def forward_full(
        self,
        frames: torch.Tensor,
        sigma: torch.Tensor,
        t_pos: torch.Tensor,
        frame_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Plain full-sequence forward without any cache. t_pos (F,) temporal
        positions; frame_mask (F, F) bool, True where query frame i may attend
        to key frame j (None = all). -> x0 (B, F, C, H, W)."""
        dtype = self.patch_embed.weight.dtype
        cos, sin = self.rope.angles(t_pos, dtype)  # (F*T, Dh/2)
        mask = None
        if frame_mask is not None:
            t = self.cfg.tokens_per_frame
            mask = frame_mask.repeat_interleave(t, 0).repeat_interleave(t, 1)  # (F*T, F*T)
        return self.forward(frames, sigma, AttnSpec(cos_q=cos, sin_q=sin, mask=mask))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(
    cfg: ModelConfig,
    *,
    init: str = "adaln_zero",
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> KnotForcingDiT:
    """A freshly initialised (untrained: ``model.trained is False``) model,
    allocated and initialised directly on ``device`` (a 1.3 B model is never
    materialised on the CPU first). The same seed gives the same weights on
    the same device type."""
    with torch.device("meta"):
        model = KnotForcingDiT(cfg)  # shapes only
    dev = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to_empty(device=dev)
    if dtype is not None:
        model = model.to(dtype)
    gen = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None
    model.init_weights(init, generator=gen)
    model.trained = False
    return model
