"""Benchmarks of the Triton kernels and of the whole stream with and without them.

    python -m engine.kernels.bench --kernels [--preset paper default laptop]
    python -m engine.kernels.bench --engine --preset paper [--chunks 10] [--no-graphs]
    python -m engine.kernels.bench --floors
    (also: kf-desktop bench --kernels, kf-desktop bench --engine --preset paper)

--kernels: per kernel at a preset's real shapes (a steady-state chunk step:
  F = c + k frames against the full window), Triton against the torch path
  it replaces (attention: rotate the prefix into a copy + SDPA, and SDPA on
  an already rotated copy as the torch stream does from its second step;
  elementwise: the eager block's ops), in ms, TFLOP/s and GB/s, and the
  fraction of this GPU's measured ceilings (bf16 matmul TFLOP/s, device copy
  GB/s).
--engine: the stream (cached, the preset's cache_write) per chunk with the
  torch kernels, the Triton kernels, and Triton + CUDA graphs, in one run:
  ms/chunk, frames/s, video-equivalent FPS, speed-up, distance to the floor.
--floors: FLOPs / bytes floor per chunk and KV memory per preset (no GPU needed).

Without a CUDA GPU the timings cannot run: the command says so, prints the
floors, and exits 0.
"""

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Callable, Sequence

import torch

from engine.config import StreamConfig, get_preset
from engine.kernels.dispatch import ENV, describe
from engine.kernels.floor import NOMINAL_PEAKS, chunk_floor, format_floors, format_kv_memory

GPU_NEEDED = ("a CUDA GPU is needed for the kernel and engine timings (none found: "
              "torch.cuda.is_available() is False); printing the FLOP/byte floors only")


# --------------------------------------------------------------------------
# timing helpers (CUDA)
# --------------------------------------------------------------------------


