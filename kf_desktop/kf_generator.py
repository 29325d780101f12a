"""The Knot Forcing generator as a session stage (see generators.Generator).

Loads the shipped weights (resources/models/default) by sha256. A randomly
initialised model is never shown to a user as a trained one: without trained
weights ``load_knot_forcing`` refuses with a message and the app runs
guide-only, unless the caller explicitly asks for an untrained model
(``--allow-untrained``, for plumbing tests and benchmarks), in which case
every label says UNTRAINED.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import StreamConfig, get_preset
from engine.detail import FullResStream
from engine.mouth_region import MouthRegionStream, RegionSpec
from engine.serving import EngineStream
from engine.hardware import inference_dtype
from engine.stream import KnotForcingStream
from engine.weights import default_weights_dir, random_model, try_load_trained
from kf_desktop.errors import UserError


class ModelUnavailable(UserError):
    """No trained weights: the caller falls back to guide-only and says so."""


class KnotForcingGenerator:
    """Wraps a KnotForcingStream (batch 1) at the crop's resolution: frames
    come out ``c`` at a time; a model smaller than the crop generates its
    correction of the guide at its own size and the guide keeps its detail
    (engine/detail.py)."""

    def __init__(self, stream: KnotForcingStream, trained: bool, description: str,
                 region: RegionSpec | None = None) -> None:
        # Frames are made by a one-slot serving engine with the stream's model,
        # config and seed (engine/serving.py): a portrait switch is prefilled
        # inside the chunk steps under a fixed token budget and swapped exactly
        # switch_chunks chunks later, with no stall.
        self.stream = EngineStream.from_stream(stream)
        # the mouth model works on the mouth region cut with the landmarks
        # (engine/mouth_region.py); the head models on the whole (scaled) crop
        self.region = region
        self.full = MouthRegionStream(self.stream, region) if region is not None else FullResStream(self.stream)
        self.trained = trained
        self.name = "knot-forcing" if trained else "knot-forcing (UNTRAINED)"
        self.description = description
        #: Chunks handed out, and those the engine found non-finite (their
        #: frames were replaced by the guide and the window was reset).
        self.chunks_out = 0
        self.nonfinite_chunks = 0

    def pop_events(self) -> list[str]:
        """What went wrong inside the model since the last call, one line each
        (the engine's ``nonfinite_recovered`` events)."""
        n = sum(1 for kind, *_ in self.stream.pop_events() if kind == "nonfinite_recovered")
        self.nonfinite_chunks += n
        if not n:
            return []
        return [f"the Knot Forcing model produced non-finite values ({n} chunk"
                f"{'s' if n > 1 else ''}): those frames show the motion guide instead, and "
                "the model restarted from the portrait"]

    @property
    def never_finite(self) -> bool:
        """Every chunk so far was non-finite: the output is guide-only."""
        return self.chunks_out > 0 and self.nonfinite_chunks >= self.chunks_out

    @staticmethod
    def _batch(img: torch.Tensor) -> torch.Tensor:
        """(3, S, S) [0, 1] -> (1, 3, S, S) float32."""
        return img.to(torch.float32)[None]

    def _needs(self, landmarks, what: str):
        if landmarks is None:
            raise ValueError(f"the mouth-region model needs the {what} landmarks")
        return torch.as_tensor(landmarks, dtype=torch.float32)[None, :, :2]

    def set_reference(self, crop: torch.Tensor, landmarks=None) -> None:
        # A running stream prefills the new reference in a shadow slot over
        # the next chunks and swaps at a chunk boundary: the output never stalls.
        if self.region is not None:
            self.full.set_reference(self._batch(crop), self._needs(landmarks, "portrait's"), switch=True)
        else:
            self.full.set_reference(self._batch(crop), switch=True)

    def push(self, guide: torch.Tensor, landmarks=None) -> list[torch.Tensor]:
        with torch.inference_mode():
            if self.region is not None:
                frames = self.full.push(self._batch(guide), self._needs(landmarks, "target"))
            else:
                frames = self.full.push(self._batch(guide))
        self.chunks_out += -(-len(frames) // self.stream.c)
        return [f[0] for f in frames]

    def flush(self) -> list[torch.Tensor]:
        with torch.inference_mode():
            frames = [f[0] for f in self.full.flush()]
        self.chunks_out += -(-len(frames) // self.stream.c)
        return frames

    def reset(self) -> None:
        self.full.reset()


def describe_shipped_model(path: Path | None = None) -> tuple[bool, str, str]:
    """(ok, detail, fix) for `kf-desktop doctor`; never builds a random model."""
    from engine.weights import read_config, verify_files

    path = path or default_weights_dir()
    if not path.exists():
        return (False, f"no trained Knot Forcing weights in {path}: the app runs guide-only",
                "train the default model (kf-desktop train, on a GPU) or copy a trained "
                "checkpoint (model.safetensors + config.json) there")
    try:
        doc = read_config(path)
        verify_files(path, doc)
    except ValueError as e:
        return False, str(getattr(e, "message", e)), str(getattr(e, "hint", ""))
    if not doc.get("trained"):
        return False, f"weights in {path} are marked untrained", "train them first"
    return True, f"{path} (sha256 verified)", ""


def load_knot_forcing(device: str, weights: Path | None = None,
                      allow_untrained: bool = False,
                      stream_config: StreamConfig | None = None,
                      untrained_preset: str = "default") -> KnotForcingGenerator:
    """The trained model from ``weights`` (default: the shipped one)."""
    # bf16 on CUDA and on CPUs with native bf16 (1.2x faster here for the laptop model)
    name = inference_dtype(device)
    dtype = getattr(torch, name) if name else None
    res = try_load_trained(weights or default_weights_dir(), device, dtype)
    if res.model is not None:
        # the stream settings the model was trained (and evaluated) with
        trained_cfg = (res.info.training.get("stream_config") if res.info else None) or None
        if stream_config is None and trained_cfg:
            stream_config = StreamConfig.from_dict(trained_cfg)
        stream = KnotForcingStream(res.model, stream_config)
        return KnotForcingGenerator(stream, True, res.message, RegionSpec.from_record(res.info.training if res.info else {}))
    if not allow_untrained:
        reason = res.message.split(". Running guide-only")[0].split("; running guide-only")[0]
        raise ModelUnavailable(f"the Knot Forcing model is not available ({reason})",
                               "train or install trained weights; --allow-untrained runs an "
                               "UNTRAINED random model to exercise the pipeline")
    preset = get_preset(untrained_preset)
    model, _info = random_model(preset.model, device=device, dtype=dtype)
    stream = KnotForcingStream(model, stream_config or preset.stream, allow_untrained=True)
    region = RegionSpec.for_model(preset.model.height, preset.model.width) if preset.extra.get("region") else None
    return KnotForcingGenerator(stream, False, f"randomly initialised (UNTRAINED) {untrained_preset} model", region)

