"""Facts about the machine that decide how the engine runs (no devices opened)."""

from __future__ import annotations

from pathlib import Path


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """True on CPUs whose bf16 matmuls are native (AVX-512 BF16 or AMX). There
    bf16 measured 1.2-2x faster than fp32 for the laptop model (issue 12's
    tables: training with autocast, streaming with bf16 weights); elsewhere
    bf16 is emulated and slower, so fp32 is used."""
    try:
        flags = Path(cpuinfo).read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def inference_dtype(device: str) -> str | None:
    """The dtype the shipped model runs in on ``device``: 'bfloat16' on CUDA
    and on CPUs with native bf16, else None (the weights' own, fp32)."""
    if str(device).startswith("cuda"):
        return "bfloat16"
    if str(device) == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return None
