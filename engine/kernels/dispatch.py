"""Which kernels the generator runs: Triton on CUDA, torch elsewhere.

Chosen once per model, when it first runs (``KnotForcingDiT.run_blocks``
calls ``install`` lazily, so a model built on the CPU and moved to a GPU
before its first forward gets the GPU kernels), or explicitly with
``install(model, "torch" | "triton" | "auto")``. The setting:

    KF_KERNELS=auto    (default) Triton when the model is on a CUDA device
                       and triton imports; the torch (eager) path otherwise
    KF_KERNELS=torch   always the eager path (engine/model.py as written)
    KF_KERNELS=triton  Triton where it can run: CUDA, or the CPU when
                       TRITON_INTERPRET=1 (tests: slow, for correctness);
                       elsewhere the torch path, with the reason recorded

``KVCache`` asks ``rope_on_read(device)`` whether to allocate ``k_rot``:
the Triton attention rotates keys as it loads them and never reads it.
"""

import os
from dataclasses import dataclass

import torch

from engine.config import EngineError
from engine.kernels._triton import interpreting, triton_status

ENV = "KF_KERNELS"
SETTINGS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class KernelChoice:
    backend: str  # "torch" | "triton"
    requested: str  # "auto" | "torch" | "triton"
    reason: str

    def describe(self) -> str:
        return f"{self.backend} ({self.reason})"


def requested_setting(requested: str | None = None) -> str:
    req = (requested or os.environ.get(ENV) or "auto").strip().lower()
    if req not in SETTINGS:
        raise EngineError(f"{ENV}={req!r} is not a kernel setting", f"use one of {', '.join(SETTINGS)}")
    return req


def choose(device: torch.device | str | None = None, requested: str | None = None) -> KernelChoice:
    """The kernels a model on ``device`` gets (no side effects)."""
    req = requested_setting(requested)
    dev = torch.device(device if device is not None else "cpu")
    if req == "torch":
        return KernelChoice("torch", req, f"{ENV}=torch")
    ok, ver = triton_status()
    if not ok:
        why = f"triton not importable ({ver})"
        return KernelChoice("torch", req, why if req == "triton" else f"no Triton: {why}")
    if dev.type == "cuda":
        major, minor = torch.cuda.get_device_capability(dev)
        if major < 8:
            return KernelChoice("torch", req, f"sm{major}{minor} GPU: the kernels are tuned for sm80+ (Ampere, Ada, Hopper)")
        return KernelChoice("triton", req, f"CUDA sm{major}{minor}, triton {ver}")
    if req == "triton" and dev.type == "cpu" and interpreting():
        return KernelChoice("triton", req, f"CPU, TRITON_INTERPRET=1 (interpreter: correct, slow), triton {ver}")
    if req == "triton":
        return KernelChoice("torch", req, f"triton requested but the model is on {dev.type}: the kernels run on CUDA "
                                          "(or on the CPU under TRITON_INTERPRET=1)")
    return KernelChoice("torch", req, f"model on {dev.type}, no CUDA device")


def install(model: torch.nn.Module, requested: str | None = None) -> KernelChoice:
    """Pick the kernels for ``model`` (on the device of its parameters) and
    hook them into its blocks. Returns the choice (also ``model.kernel_choice``)."""
    from engine.kernels.block import TritonBlockKernels

    p = next(model.parameters())
    choice = choose(p.device, requested)
    impl = TritonBlockKernels() if choice.backend == "triton" else None
    for blk in model.blocks:
        blk.kernels = impl
        blk._kf_rope = (model.rope,)  # tuple: not registered as a submodule
    model.kernel_backend = choice.backend
    model.kernel_choice = choice
    return choice


def rope_on_read(device: torch.device | str | None) -> bool:
    """True when models on ``device`` get the Triton attention, which rotates
    keys as it loads them (so a cache there needs no ``k_rot``)."""
    try:
        return choose(device).backend == "triton"
    except EngineError:
        return False


def describe() -> str:
    """One line for `kf-desktop doctor` and the benches: what a model on this
    machine's best device gets."""
    try:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        return f"{choose(dev).describe()}; set {ENV}=torch|triton to override"
    except EngineError as e:
        return str(e)
