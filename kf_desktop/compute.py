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
