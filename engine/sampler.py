"""Rectified-flow (flow-matching) sampler with a timestep shift.

Knows nothing of the model (after diffusers' schedulers): it holds the sigma
schedule as host floats and does the per-step arithmetic.

Convention: x_sigma = (1 - sigma) * x0 + sigma * noise, sigma 1 -> 0. The
velocity is v = dx/dsigma = noise - x0. The model predicts x0, so

    v = (x_sigma - x0) / sigma                      (x-prediction -> velocity)
    x_next = x_sigma + (sigma_next - sigma) * v     (Euler step)
           = x0 + (sigma_next / sigma) * (x_sigma - x0)

With sigma_next = 0 the last step returns x0 exactly. Shifted schedule (SD3 /
Wan): sigma' = shift * s / (1 + (shift - 1) * s) for s uniform in (0, 1]; a
shift > 1 spends more of the few steps at high noise.
"""

from __future__ import annotations

import torch


def shift_sigma(s: float, shift: float) -> float:
    return shift * s / (1.0 + (shift - 1.0) * s)


class FlowMatchSampler:
    def __init__(self, steps: int, shift: float = 1.0) -> None:
        if steps < 1:
            raise ValueError("steps must be >= 1")
        if not shift > 0:
            raise ValueError("shift must be > 0")
        self.steps = steps
        self.shift = shift
        # S + 1 host floats, 1.0 ... 0.0: indexing them never syncs with a device.
        self.sigmas: list[float] = [shift_sigma(1.0 - i / steps, shift) for i in range(steps + 1)]
        self.sigmas[-1] = 0.0

    @property
    def timesteps(self) -> list[float]:
        """The S noise levels the model is evaluated at."""
        return self.sigmas[:-1]

    @staticmethod
    def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        return (1.0 - sigma) * x0 + sigma * noise

    @staticmethod
    def x0_to_velocity(x_t: torch.Tensor, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        if sigma <= 0:
            raise ValueError("velocity is undefined at sigma = 0")
        return (x_t - x0) / sigma

    @staticmethod
    def velocity_to_x0(x_t: torch.Tensor, v: torch.Tensor, sigma: float) -> torch.Tensor:
        return x_t - sigma * v

    def step(self, x_t: torch.Tensor, x0: torch.Tensor, i: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Euler step from sigmas[i] to sigmas[i+1] given the x0 prediction.
        ``out`` may alias ``x_t`` (in-place update, no allocation)."""
        sigma, sigma_next = self.sigmas[i], self.sigmas[i + 1]
        ratio = sigma_next / sigma
        if out is None:
            return torch.lerp(x0, x_t, ratio) if ratio else x0.clone()
        # x_next = x0 + ratio * (x_t - x0) = lerp(x0, x_t, ratio)
        return torch.lerp(x0, x_t, ratio, out=out) if ratio else out.copy_(x0)


def sample_training_sigmas(
    n: int,
    *,
    shift: float = 1.0,
    mean: float = 0.0,
    std: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Shifted logit-normal sigmas in (0, 1) for flow-matching training, (n,)."""
    u = torch.randn(n, generator=generator, device=device) * std + mean
    s = torch.sigmoid(u)
    return shift * s / (1.0 + (shift - 1.0) * s)


def schedule_summary(steps: int, shift: float) -> str:
    sig = FlowMatchSampler(steps, shift).sigmas
    return " -> ".join(f"{s:.3f}" for s in sig) + f" (S={steps}, shift={shift:g})"
