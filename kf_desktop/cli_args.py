"""Argument types of the CLI: every option is checked for its type and range
when it is parsed, so a bad value is a one-line usage error (exit 2), never a
traceback or a 200,000-frame render. No heavy imports here."""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

#: Output frame rates the sinks and meeting apps handle.
FPS_RANGE = (1.0, 120.0)
#: Longest render / live run in seconds (a day).
MAX_SECONDS = 24 * 3600.0
#: Longest benchmark session.
MAX_BENCH_SECONDS = 3600.0
MAX_CAMERA_INDEX = 63
DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d{1,2})?)$", re.IGNORECASE)


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1280x720, got {text!r}") from None
    if not (16 <= w <= 7680 and 16 <= h <= 4320) or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(
            f"size {w}x{h} is out of range: use even sizes from 16x16 to 7680x4320")
    return w, h


def finite_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return v


def float_in(lo: float, hi: float, *, lo_open: bool = False,
             unit: str = "") -> Callable[[str], float]:
    """A float type for argparse: finite, in [lo, hi] (or (lo, hi])."""
    def parse(text: str) -> float:
        v = finite_float(text)
        if v > hi or v < lo or (lo_open and v == lo):
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: use a value in {left}{lo:g}, {hi:g}]{unit}")
        return v

    parse.__name__ = "number"  # argparse names the type in its messages
    return parse


def positive_float(text: str) -> float:
    """Any finite number > 0 (kept for callers outside the CLI)."""
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


fps_value = float_in(*FPS_RANGE, unit=" frames per second")
seconds_value = float_in(0.0, MAX_SECONDS, lo_open=True, unit=" seconds")
bench_seconds_value = float_in(0.0, MAX_BENCH_SECONDS, lo_open=True, unit=" seconds")


def camera_index(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"camera must be an index like 0, got {text!r}") from None
    if not 0 <= v <= MAX_CAMERA_INDEX:
        raise argparse.ArgumentTypeError(
            f"camera {v} is out of range: use 0 to {MAX_CAMERA_INDEX} (`kf-desktop doctor` lists them)")
    return v


def device_spec(text: str) -> str:
    if not DEVICE_SPEC.match(text.strip()):
        raise argparse.ArgumentTypeError(f"device must be auto, cpu, cuda or cuda:N, got {text!r}")
    return text.strip().lower()
