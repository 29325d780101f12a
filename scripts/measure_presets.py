#!/usr/bin/env python
"""Measure laptop-preset candidates on this CPU (issue 12): parameters,
tokens per frame, training samples/s (the real trainer step on the real
dataset: windows, augmentation, guides, forward + backward, optimizer) in
fp32 and bf16 autocast, where one training step's time goes, and the
stream's steady-state frames/s (KnotForcingStream.push, model alone) in
fp32 and bf16 weights for a few stream settings.

    python scripts/measure_presets.py --data /work/data_cache/kf128 [--seconds 15]

Random weights: it measures speed, not quality. Figures are medians of
repeated timings; the machine is shared, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.config import ModelConfig, StreamConfig  # noqa: E402
from engine.model import build_model, count_parameters  # noqa: E402
from engine.stream import KnotForcingStream  # noqa: E402

CANDIDATES = {
    "A 128px p16 d256 x6": dict(height=128, width=128, patch=16, dim=256, depth=6, heads=4, mlp_dim=768),
    "B 128px p16 d192 x4": dict(height=128, width=128, patch=16, dim=192, depth=4, heads=4, mlp_dim=576),
    "C 128px p8 d192 x4": dict(height=128, width=128, patch=8, dim=192, depth=4, heads=4, mlp_dim=576),
    "D 128px p16 d320 x8": dict(height=128, width=128, patch=16, dim=320, depth=8, heads=5, mlp_dim=960),
}
STREAMS = {
    "S2 reuse L6": dict(steps=2, cache_write="reuse_last_step", window=6),
    "S4 clean L6": dict(steps=4, cache_write="clean_pass", window=6),
    "S1 reuse L6": dict(steps=1, cache_write="reuse_last_step", window=6),
}


def train_rate(data: str, over: dict, bf16: bool, seconds: float, batch: int) -> tuple[float, dict]:
    from engine.training.trainer import TrainConfig, Trainer

    out = Path("/tmp/kf_measure_train")
    tc = TrainConfig(data=data, out=str(out), preset="default", batch=batch, bf16=bf16, steps=10**9,
                     model_overrides=dict(over, predict="guide_residual"), stream_overrides=dict(window=6),
                     log_every=10**9, ckpt_every=0)
    tr = Trainer(tc, log=lambda m: None)
    # one step's split: batch assembly (windows, augmentation, guides) vs model
    t0 = time.perf_counter()
    wins = tr.sampler.sample_batch(batch)
    b = tr.builder.build(wins)
    t1 = time.perf_counter()
    pred = tr._forward(b)
    loss = ((pred.float() - b.target) ** 2).mean()
    t2 = time.perf_counter()
    loss.backward()
    t3 = time.perf_counter()
    split = {"batch_ms": (t1 - t0) * 1e3, "fwd_ms": (t2 - t1) * 1e3, "bwd_ms": (t3 - t2) * 1e3}
    tr.train_step()
    times = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 3:
        t = time.perf_counter()
        tr.train_step()
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times), split


def stream_rate(over: dict, sover: dict, dtype: torch.dtype, seconds: float) -> float:
    mc = ModelConfig(**dict(over, predict="guide_residual")).validate()
    model = build_model(mc, init="random", seed=0, dtype=dtype)
    sc = StreamConfig(**sover).validate()
    st = KnotForcingStream(model, sc, allow_untrained=True)
    g = torch.rand(1, 3, mc.height, mc.width)
    st.set_reference(g)
    with torch.inference_mode():
        for _ in range(sc.chunk * (sc.window // sc.chunk + 3)):
            st.push(g)
        times = []
        end = time.monotonic() + seconds
        while time.monotonic() < end or len(times) < 3:
            t = time.perf_counter()
            for _ in range(sc.chunk):
                st.push(g)
            times.append(time.perf_counter() - t)
    return sc.chunk / statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="dataset at 128 px (kf_desktop.dataset_build --size 128)")
    ap.add_argument("--seconds", type=float, default=12.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--only", nargs="*", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    for name, over in CANDIDATES.items():
        if a.only and not any(name.startswith(o) for o in a.only):
            continue
        mc = ModelConfig(**over).validate()
        params = count_parameters(build_model(mc)) / 1e6
        r32, _ = train_rate(a.data, over, False, a.seconds, a.batch)
        r16, split = train_rate(a.data, over, True, a.seconds, a.batch)
        fps = {}
        for sname, sover in STREAMS.items():
            fps[sname] = (stream_rate(over, sover, torch.float32, a.seconds / 2),
                          stream_rate(over, sover, torch.bfloat16, a.seconds / 2))
        rows.append((name, params, mc.tokens_per_frame, r32, r16, split, fps))
        print(f"{name}: {params:.2f} M params, {mc.tokens_per_frame} tok/frame, train {r32:.2f} / {r16:.2f} "
              f"samples/s (fp32 / bf16), bf16 step split: batch {split['batch_ms']:.0f} ms, "
              f"fwd {split['fwd_ms']:.0f} ms, bwd {split['bwd_ms']:.0f} ms; stream fps (fp32 / bf16): "
              + ", ".join(f"{k} {v[0]:.1f} / {v[1]:.1f}" for k, v in fps.items()), flush=True)
    print()
    hdr = "| candidate | params | tok/frame | train samples/s fp32 | bf16 | " + " | ".join(
        f"{k} fps fp32 / bf16" for k in STREAMS) + " |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for name, params, tok, r32, r16, split, fps in rows:
        print(f"| {name} | {params:.2f} M | {tok} | {r32:.2f} | {r16:.2f} | "
              + " | ".join(f"{v[0]:.1f} / {v[1]:.1f}" for v in fps.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
