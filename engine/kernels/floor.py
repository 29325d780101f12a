"""What a chunk costs at least: FLOPs and bytes per chunk for a preset, the
time floor on a given GPU, and the KV memory the rotated copy costs.

Counting (batch B = 1 unless given, one chunk in steady state):

- a chunk runs S denoising forwards of F = c + k frames (N = F*T query
  tokens) against n_keys = R + L*T + N buffer tokens (the ring is read whole
  once the window is full), plus with ``cache_write = "clean_pass"`` one
  forward of the c committed frames at t = 0 (its last block only writes
  keys and values);
- FLOPs: 2 * m * n * k per matmul (patch embed, qkv, attention QK^T and PV,
  output projection, MLP, adaLN, head); softmax, norms and RoPE are not
  counted (they are < 1 % here);
- bytes (the fused floor): every weight read once per forward, K and V of
  the keys read once per layer and the forward's own K/V written once,
  and each matmul's input read and output written once, the fused
  elementwise kernels reading and writing the residual stream once each
  (engine/kernels/norm.py); nothing else;
- floor time = max(FLOPs / peak FLOP/s, bytes / peak B/s) per forward, summed.

Frames: a chunk commits c frames. For latent presets (codec "latent", the
Wan 2.1 VAE shape) one latent frame stands for ``VIDEO_FRAMES_PER_LATENT``
= 4 video frames (the VAE's temporal compression), which is how
"video-equivalent FPS" is counted; pixel presets count 1.
"""

from dataclasses import dataclass
from typing import Any

from engine.config import ModelConfig, StreamConfig, get_preset

VIDEO_FRAMES_PER_LATENT = 4

#: Nominal dense bf16 tensor-core peak and HBM bandwidth (vendor figures),
#: used when no measured ceiling is given. Name -> (FLOP/s, bytes/s).
NOMINAL_PEAKS: dict[str, tuple[float, float]] = {
    "H100 SXM": (989e12, 3.35e12),
    "H200": (989e12, 4.8e12),
    "A100 80GB": (312e12, 2.04e12),
    "RTX 4090": (165e12, 1.01e12),
}


@dataclass(frozen=True)
class ForwardCost:
    name: str
    n_q: int  # query tokens
    n_keys: int
    flops_linear: float
    flops_attention: float
    bytes_weights: float
    bytes_kv: float
    bytes_act: float

    @property
    def flops(self) -> float:
        return self.flops_linear + self.flops_attention

    @property
    def bytes(self) -> float:
        return self.bytes_weights + self.bytes_kv + self.bytes_act

    def floor_s(self, peak_flops: float, peak_bw: float) -> float:
        return max(self.flops / peak_flops, self.bytes / peak_bw)


def _params(mc: ModelConfig) -> int:
    d, hid = mc.dim, mc.hidden_dim
    per_block = 3 * d * d + 3 * d + d * d + d + d * hid + hid + hid * d + d + 2 * mc.head_dim * mc.qk_norm
    per_block += 6 * d if mc.adaln == "shared" else d * 6 * d + 6 * d
    n = mc.depth * per_block
    n += mc.patch_dim * d + d + mc.time_freq_dim * d + d + d * d + d + d * 2 * d + 2 * d + d * mc.out_patch_dim + mc.out_patch_dim
    if mc.adaln == "shared":
        n += d * 6 * d + 6 * d
    return n


def forward_cost(mc: ModelConfig, sc: StreamConfig, n_frames: int, *, kv_only: bool = False,
                 elem: int = 2, batch: int = 1, name: str = "") -> ForwardCost:
    t, d, hid, depth = mc.tokens_per_frame, mc.dim, mc.hidden_dim, mc.depth
    n = batch * n_frames * t
    nk = t * (1 + sc.window) + n_frames * t  # per batch item
    full = depth - (1 if kv_only else 0)  # blocks that run attention + MLP
    per_full = 2 * n * (3 * d * d + d * d + 2 * d * hid)
    lin = full * per_full + (2 * n * 3 * d * d if kv_only else 0)  # the kv-only block still projects
    lin += 2 * n * mc.patch_dim * d  # patch embed
    ada_rows = batch * n_frames
    lin += (depth if mc.adaln == "per_block" else 1) * 2 * ada_rows * d * 6 * d
    if not kv_only:
        lin += 2 * n * d * mc.out_patch_dim + 2 * ada_rows * d * 2 * d  # head + final adaLN
    att = full * 4.0 * n * nk * d  # all heads: H * Dh = D
    w = _params(mc) * elem
    kv = depth * elem * (2 * batch * nk * d + 2 * n * d)  # read K, V of the keys; write own K, V
    act_full = elem * n * (2 * d + (d + 3 * d) + 2 * d + (d + d) + 4 * d + (d + hid) + (hid + d) + 3 * d)
    act = full * act_full + (elem * n * (2 * d + 4 * d) if kv_only else 0)
    return ForwardCost(name, n, nk, float(lin), float(att), float(w), float(kv), float(act))


