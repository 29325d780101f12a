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
from engine.mouth_region import MouthRegionStream, RegionSpec
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
                guides: Iterable, n: int, seed: int = 0,
                on_frame: Callable[[int, torch.Tensor], None] | None = None, keep: bool = True,
                region: RegionSpec | None = None, ref_lms: torch.Tensor | None = None) -> torch.Tensor | None:
    """reference (1, 3, S, S) and per frame (guide (1, 3, S, S) [0, 1], target
    landmarks (1, 478, 2)), S >= the model's size (a smaller model adds its
    correction to the full-size guide, engine/detail.py; a mouth model
    (``region``, with the reference's landmarks ``ref_lms``) works on the
    mouth region and is pasted back, engine/mouth_region.py; as the app
    does) -> (n, 3, S, S) output frames (or None with keep=False;
    ``on_frame(i, frame)`` sees every frame, for long drift runs)."""
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
        for g, _ in guides:
            emit(g)
        return torch.stack(outs) if keep else None
    if model is None:
        raise ValueError("a model is needed for the generator variants")
    ks = KnotForcingStream(model, variant_config(cfg, variant), batch_size=1, seed=seed, allow_untrained=True)
    if region is not None:
        st = MouthRegionStream(ks, region)
        st.set_reference(reference, ref_lms)
        push = st.push
    else:
        st = FullResStream(ks)
        st.set_reference(reference)
        push = lambda g, _lm: st.push(g)  # noqa: E731
    for g, lm in guides:
        o = push(g, lm)
        if o:
            emit(torch.cat(o))
    for f in st.flush():  # (1, 3, S, S) each
        emit(f)
    return torch.stack(outs) if keep else None
