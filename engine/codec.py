"""The Codec seam: images <-> the space the model denoises in.

The default model works in pixel space (``IdentityCodec``): frames are the
head crop itself, rescaled from [0, 1] to [-1, 1]. A latent model (the paper's
Wan VAE, 16 channels at 1/8 resolution) plugs in through the same interface;
none ships today, so ``LatentCodec`` only describes the shape and refuses to
encode images. Streams can be fed codec-space tensors directly
(``KnotForcingStream.feed_encoded``), which is how the paper-scale benchmark
runs on random latents of the right shape.
"""

from __future__ import annotations

from typing import Protocol

import torch

from engine.config import EngineError, ModelConfig


class Codec(Protocol):
    name: str
    channels: int  # channels of an encoded frame
    downsample: int  # image pixels per encoded pixel, per side

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, channels, H / downsample, W / downsample)."""

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, channels, h, w) -> (B, 3, h * downsample, w * downsample) in [0, 1]."""


class IdentityCodec:
    """Pixel space: x = 2 * image - 1, image = clamp((x + 1) / 2, 0, 1)."""

    name = "identity"
    channels = 3
    downsample = 1

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2.0 - 1.0  # (B, 3, H, W) [0,1] -> [-1,1]

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        return ((frames + 1.0) * 0.5).clamp_(0.0, 1.0)  # [-1,1] -> [0,1]


class LatentCodec:
    """Placeholder for a VAE (e.g. Wan 2.1's, 16 channels, 8x down). No
    autoencoder weights ship with kf-desktop, so encoding images is refused;
    feed latents with ``KnotForcingStream.feed_encoded`` instead."""

    name = "latent"

    def __init__(self, channels: int = 16, downsample: int = 8) -> None:
        self.channels = channels
        self.downsample = downsample

    def _refuse(self) -> EngineError:
        return EngineError(
            "this model works on VAE latents and no VAE is installed",
            "feed latents directly (feed_encoded / set_reference_encoded) or use a pixel-space model",
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        raise self._refuse()

    def decode(self, frames: torch.Tensor) -> torch.Tensor:
        raise self._refuse()


def make_codec(cfg: ModelConfig) -> Codec:
    """The codec a model config expects."""
    if cfg.codec == "identity":
        if cfg.in_channels != IdentityCodec.channels:
            raise EngineError(
                f"identity codec needs in_channels=3, the model has {cfg.in_channels}",
                "set codec='latent' for latent models",
            )
        return IdentityCodec()
    if cfg.codec == "latent":
        return LatentCodec(channels=cfg.in_channels)
    raise EngineError(f"unknown codec {cfg.codec!r}", "use 'identity' or 'latent'")
