"""Choosing the compute device."""

from __future__ import annotations

from kf_desktop.errors import UserError


def resolve_device(spec: str = "auto") -> str:
    """'auto' -> 'cuda' when a CUDA GPU is usable, else 'cpu'. An explicit
    'cuda' on a machine without one is a user error with a fix."""
    import torch

    spec = (spec or "auto").lower()
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: no CUDA GPU is available to PyTorch",
                            "use --device cpu (or auto), or install a CUDA build of torch")
        return spec
    raise UserError(f"unknown device {spec!r}", "use auto, cpu or cuda[:N]")


def engine_threads(guide_only: bool, cores: int | None = None) -> int:
    """torch intra-op threads for the engine thread on a CPU. With few cores:
    one, because the capture thread (mediapipe) needs the other core, and two
    OpenMP threads fighting it made guide-only 3-10x and the laptop model ~20x
    slower on a loaded 2-core machine (issue 12: 0.5 vs 11 frames/s). With
    more cores the model keeps all but two. ``KF_ENGINE_THREADS`` overrides
    (benchmarks compare settings with it)."""
    import os

    env = os.environ.get("KF_ENGINE_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    cores = cores or os.cpu_count() or 1
    if guide_only or cores <= 3:
        return 1
    return cores - 2
