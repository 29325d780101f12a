"""Engine benchmark: the Knot Forcing stream, cached (both cache-write modes)
next to the plain reference path, in the same run.

Per preset and path: median and p90 milliseconds per chunk, committed frames
per second, committed tokens per second (frames/s x tokens per frame), peak
memory, KV-cache size, worst-case latency (buffering + one chunk at 25 fps).

Paths:
- ``cached/clean_pass``       KV_ref + KV_pre ring buffer; one extra forward
                              of the c committed frames at t = 0 writes KV_pre;
- ``cached/reuse_last_step``  same, KV_pre takes the last step's keys/values;
- ``plain``                   the naive implementation: no cache, each of the
                              S steps recomputes a full-sequence forward over
                              [reference, window frames, chunk].

Weights are random (the benchmark measures speed, not quality); latent
presets (``paper``) run on random latents of the right shape. Timing starts
once the window is full (steady state). Memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` per path; on CPU the process's peak RSS
(VmHWM, reset per path where the kernel allows it; otherwise a running max).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Sequence

import torch

from engine.config import StreamConfig, get_preset
from engine.model import build_model, count_parameters
from engine.stream import KnotForcingStream

PATHS = (("cached", "clean_pass"), ("cached", "reuse_last_step"), ("plain", "clean_pass"))
TARGET_FPS = 25.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> str:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return "cuda_max_allocated"
    try:  # Linux: "5" resets the peak RSS (VmHWM) of this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return "peak_rss"
    except OSError:
        return "peak_rss_running_max"


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _bench_path(
    model, scfg: StreamConfig, attention: str, device: torch.device, n_chunks: int, warmup: int
) -> dict[str, Any]:
    mc = model.cfg
    stream = KnotForcingStream(model, scfg, attention=attention, allow_untrained=True, check_values=False, seed=0)
    g = torch.Generator(device=device).manual_seed(0)
    shape = (1, mc.in_channels, mc.height, mc.width)
    ref = torch.rand(shape, generator=g, device=device) * 2 - 1  # codec space
    guides = [torch.rand(shape, generator=g, device=device) * 2 - 1 for _ in range(scfg.chunk + scfg.knot)]
    mem_kind = _reset_peak(device)
    stream.set_reference_encoded(ref)
    times: list[float] = []
    n_feed = 0
    for j in range(warmup + n_chunks):
        _sync(device)
        t0 = time.perf_counter()
        out = None
        while out is None:
            out = stream.feed_encoded(guides[n_feed % len(guides)])
            n_feed += 1
        _sync(device)
        if j >= warmup:
            times.append(time.perf_counter() - t0)
    peak = _peak_mib(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    med = statistics.median(times)
    p90 = sorted(times)[min(len(times) - 1, math.ceil(0.9 * len(times)) - 1)]
    fps = scfg.chunk / med
    return {
        "chunk_ms": 1000 * med,
        "chunk_ms_p90": 1000 * p90,
        "frames_per_s": fps,
        "tokens_per_s": fps * mc.tokens_per_frame,
        "peak_mem_mib": peak,
        "mem_kind": mem_kind,
        "kv_cache_mib": stream.kv_cache_bytes / 2**20,
        "latency_ms": 1000 * stream.latency_frames / TARGET_FPS + 1000 * med,
        "chunks_timed": len(times),
        "load_avg_1m": load,
    }


def run_engine_bench(
    preset_names: Sequence[str] = ("default",),
    device: str | torch.device = "cpu",
    n_chunks: int = 3,
    dtype: torch.dtype | None = None,
    warmup: int | None = None,
    paths: Sequence[tuple[str, str]] = PATHS,
) -> list[dict[str, Any]]:
    """Benchmark rows, one per (preset, path). dtype None -> fp32 on CPU,
    bf16 on CUDA. warmup None -> enough chunks to fill the window, plus one."""
    dev = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    rows: list[dict[str, Any]] = []
    for name in preset_names:
        preset = get_preset(name)
        mc, sc = preset.model, preset.stream
        model = build_model(mc, init="random", seed=0, device=dev, dtype=dtype).eval()
        n_params = count_parameters(model)
        w = warmup if warmup is not None else math.ceil(sc.window / sc.chunk) + 1
        for attention, write in paths:
            scfg = StreamConfig(**{**sc.to_dict(), "cache_write": write})
            label = "plain" if attention == "plain" else f"cached/{write}"
            with torch.no_grad():
                res = _bench_path(model, scfg, attention, dev, n_chunks, w)
            rows.append(
                {
                    "preset": name,
                    "path": label,
                    "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
                    "dtype": str(dtype).removeprefix("torch."),
                    "threads": torch.get_num_threads(),
                    "params_m": n_params / 1e6,
                    "tokens_per_frame": mc.tokens_per_frame,
                    "c": sc.chunk,
                    "k": sc.knot,
                    "L": sc.window,
                    "S": sc.steps,
                    **res,
                }
            )
        del model
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    for r in rows:  # speed-up against the plain path of the same preset
        plain = [p for p in rows if p["preset"] == r["preset"] and p["path"] == "plain"]
        r["speedup_vs_plain"] = plain[0]["chunk_ms"] / r["chunk_ms"] if plain else float("nan")
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    cols = [
        ("preset", "preset", "{}"),
        ("path", "path", "{}"),
        ("device", "device", "{}"),
        ("dtype", "dtype", "{}"),
        ("params_m", "params M", "{:.1f}"),
        ("tokens_per_frame", "tok/frame", "{}"),
        ("chunk_ms", "ms/chunk", "{:.1f}"),
        ("chunk_ms_p90", "p90 ms", "{:.1f}"),
        ("frames_per_s", "frames/s", "{:.2f}"),
        ("tokens_per_s", "tokens/s", "{:.0f}"),
        ("speedup_vs_plain", "x plain", "{:.2f}"),
        ("peak_mem_mib", "peak MiB", "{:.0f}"),
        ("kv_cache_mib", "KV MiB", "{:.1f}"),
        ("latency_ms", "latency ms", "{:.0f}"),
        ("threads", "threads", "{}"),
        ("load_avg_1m", "load", "{:.1f}"),
    ]
    table = [[h for _, h, _ in cols]]
    for r in rows:
        table.append([fmt.format(r[k]) for k, _, fmt in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) if i >= 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if rows:
        r0 = rows[0]
        mem = {"cuda_max_allocated": "torch.cuda.max_memory_allocated",
               "peak_rss": "process peak RSS, reset per path",
               "peak_rss_running_max": "process peak RSS (running max)"}.get(r0["mem_kind"], r0["mem_kind"])
        lines.append("")
        lines.append(
            f"c={r0['c']} k={r0['k']} L={r0['L']} S={r0['S']}; {r0['chunks_timed']} timed chunks after the window filled; "
            f"tokens/s = committed frames/s x tokens/frame; peak memory = {mem}; "
            f"latency = worst-case buffering (c-1 frames at {TARGET_FPS:g} fps, knot_guide=hold) + ms/chunk; "
            f"load = 1-minute load average after the path (CPU timings are only comparable at similar load)."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_engine", description="Knot Forcing engine benchmark (cached vs plain path).")
    p.add_argument("--presets", nargs="+", default=None,
                   help="default: 'laptop default' on CPU, 'laptop default paper' on CUDA")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--chunks", type=int, default=None, help="timed chunks per path (default 3 on CPU, 10 on CUDA)")
    p.add_argument("--warmup", type=int, default=None, help="untimed chunks first (default: fill the window + 1)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    a = p.parse_args(argv)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.threads:
        torch.set_num_threads(a.threads)
    # laptop = the shipped CPU model; default = the larger 256 px preset (GPU)
    presets = a.presets or (["laptop", "default", "paper"] if device.startswith("cuda") else ["laptop", "default"])
    chunks = a.chunks or (10 if device.startswith("cuda") else 3)
    from engine.hardware import inference_dtype

    # the dtype the app runs the model in on this device (bf16 on CUDA and on CPUs with native bf16)
    name = a.dtype or inference_dtype(device)
    dtype = getattr(torch, name) if name else None
    rows = run_engine_bench(presets, device, chunks, dtype, warmup=a.warmup)
    if a.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

