"""Triton kernels for the Knot Forcing generator (GPU), each beside its torch
reference: chunk attention with RoPE on read over the KV cache
(attention.py), fused adaLN modulation / gated residual / key RMSNorm +
cache write (norm.py), the fused block (block.py), backend choice
(dispatch.py), FLOP/byte floors and KV memory (floor.py), benchmarks
(bench.py). The torch path stays the default everywhere but CUDA."""

from engine.kernels.dispatch import ENV, KernelChoice, choose, describe, install, rope_on_read

__all__ = ["ENV", "KernelChoice", "choose", "describe", "install", "rope_on_read"]