def _time_ms(fn: Callable[[], Any], reps: int = 30, warmup: int = 5) -> float:
    """Median of CUDA-event timings of fn() (wall clock without CUDA: only
    the tests' interpreter dry run uses that)."""
    if not torch.cuda.is_available():
        fn()
        t0 = time.perf_counter()
        fn()
        return 1000 * (time.perf_counter() - t0)
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def measure_ceilings() -> dict[str, float]:
    """This GPU's achievable bf16 matmul FLOP/s and device-copy bytes/s."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _time_ms(lambda: a @ b, reps=20)
    x = torch.empty(2**29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    ms_copy = _time_ms(lambda: y.copy_(x), reps=20)
    return {"flops": 2 * n**3 / (ms * 1e-3), "bytes": 2 * x.nbytes / (ms_copy * 1e-3)}


# --------------------------------------------------------------------------
# --kernels
# --------------------------------------------------------------------------


def bench_kernels(preset: str, ceilings: dict[str, float], dtype: torch.dtype = torch.bfloat16,
                  device: str = "cuda") -> list[dict[str, Any]]:
    from engine.kernels.attention import (
        RopeTables, attention_bytes, attention_flops, chunk_attention, chunk_attention_reference, rope_positions,
    )
    from engine.kernels.norm import (
        gated_residual, gated_residual_reference, kv_write, kv_write_reference, ln_modulate, ln_modulate_reference,
        modulate_bytes, residual_ln_modulate, residual_ln_modulate_reference,
    )
    from engine.model import Rope3D, apply_rope

    p = get_preset(preset)
    mc, sc = p.model, p.stream
    dev = torch.device(device)
    t, h, dh, d = mc.tokens_per_frame, mc.heads, mc.head_dim, mc.dim
    f = sc.chunk + sc.knot
    nq = f * t
    tail = t * (1 + sc.window)
    ncap = tail + nq
    elem = torch.finfo(dtype).bits // 8
    g = torch.Generator(device=dev).manual_seed(0)
    rope3d = Rope3D(mc)
    t_pos = torch.cat((torch.tensor([float(sc.max_relative_position)]), torch.arange(sc.window).float(),
                       torch.arange(f).float() + sc.window)).to(dev)
    cos, sin = rope3d.angles(t_pos, dtype)
    tables = RopeTables(cos[tail:], sin[tail:], cos, sin)
    positions = rope_positions(rope3d, t_pos)
    k = torch.randn(1, h, ncap, dh, device=dev, dtype=dtype, generator=g)
    v = torch.randn_like(k)
    qkv = torch.randn(1, nq, 3, h, dh, device=dev, dtype=dtype, generator=g)
    q = qkv[:, :, 0]
    w = torch.ones(dh, device=dev, dtype=dtype)
    k_rot = apply_rope(k, cos, sin)
    qr = apply_rope(q.transpose(1, 2), cos[tail:], sin[tail:])
    rows: list[dict[str, Any]] = []

    def row(name: str, ms_tri: float, ms_torch: float, flops: float, nbytes: float, baseline: str) -> None:
        rows.append({
            "preset": preset, "kernel": name, "baseline": baseline, "triton_ms": ms_tri, "torch_ms": ms_torch,
            "speedup": ms_torch / ms_tri, "tflops": flops / (ms_tri * 1e-3) / 1e12 if flops else 0.0,
            "gbps": nbytes / (ms_tri * 1e-3) / 1e9,
            "pct_flops": 100 * flops / (ms_tri * 1e-3) / ceilings["flops"] if flops else 0.0,
            "pct_bw": 100 * nbytes / (ms_tri * 1e-3) / ceilings["bytes"],
        })

    fl, by = attention_flops(1, h, nq, ncap, dh), attention_bytes(1, h, nq, ncap, dh, elem)
    tri_tab = _time_ms(lambda: chunk_attention(q, k, v, n_keys=ncap, q_offset=tail, rope=tables, q_norm_weight=w))
    tri_pos = _time_ms(lambda: chunk_attention(q, k, v, n_keys=ncap, q_offset=tail, rope=positions, q_norm_weight=w))
    torch_first = _time_ms(lambda: chunk_attention_reference(q, k, v, n_keys=ncap, q_offset=tail, rope=tables,
                                                             q_norm_weight=w))
    torch_later = _time_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qr, k_rot, v))
    row("attention (tables)", tri_tab, torch_first, fl, by, "rotate copy + SDPA")
    row("attention (positions)", tri_pos, torch_first, fl, by, "rotate copy + SDPA")
    row("attention (positions)", tri_pos, torch_later, fl, by, "SDPA on k_rot")

    x = torch.randn(1, f, t, d, device=dev, dtype=dtype, generator=g)
    mod = torch.randn(1, f, 6, d, device=dev, dtype=dtype, generator=g)
    y = torch.randn(1, f * t, d, device=dev, dtype=dtype, generator=g)
    sh, scl, gt = mod.unbind(2)[:3]
    r = f * t
    row("ln_modulate", _time_ms(lambda: ln_modulate(x, sh, scl)), _time_ms(lambda: ln_modulate_reference(x, sh, scl)),
        0, modulate_bytes(r, d, elem, False, True), "eager")
    row("residual_ln_modulate", _time_ms(lambda: residual_ln_modulate(x, gt, y, sh, scl)),
        _time_ms(lambda: residual_ln_modulate_reference(x, gt, y, sh, scl)), 0, modulate_bytes(r, d, elem, True, True),
        "eager")
    row("gated_residual", _time_ms(lambda: gated_residual(x, gt, y)), _time_ms(lambda: gated_residual_reference(x, gt, y)),
        0, modulate_bytes(r, d, elem, True, False), "eager")
    kc, vc = torch.empty_like(k), torch.empty_like(v)
    row("kv_write (+k RMSNorm)", _time_ms(lambda: kv_write(qkv[:, :, 1], qkv[:, :, 2], kc, vc, tail, w)),
        _time_ms(lambda: kv_write_reference(qkv[:, :, 1], qkv[:, :, 2], kc, vc, tail, w)), 0, 4.0 * elem * nq * d,
        "eager")
    return rows


def format_kernel_rows(rows: Sequence[dict[str, Any]], ceilings: dict[str, float]) -> str:
    lines = [f"ceilings (measured): {ceilings['flops'] / 1e12:.0f} TFLOP/s bf16 matmul, "
             f"{ceilings['bytes'] / 1e9:.0f} GB/s device copy",
             f"{'preset':<8} {'kernel':<24} {'vs':<20} {'triton ms':>10} {'torch ms':>9} {'x':>6} "
             f"{'TFLOP/s':>8} {'%peak':>6} {'GB/s':>7} {'%bw':>5}"]
    for r in rows:
        lines.append(f"{r['preset']:<8} {r['kernel']:<24} {r['baseline']:<20} {r['triton_ms']:>10.4f} "
                     f"{r['torch_ms']:>9.4f} {r['speedup']:>6.2f} {r['tflops']:>8.1f} {r['pct_flops']:>5.0f}% "
                     f"{r['gbps']:>7.0f} {r['pct_bw']:>4.0f}%")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# --engine
# --------------------------------------------------------------------------


def _stream_chunk_ms(model, scfg: StreamConfig, n_chunks: int, warmup: int) -> tuple[list[float], int]:
    from engine.stream import KnotForcingStream

    mc = model.cfg
    dev = next(model.parameters()).device
    stream = KnotForcingStream(model, scfg, allow_untrained=True, check_values=False, seed=0)
    g = torch.Generator(device=dev).manual_seed(0)
    shape = (1, mc.in_channels, mc.height, mc.width)
    stream.set_reference_encoded(torch.rand(shape, generator=g, device=dev) * 2 - 1)
    guides = [torch.rand(shape, generator=g, device=dev) * 2 - 1 for _ in range(scfg.chunk + scfg.knot)]
    times, n = [], 0
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for j in range(warmup + n_chunks):
        sync()
        t0 = time.perf_counter()
        out = None
        while out is None:
            out = stream.feed_encoded(guides[n % len(guides)])
            n += 1
        sync()
        if j >= warmup:
            times.append(1000 * (time.perf_counter() - t0))
    return times, stream.kv_cache_bytes


def bench_engine(preset: str, n_chunks: int, graphs: bool, ceilings: dict[str, float],
                 dtype: torch.dtype = torch.bfloat16, device: str = "cuda",
                 warmup: int | None = None) -> list[dict[str, Any]]:
    from engine.kernels.dispatch import install
    from engine.kernels.graphs import GraphedModel
    from engine.model import build_model

    p = get_preset(preset)
    mc, sc = p.model, p.stream
    cuda = torch.device(device).type == "cuda"
    model = build_model(mc, init="random", seed=0, device=device, dtype=dtype).eval()
    warmup = math.ceil(sc.window / sc.chunk) + 2 if warmup is None else warmup
    floor = chunk_floor(preset, ceilings["flops"], ceilings["bytes"], elem=torch.finfo(dtype).bits // 8)
    runs = [("torch", "torch", False), ("triton", "triton", False)]
    if graphs:
        runs += [("torch + CUDA graphs", "torch", True), ("triton + CUDA graphs", "triton", True)]
    rows: list[dict[str, Any]] = []
    old = os.environ.get(ENV)
    try:
        for label, backend, graphed in runs:
            os.environ[ENV] = backend  # the stream's KVCache asks the same setting (k_rot or not)
            install(model, backend)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            row: dict[str, Any] = {"preset": preset, "path": label,
                                   "device": torch.cuda.get_device_name() if cuda else str(device),
                                   "dtype": str(dtype).removeprefix("torch."), "kernels": model.kernel_choice.describe()}
            try:
                with torch.no_grad():
                    times, kv = _stream_chunk_ms(GraphedModel(model) if graphed else model, sc, n_chunks, warmup)
            except Exception as e:  # report, keep the other rows
                row["error"] = f"{type(e).__name__}: {e}"
                rows.append(row)
                continue
            med = statistics.median(times)
            vf = floor["video_frames_per_chunk"]
            row.update({
                "chunk_ms": med, "chunk_ms_p90": sorted(times)[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)],
                "frames_per_s": sc.chunk * 1000 / med, "video_fps": vf * 1000 / med,
                "floor_ms": floor["floor_ms"], "x_floor": med / floor["floor_ms"],
                "kv_cache_mib": kv / 2**20,
                "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            })
            rows.append(row)
    finally:
        if old is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = old
    base = next((r for r in rows if r["path"] == "torch" and "chunk_ms" in r), None)
    for r in rows:
        if base and "chunk_ms" in r:
            r["speedup_vs_torch"] = base["chunk_ms"] / r["chunk_ms"]
    return rows


def format_engine_rows(rows: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'preset':<8} {'path':<22} {'ms/chunk':>9} {'p90':>8} {'frames/s':>9} {'video fps':>10} "
             f"{'x torch':>8} {'floor ms':>9} {'x floor':>8} {'KV MiB':>8} {'peak GiB':>9}"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['preset']:<8} {r['path']:<22} failed: {r['error']}")
            continue
        lines.append(f"{r['preset']:<8} {r['path']:<22} {r['chunk_ms']:>9.2f} {r['chunk_ms_p90']:>8.2f} "
                     f"{r['frames_per_s']:>9.2f} {r['video_fps']:>10.2f} {r.get('speedup_vs_torch', float('nan')):>8.2f} "
                     f"{r['floor_ms']:>9.2f} {r['x_floor']:>8.2f} {r['kv_cache_mib']:>8.0f} {r['peak_mem_gib']:>9.2f}")
    if rows:
        lines.append(f"device {rows[0]['device']}, {rows[0]['dtype']}, batch 1; video fps = committed frames x 4 for "
                     "latent presets; floor from this GPU's measured ceilings (engine/kernels/floor.py)")
    return "\n".join(lines)


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="engine.kernels.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--kernels", action="store_true", help="per-kernel timings against torch")
    ap.add_argument("--engine", action="store_true", help="whole-stream chunk time with and without Triton")
    ap.add_argument("--floors", action="store_true", help="only the FLOP/byte floors and KV memory")
    ap.add_argument("--preset", nargs="+", default=None, help="presets (default: paper)")
    ap.add_argument("--chunks", type=int, default=10, help="timed chunks per engine path")
    ap.add_argument("--no-graphs", action="store_true", help="skip the CUDA-graph rows of --engine")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    presets = a.preset or ["paper"]
    print(f"kernels: {describe()}", file=sys.stderr)
    if a.floors or not torch.cuda.is_available():
        if not a.floors:
            print(GPU_NEEDED, file=sys.stderr if a.json else sys.stdout)
        out = {"floors": [chunk_floor(n, *NOMINAL_PEAKS["H200"]) for n in ("default", "laptop", "paper")]}
        print(json.dumps(out, indent=2) if a.json else format_floors() + "\n\n" + format_kv_memory())
        return 0
    ceilings = measure_ceilings()
    result: dict[str, Any] = {"ceilings": ceilings, "kernels_setting": describe()}
    text = [f"kernels: {describe()}"]
    if a.kernels or not a.engine:
        rows = [r for n in presets for r in bench_kernels(n, ceilings)]
        result["kernels"] = rows
        text.append(format_kernel_rows(rows, ceilings))
    if a.engine:
        rows = [r for n in presets for r in bench_engine(n, a.chunks, not a.no_graphs, ceilings)]
        result["engine"] = rows
        text.append(format_engine_rows(rows))
    text.append(format_floors(peaks=(ceilings["flops"], ceilings["bytes"]), device=torch.cuda.get_device_name()))
    print(json.dumps(result, indent=2) if a.json else "\n\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