def chunk_costs(mc: ModelConfig, sc: StreamConfig, *, elem: int = 2, batch: int = 1) -> list[ForwardCost]:
    """The forwards of one steady-state chunk."""
    f = sc.chunk + sc.knot
    out = [forward_cost(mc, sc, f, elem=elem, batch=batch, name=f"step {s + 1}/{sc.steps}") for s in range(sc.steps)]
    if sc.cache_write == "clean_pass":
        out.append(forward_cost(mc, sc, sc.chunk, kv_only=True, elem=elem, batch=batch, name="clean pass"))
    return out


def video_frames_per_chunk(mc: ModelConfig, sc: StreamConfig) -> int:
    return sc.chunk * (VIDEO_FRAMES_PER_LATENT if mc.codec == "latent" else 1)


def chunk_floor(preset: str, peak_flops: float, peak_bw: float, *, elem: int = 2,
                cache_write: str | None = None) -> dict[str, Any]:
    """Totals and the floor of one chunk of ``preset`` on a device with these peaks."""
    p = get_preset(preset)
    sc = p.stream if cache_write is None else StreamConfig(**{**p.stream.to_dict(), "cache_write": cache_write})
    costs = chunk_costs(p.model, sc, elem=elem)
    floor = sum(c.floor_s(peak_flops, peak_bw) for c in costs)
    vf = video_frames_per_chunk(p.model, sc)
    return {
        "preset": preset,
        "cache_write": sc.cache_write,
        "forwards": len(costs),
        "tflop": sum(c.flops for c in costs) / 1e12,
        "tflop_attention": sum(c.flops_attention for c in costs) / 1e12,
        "gbytes": sum(c.bytes for c in costs) / 1e9,
        "gbytes_weights": sum(c.bytes_weights for c in costs) / 1e9,
        "gbytes_kv": sum(c.bytes_kv for c in costs) / 1e9,
        "floor_ms": 1000 * floor,
        "frames_per_chunk": sc.chunk,
        "video_frames_per_chunk": vf,
        "fps_ceiling": sc.chunk / floor,
        "video_fps_ceiling": vf / floor,
        "params_m": _params(p.model) / 1e6,
    }


def kv_memory(preset: str, *, elem: int = 2, batch: int = 1) -> dict[str, Any]:
    """KV cache bytes of a preset's stream with and without ``k_rot``."""
    p = get_preset(preset)
    mc, sc = p.model, p.stream
    t = mc.tokens_per_frame
    ncap = t * (1 + sc.window + sc.chunk + sc.knot)
    one = mc.depth * batch * mc.heads * ncap * mc.head_dim * elem  # one K-sized buffer
    return {
        "preset": preset,
        "ncap_tokens": ncap,
        "bytes_with_k_rot": 3 * one,
        "bytes_without_k_rot": 2 * one,
        "bytes_saved": one,
        "elem_bytes": elem,
    }


def format_floors(presets=("default", "laptop", "paper"), device: str = "H200",
                  peaks: tuple[float, float] | None = None) -> str:
    pf, bw = peaks or NOMINAL_PEAKS[device]
    src = "measured" if peaks else "nominal"
    lines = [f"FLOP/byte floor per chunk (bf16, batch 1, {src} {device}: {pf / 1e12:.0f} TFLOP/s, {bw / 1e12:.2f} TB/s)",
             f"{'preset':<8} {'cache_write':<16} {'params M':>9} {'TFLOP':>9} {'attn %':>7} {'GB':>8} "
             f"{'floor ms':>9} {'frames/s':>9} {'video fps':>10}"]
    for name in presets:
        own = get_preset(name).stream.cache_write
        for cw in ("clean_pass", "reuse_last_step"):
            r = chunk_floor(name, pf, bw, cache_write=cw)
            label = cw + ("*" if cw == own else "")
            lines.append(f"{name:<8} {label:<16} {r['params_m']:>9.1f} {r['tflop']:>9.3f} "
                         f"{100 * r['tflop_attention'] / r['tflop']:>6.0f}% {r['gbytes']:>8.2f} {r['floor_ms']:>9.2f} "
                         f"{r['fps_ceiling']:>9.1f} {r['video_fps_ceiling']:>10.1f}")
    lines.append("(frames/s = committed frames / floor; video fps counts 4 video frames per latent frame for "
                 "latent presets; * = the preset's own cache_write)")
    return "\n".join(lines)


def format_kv_memory(presets=("tiny", "default", "laptop", "paper")) -> str:
    lines = ["KV cache per stream (batch 1): with k_rot (torch path) vs without (Triton attention, RoPE on read)",
             f"{'preset':<8} {'Ncap':>7} {'dtype':>6} {'with k_rot':>12} {'without':>12} {'saved':>12}"]

    def mib(x: float) -> str:
        return f"{x / 2**20:.2f} MiB" if x < 2**30 else f"{x / 2**30:.2f} GiB"

    for name in presets:
        for elem, dt in ((2, "bf16"), (4, "fp32")):
            r = kv_memory(name, elem=elem)
            lines.append(f"{name:<8} {r['ncap_tokens']:>7} {dt:>6} {mib(r['bytes_with_k_rot']):>12} "
                         f"{mib(r['bytes_without_k_rot']):>12} {mib(r['bytes_saved']):>12}")
    return "\n".join(lines)
