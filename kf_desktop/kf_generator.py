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
import torch.nn.functional as F

from engine.config import StreamConfig, get_preset
from engine.stream import KnotForcingStream
from engine.weights import default_weights_dir, random_model, try_load_trained
from kf_desktop.errors import UserError


class ModelUnavailable(UserError):
    """No trained weights: the caller falls back to guide-only and says so."""


class KnotForcingGenerator:
    """Wraps a KnotForcingStream (batch 1). Frames come out ``c`` at a time;
    the crop is resized to the model's resolution and back when they differ."""

    def __init__(self, stream: KnotForcingStream, trained: bool, description: str) -> None:
        self.stream = stream
        self.trained = trained
        self.name = "knot-forcing" if trained else "knot-forcing (UNTRAINED)"
        self.description = description
        self._size = (stream.H, stream.W)
        self._crop_hw: tuple[int, int] | None = None

    def _to_model(self, img: torch.Tensor) -> torch.Tensor:
        """(3, S, S) [0, 1] -> (1, 3, H, W) [0, 1] on the model's device."""
        x = img.to(self.stream.device, torch.float32)[None]
        if tuple(x.shape[-2:]) != self._size:
            x = F.interpolate(x, size=self._size, mode="bilinear", antialias=True,
                              align_corners=False).clamp_(0.0, 1.0)
        return x

    def _from_model(self, frame: torch.Tensor) -> torch.Tensor:
        """(1, 3, H, W) -> (3, S, S) at the crop size, [0, 1], float32."""
        x = frame.float()
        if self._crop_hw is not None and tuple(x.shape[-2:]) != self._crop_hw:
            x = F.interpolate(x, size=self._crop_hw, mode="bilinear", align_corners=False)
        return x[0].clamp(0.0, 1.0)

    def set_reference(self, crop: torch.Tensor) -> None:
        self._crop_hw = tuple(crop.shape[-2:])
        ref = self._to_model(crop)
        if self.stream.has_reference:
            # Prefill the new reference in a shadow slot over the next chunks
            # and swap at a chunk boundary: the output never stalls.
            self.stream.begin_reference_switch(ref)
        else:
            self.stream.set_reference(ref)

    def push(self, guide: torch.Tensor) -> list[torch.Tensor]:
        with torch.inference_mode():
            frames = self.stream.push(self._to_model(guide))
        return [self._from_model(f) for f in frames]

    def flush(self) -> list[torch.Tensor]:
        with torch.inference_mode():
            out = self.stream.flush()
        if out is None:
            return []
        return [self._from_model(out[:, i]) for i in range(out.shape[1])]

    def reset(self) -> None:
        self.stream.reset()


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
    dtype = torch.bfloat16 if str(device).startswith("cuda") else None
    res = try_load_trained(weights or default_weights_dir(), device, dtype)
    if res.model is not None:
        stream = KnotForcingStream(res.model, stream_config)
        return KnotForcingGenerator(stream, True, res.message)
    if not allow_untrained:
        reason = res.message.split(". Running guide-only")[0].split("; running guide-only")[0]
        raise ModelUnavailable(f"the Knot Forcing model is not available ({reason})",
                               "train or install trained weights; --allow-untrained runs an "
                               "UNTRAINED random model to exercise the pipeline")
    preset = get_preset(untrained_preset)
    model, _info = random_model(preset.model, device=device, dtype=dtype)
    stream = KnotForcingStream(model, stream_config or preset.stream, allow_untrained=True)
    return KnotForcingGenerator(stream, False, "randomly initialised (UNTRAINED) default model")
