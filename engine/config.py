"""Model and stream configuration for the Knot Forcing generator.

Every size the model and the stream use comes from here: tokens per frame, the
RoPE split of the head dimension, cache sizes and the reference-position range
are *derived* from these fields, never written as constants elsewhere.

Three presets:
- ``tiny``    tests: 16x16 pixels, patch 4 (16 tokens/frame), ~60 k parameters.
- ``default`` the shipped laptop model: pixel-space 256x256 head crop, patch 16
              (256 tokens/frame), ~21 M parameters.
- ``paper``   the paper-scale backbone (Wan 2.1 1.3 B shape): 16 latent channels
              at 60x104, patch 2 (1,560 tokens/frame), dim 1536, 30 layers,
              12 heads. No VAE ships; it runs on latents (see engine/codec.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal


class EngineError(ValueError):
    """An error a caller can act on: ``message`` says what is wrong, ``hint``
    what to do. The application maps it to its own user-facing error."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message


class ConfigError(EngineError):
    """A ModelConfig or StreamConfig that cannot work."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the causal video DiT. All fields are JSON-serialisable."""

    in_channels: int = 3  # channels of one frame in codec space (3 = RGB pixels)
    height: int = 256  # frame height in codec space
    width: int = 256  # frame width in codec space
    patch: int = 16  # square patch side
    dim: int = 384  # transformer width
    depth: int = 8  # number of blocks
    heads: int = 6  # attention heads
    mlp_dim: int | None = 1152  # MLP hidden width; None -> 4 * dim
    qk_norm: bool = True  # RMSNorm on q and k per head (stabilises attention)
    # "per_block": DiT-style Linear(dim, 6*dim) per block.
    # "shared": one Linear(dim, 6*dim) for all blocks plus a learned (6, dim)
    #           offset per block (Wan 2.1; this is what makes the paper shape 1.3 B).
    adaln: Literal["per_block", "shared"] = "per_block"
    rope_theta: float = 10000.0
    # RoPE dims (t, h, w) of the head dim, each even, summing to head_dim.
    # None -> Wan's split: h = w = 2 * (head_dim // 6), t gets the rest.
    rope_axes: tuple[int, int, int] | None = None
    time_freq_dim: int = 256  # sinusoidal timestep features
    time_scale: float = 1000.0  # sigma in [0, 1] is embedded as sigma * time_scale
    norm_eps: float = 1e-6
    codec: str = "identity"  # the Codec the model's frames live in (engine/codec.py)
    # What the head's output means:
    # "x0":             the clean frame itself (x-prediction);
    # "guide_residual": a correction added to the frame's motion guide, so
    #                   x0 = guide + head(...). With adaLN-zero init the
    #                   untrained model is exactly guide-only, and the guide's
    #                   identity pixels are kept wherever the model learns to
    #                   output zero (the mouth and lids are where it does not).
    predict: Literal["x0", "guide_residual"] = "x0"
    # How pixels become tokens and tokens pixels again:
    # "linear": one linear layer per patch each way (the DiT way);
    # "conv":   a convolutional stem (two stride-2 3x3 stages, stem_channels
    #           and 2 * stem_channels wide) before a linear patch embed of
    #           (patch / 4)^2 stem cells, and a decoder that upsamples the
    #           tokens back through the stem's skip features and the input
    #           frame itself, so fine detail (teeth, lip edges) does not have
    #           to pass through one patch's linear layer (docs/MOUTH_MODEL.md).
    stem: Literal["linear", "conv"] = "linear"
    stem_channels: int = 32

    # ---- derived sizes -------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.heads

    @property
    def grid(self) -> tuple[int, int]:
        """(Hp, Wp): patches per column and per row."""
        return self.height // self.patch, self.width // self.patch

    @property
    def tokens_per_frame(self) -> int:
        hp, wp = self.grid
        return hp * wp

    @property
    def frame_channels(self) -> int:
        """Per-frame model input: [noisy frame, guide, knot mask, knot frame]."""
        return 3 * self.in_channels + 1

    @property
    def stem_stride(self) -> int:
        """Pixels per stem cell side (1 for the linear stem)."""
        return 4 if self.stem == "conv" else 1

    @property
    def patch_dim(self) -> int:
        if self.stem == "conv":
            q = self.patch // 4
            return 2 * self.stem_channels * q * q
        return self.frame_channels * self.patch * self.patch

    @property
    def out_patch_dim(self) -> int:
        if self.stem == "conv":
            q = self.patch // 4
            return 2 * self.stem_channels * q * q
        return self.in_channels * self.patch * self.patch

    @property
    def hidden_dim(self) -> int:
        return self.mlp_dim if self.mlp_dim is not None else 4 * self.dim

    @property
    def rope_split(self) -> tuple[int, int, int]:
        if self.rope_axes is not None:
            return tuple(self.rope_axes)  # type: ignore[return-value]
        d = self.head_dim
        hw = 2 * (d // 6)
        return (d - 2 * hw, hw, hw)

    def validate(self) -> "ModelConfig":
        def bad(msg: str, hint: str) -> ConfigError:
            return ConfigError(f"invalid ModelConfig: {msg}", hint)

        for name in ("in_channels", "height", "width", "patch", "dim", "depth", "heads"):
            if int(getattr(self, name)) < 1:
                raise bad(f"{name} must be >= 1", "use positive sizes")
        if self.height % self.patch or self.width % self.patch:
            raise bad(
                f"frame {self.height}x{self.width} is not a multiple of patch {self.patch}",
                "pick a patch size that divides height and width",
            )
        if self.dim % self.heads:
            raise bad(f"dim {self.dim} is not divisible by heads {self.heads}", "change dim or heads")
        if self.head_dim % 2:
            raise bad(f"head_dim {self.head_dim} is odd", "RoPE needs an even head dim")
        split = self.rope_split
        if len(split) != 3 or sum(split) != self.head_dim or any(s < 2 or s % 2 for s in split):
            raise bad(
                f"rope split {split} must be three even dims >= 2 summing to head_dim {self.head_dim}",
                "set rope_axes or use a head_dim >= 12",
            )
        if self.adaln not in ("per_block", "shared"):
            raise bad(f"adaln {self.adaln!r}", "use 'per_block' or 'shared'")
        if self.hidden_dim < 1:
            raise bad("mlp_dim must be >= 1", "use a positive MLP width")
        if self.predict not in ("x0", "guide_residual"):
            raise bad(f"predict {self.predict!r}", "use 'x0' or 'guide_residual'")
        if self.stem not in ("linear", "conv"):
            raise bad(f"stem {self.stem!r}", "use 'linear' or 'conv'")
        if self.stem == "conv" and (self.patch % 4 or self.stem_channels < 1):
            raise bad(f"the conv stem needs a patch divisible by 4 (got {self.patch}) and stem_channels >= 1",
                      "use patch 4, 8 or 16")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["rope_axes"] is not None:
            d["rope_axes"] = list(d["rope_axes"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"unknown ModelConfig fields {unknown}",
                "the weights were written by a newer kf-desktop; update it",
            )
        d = dict(d)
        if d.get("rope_axes") is not None:
            d["rope_axes"] = tuple(d["rope_axes"])
        return cls(**d).validate()


@dataclass(frozen=True)
class StreamConfig:
    """How the stream runs a model: chunking, window, sampler, schedules."""

    chunk: int = 3  # c: frames committed per chunk
    knot: int = 1  # k: knot frames (denoised ahead, committed by the next chunk)
    window: int = 9  # L: committed frames kept in KV_pre
    steps: int = 4  # S: denoising steps per chunk
    shift: float = 5.0  # timestep shift of the flow-matching schedule
    # Running ahead: temporal RoPE position n of the reference frame.
    # "step":   n = n_init; whenever chunk start i has i + c + k > n: n += s.
    # "offset": n = (last frame of the chunk) + d.
    ref_schedule: Literal["step", "offset"] = "step"
    n_init: int = 8
    ref_step: int = 4  # s
    ref_offset: int = 4  # d
    # How committed frames reach KV_pre:
    # "clean_pass":      one extra forward of the c committed frames at t = 0;
    # "reuse_last_step": keys/values of the last denoising step's forward.
    cache_write: Literal["clean_pass", "reuse_last_step"] = "clean_pass"
    # Guides of the k knot frames are not known live when a chunk runs:
    # "hold":   repeat the last known guide (default; see stream.py for why);
    # "linear": linear extrapolation of the last two guides, clamped;
    # "wait":   wait for the real guides (k frames more latency).
    knot_guide: Literal["hold", "linear", "wait"] = "hold"
    # Portrait switch without a stall: the new KV_ref is prefilled in a shadow
    # slot spread over this many chunks (token budget derived from the model).
    switch_chunks: int = 4

    def validate(self) -> "StreamConfig":
        def bad(msg: str, hint: str) -> ConfigError:
            return ConfigError(f"invalid StreamConfig: {msg}", hint)

        if self.chunk < 1:
            raise bad("chunk (c) must be >= 1", "commit at least one frame per chunk")
        if not 0 <= self.knot <= self.chunk:
            raise bad(
                f"knot (k={self.knot}) must be in [0, c={self.chunk}]",
                "the knot is committed by the next chunk, so it cannot be longer than a chunk",
            )
        if self.window < self.chunk:
            raise bad(
                f"window (L={self.window}) must be >= chunk (c={self.chunk})",
                "KV_pre must hold at least one chunk",
            )
        if self.steps < 1:
            raise bad("steps (S) must be >= 1", "use at least one denoising step")
        if not self.shift > 0:
            raise bad("shift must be > 0", "1.0 means no shift")
        if self.ref_schedule not in ("step", "offset"):
            raise bad(f"ref_schedule {self.ref_schedule!r}", "use 'step' or 'offset'")
        if self.n_init < 0 or self.ref_step < 1 or self.ref_offset < 0:
            raise bad("n_init >= 0, ref_step >= 1 and ref_offset >= 0 are required", "fix the schedule")
        if self.cache_write not in ("clean_pass", "reuse_last_step"):
            raise bad(f"cache_write {self.cache_write!r}", "use 'clean_pass' or 'reuse_last_step'")
        if self.knot_guide not in ("hold", "linear", "wait"):
            raise bad(f"knot_guide {self.knot_guide!r}", "use 'hold', 'linear' or 'wait'")
        if self.switch_chunks < 1:
            raise bad("switch_chunks must be >= 1", "spread the switch over at least one chunk")
        return self

    @property
    def frames_per_chunk(self) -> int:
        """Frames denoised per chunk: c committed + k knot."""
        return self.chunk + self.knot

    def ref_position(self, chunk_start: int) -> int:
        """Absolute temporal position n of the reference for the chunk starting
        at frame ``chunk_start``. Stateless, so any chunk can be planned
        directly: 'step' applies ``n += s`` as often as the rule asks."""
        end = chunk_start + self.frames_per_chunk  # one past the chunk's last frame
        if self.ref_schedule == "offset":
            return end - 1 + self.ref_offset
        if end <= self.n_init:
            return self.n_init
        return self.n_init + self.ref_step * (-(-(end - self.n_init) // self.ref_step))

    @property
    def max_relative_position(self) -> int:
        """Largest temporal position fed to RoPE (positions are relative to the
        window start, so this bounds the angles however long the stream runs)."""
        f = self.frames_per_chunk
        chunk_last = self.window + f - 1
        if self.ref_schedule == "offset":
            return chunk_last + self.ref_offset
        return max(self.n_init, chunk_last + self.ref_step)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StreamConfig":
        return cls(**d).validate()


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    stream: StreamConfig
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _presets() -> dict[str, Preset]:
    tiny = Preset(
        "tiny",
        ModelConfig(height=16, width=16, patch=4, dim=32, depth=2, heads=2, mlp_dim=64, time_freq_dim=32),
        StreamConfig(chunk=3, knot=1, window=4, steps=2, n_init=4, ref_step=2),
        "unit tests",
    )
    default = Preset(
        "default",
        ModelConfig(),
        StreamConfig(),
        "shipped laptop model: pixel space 256x256, patch 16",
    )
    # Chosen by measurement on a 2-core AVX-512 laptop-class CPU (issue 12,
    # scripts/measure_presets.py): 64 tokens per frame at 128 px, 3.2 M
    # parameters, S = 2 with reuse_last_step (no extra cache-write forward),
    # a 6-frame window: ~70 frames/s for the model alone in bf16, which leaves
    # the face tracker, the guide and paste-back room inside 40 ms per frame.
    # It predicts a correction of the guide (predict="guide_residual") and the
    # app adds that correction to the full-size guide (engine/detail.py), so
    # the portrait's detail is the guide's, pixel for pixel. shift 2 (not 5):
    # with two steps, shift 5 puts the last step at sigma 0.83, shift 2 at 0.67.
    laptop = Preset(
        "laptop",
        ModelConfig(height=128, width=128, patch=16, dim=192, depth=4, heads=4, mlp_dim=576,
                    predict="guide_residual"),
        StreamConfig(chunk=3, knot=1, window=6, steps=2, shift=2.0, cache_write="reuse_last_step",
                     n_init=8, ref_step=4),
        "shipped CPU model: 128 px correction of the 256 px guide, patch 16, 2 steps",
    )
    # The mouth model (issue 17, docs/MOUTH_MODEL.md): Knot Forcing on the
    # mouth-centred lower-face region cut from the 256 px guide
    # (engine/mouth_region.py), 64x96 px with the conv stem, 8-px tokens
    # (8x12 = 96 tokens per frame); the open mouth is ~45 px wide here,
    # about 6 tokens across instead of 1-2 in the 128 px head.
    mouth = Preset(
        "mouth",
        ModelConfig(height=64, width=96, patch=16, dim=192, depth=4, heads=4, mlp_dim=576,
                    predict="guide_residual", stem="conv", stem_channels=32),
        StreamConfig(chunk=3, knot=1, window=6, steps=2, shift=2.0, cache_write="reuse_last_step",
                     n_init=8, ref_step=4),
        "shipped CPU model: 64x96 mouth region of the 256 px guide, conv stem, 2 steps",
        extra={"region": True},
    )
    paper = Preset(
        "paper",
        ModelConfig(
            in_channels=16,
            height=60,
            width=104,
            patch=2,
            dim=1536,
            depth=30,
            heads=12,
            mlp_dim=8960,
            adaln="shared",
            codec="latent",
        ),
        StreamConfig(chunk=3, knot=1, window=9, steps=4),
        "paper-scale backbone (Wan 2.1 1.3B shape) on 16-channel latents",
    )
    return {p.name: p for p in (tiny, default, laptop, mouth, paper)}


PRESET_NAMES = ("tiny", "default", "laptop", "mouth", "paper")


def get_preset(name: str) -> Preset:
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}", f"use one of {', '.join(PRESET_NAMES)}")
    p = presets[name]
    p.model.validate()
    p.stream.validate()
    return p
