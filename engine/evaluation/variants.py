"""What is compared: the generator, guide-only, and two ablations.

- ``generator``: KnotForcingStream with the trained StreamConfig;
- ``guide_only``: the motion guide itself (what the app shows without a model);
- ``no_knot``: the same model with k = 0 (no knot, no Eq. 5 fusion);
- ``fixed_ref``: no running ahead: the reference keeps one absolute temporal
  position (n_init) for the whole stream, so it falls ever further behind the
  window (relative position n_init - window start).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch

from engine.config import StreamConfig
from engine.detail import FullResStream
from engine.model import KnotForcingDiT
from engine.stream import KnotForcingStream

VARIANTS = ("generator", "guide_only", "no_knot", "fixed_ref")


@dataclasses.dataclass(frozen=True)
class FixedRefStreamConfig(StreamConfig):
    """A StreamConfig whose reference never runs ahead (ablation)."""

    def ref_position(self, chunk_start: int) -> int:  # noqa: D401
        return self.n_init


def variant_config(cfg: StreamConfig, variant: str) -> StreamConfig:
    if variant in ("generator", "guide_only"):
        return cfg
    if variant == "no_knot":
        return dataclasses.replace(cfg, knot=0).validate()
    if variant == "fixed_ref":
        return FixedRefStreamConfig(**cfg.to_dict()).validate()
    raise ValueError(f"unknown variant {variant!r}; use one of {VARIANTS}")


@torch.no_grad()
def run_variant(variant: str, model: KnotForcingDiT | None, cfg: StreamConfig, reference: torch.Tensor,
                guides: Iterable[torch.Tensor], n: int, seed: int = 0,
                on_frame: Callable[[int, torch.Tensor], None] | None = None, keep: bool = True) -> torch.Tensor | None:
    """reference (1, 3, S, S) and guides (1, 3, S, S) per frame in [0, 1], S >=
    the model's size (a smaller model adds its correction to the full-size
    guide, engine/detail.py, as the app does) ->
    (n, 3, S, S) output frames (or None with keep=False; ``on_frame(i, frame)``
    sees every frame, for long drift runs)."""
    outs: list[torch.Tensor] = []
    i = 0

    def emit(fr: torch.Tensor) -> None:
        nonlocal i
        for f in fr:
            if i >= n:
                return
            if on_frame is not None:
                on_frame(i, f)
            if keep:
                outs.append(f.cpu())
            i += 1

    if variant == "guide_only":
        for g in guides:
            emit(g)
        return torch.stack(outs) if keep else None
    if model is None:
        raise ValueError("a model is needed for the generator variants")
    st = FullResStream(KnotForcingStream(model, variant_config(cfg, variant), batch_size=1, seed=seed,
                                         allow_untrained=True))
    st.set_reference(reference)
    for g in guides:
        o = st.push(g)
        if o:
            emit(torch.cat(o))
    for f in st.flush():  # (1, 3, S, S) each
        emit(f)
    return torch.stack(outs) if keep else None
