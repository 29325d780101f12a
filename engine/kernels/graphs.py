"""CUDA graphs for the stream's fixed chunk shapes.

A chunk's forwards have a handful of fixed signatures (the c + k frame
denoising step, the c frame clean pass, the reference prefill), so each is
captured once and replayed: one launch per forward instead of a few hundred
kernel launches, no Python in the loop. ``GraphedModel`` wraps a
KnotForcingDiT for a ``KnotForcingStream`` (``KnotForcingStream(GraphedModel(model), ...)``):
every other attribute is the model's, and ``__call__`` copies the per-call
inputs (frames, sigma, the RoPE tables or positions, the key mask) into the
graph's static buffers, replays, and returns the static output (the stream
consumes it before the next forward). The KV cache is the stream's own
preallocated buffer, so its address is fixed and the graph reads and writes
it in place.

Signature = (frames shape, kv_only, write_at, n_keys, table shapes, mask
shape, cache identity): a new one is warmed up twice on a side stream
(Triton autotuning runs there, outside the capture) and captured. All
graphs share one memory pool. GPU only; this is for the benchmark and for
GPU deployments, the CPU path never uses it.
"""

import dataclasses
from typing import Any

import torch


class GraphedModel:
    def __init__(self, model: torch.nn.Module) -> None:
        p = next(model.parameters())
        if p.device.type != "cuda":
            raise ValueError("CUDA graphs need the model on a CUDA device")
        self.model = model
        self._graphs: dict[tuple, dict[str, Any]] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.captures = 0

    def __getattr__(self, name: str) -> Any:  # everything but __call__ is the model's
        return getattr(self.__dict__["model"], name)

    @staticmethod
    def _key(frames: torch.Tensor, sigma: torch.Tensor, attn: Any, kv_only: bool) -> tuple:
        def shape(t: torch.Tensor | None) -> tuple | None:
            return None if t is None else (tuple(t.shape), t.dtype)

        return (tuple(frames.shape), frames.dtype, tuple(sigma.shape), kv_only, attn.write_at, attn.n_keys,
                attn.rotate_from, shape(attn.cos_q), shape(attn.cos_k), shape(attn.mask), shape(attn.t_pos),
                id(attn.k_cache), id(attn.v_cache), id(attn.k_rot))

    def _capture(self, frames: torch.Tensor, sigma: torch.Tensor, attn: Any, kv_only: bool) -> dict[str, Any]:
        static: dict[str, Any] = {"frames": frames.clone(), "sigma": sigma.clone()}
        fields = {}
        for name in ("cos_q", "sin_q", "cos_k", "sin_k", "mask", "t_pos"):
            t = getattr(attn, name)
            if t is not None:
                static[name] = t.clone()
                fields[name] = static[name]
        spec = dataclasses.replace(attn, **fields)
        static["spec"] = spec
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):  # compile + autotune the kernels outside the capture
                self.model(static["frames"], static["sigma"], spec, kv_only=kv_only)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool), torch.no_grad():
            static["out"] = self.model(static["frames"], static["sigma"], spec, kv_only=kv_only)
        static["graph"] = graph
        self.captures += 1
        return static

    def __call__(self, frames: torch.Tensor, sigma: torch.Tensor, attn: Any, kv_only: bool = False):
        key = self._key(frames, sigma, attn, kv_only)
        g = self._graphs.get(key)
        if g is None:
            g = self._graphs[key] = self._capture(frames, sigma, attn, kv_only)
        g["frames"].copy_(frames)
        g["sigma"].copy_(sigma)
        for name in ("cos_q", "sin_q", "cos_k", "sin_k", "mask", "t_pos"):
            t = getattr(attn, name)
            if t is not None:
                g[name].copy_(t)
        g["graph"].replay()
        return g["out"]
