"""The generator stage: turns motion-guide crops into output crops.

Two implementations share one small interface so the session runtime does not
care which one runs:
- ``GuideOnlyGenerator``: the warp itself (the honest baseline and the
  fallback on machines too slow for the neural generator);
- ``KnotForcingGenerator``: the Knot Forcing stream from engine/ (frames come
  out in chunks of ``c``, so pushes return 0 or ``c`` frames).
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch


class Generator(Protocol):
    name: str
    #: True only for a neural model loaded from trained weights.
    trained: bool

    def set_reference(self, crop: torch.Tensor) -> None:
        """crop: (3, S, S) float in [0, 1], the portrait's head crop."""

    def push(self, guide: torch.Tensor) -> list[torch.Tensor]:
        """guide: (3, S, S) in [0, 1]. Returns the frames now ready, oldest
        first, each (3, S, S) in [0, 1]; frame i answers the i-th oldest
        guide not yet answered."""

    def flush(self) -> list[torch.Tensor]:
        """Finish any partial chunk at the end of a finite stream."""

    def reset(self) -> None:
        """Forget history (e.g. after a long source outage)."""


class GuideOnlyGenerator:
    """Passes the motion guide through unchanged."""

    name = "guide-only"
    trained = False

    def set_reference(self, crop: torch.Tensor) -> None:
        pass

    def push(self, guide: torch.Tensor) -> list[torch.Tensor]:
        return [guide]

    def flush(self) -> list[torch.Tensor]:
        return []

    def reset(self) -> None:
        pass


def auto_mode(device: str, weights=None) -> str:
    """The default: the Knot Forcing model where it can run in real time (a
    CUDA GPU and trained weights that pass their sha256 check), else
    guide-only. The default model runs ~22x slower than real time on a
    2-core CPU (`kf-desktop bench --engine`), so the CPU never picks it."""
    if not str(device).startswith("cuda"):
        return "guide"
    from kf_desktop.kf_generator import describe_shipped_model

    ok, _detail, _fix = describe_shipped_model(weights)
    return "generator" if ok else "guide"


def make_generator(mode: str, device: str, *, weights=None, allow_untrained: bool = False,
                   untrained_preset: str = "default",
                   on_fallback: Callable[[str, str], None] | None = None) -> Generator:
    """'auto' -> see auto_mode; 'guide' -> GuideOnlyGenerator; 'generator' -> the Knot Forcing model
    (trained weights, or a clearly labelled untrained one when allowed).

    Without trained weights the generator mode falls back to guide-only and
    tells ``on_fallback(message, hint)``; a random model is never used
    silently."""
    if mode == "auto":
        mode = auto_mode(device, weights)
    if mode == "guide":
        return GuideOnlyGenerator()
    if mode == "generator":
        from kf_desktop.kf_generator import ModelUnavailable, load_knot_forcing

        try:
            return load_knot_forcing(device, weights, allow_untrained=allow_untrained,
                                     untrained_preset=untrained_preset)
        except ModelUnavailable as e:
            if on_fallback is None:
                raise
            on_fallback(e.message + "; running guide-only", e.hint)
            return GuideOnlyGenerator()
    raise ValueError(f"unknown generator mode {mode!r}")
