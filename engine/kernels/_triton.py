"""Triton plumbing shared by the kernels.

- Kernels are compiled lazily (``LazyKernel``): ``triton.jit`` reads
  ``TRITON_INTERPRET`` when it decorates a function, so decorating at first
  use (not at import) lets a test set the variable after ``import triton``
  and still run every kernel in the CPU interpreter.
- Autotune configurations per GPU family: Hopper (sm90+: 228 KB shared
  memory, big tiles, 3 stages) and Ampere/Ada (sm80/86/89: 100-164 KB,
  smaller key tiles, 2 stages). Configurations that do not fit a card are
  dropped by the autotuner (it skips ``OutOfResources``). Under the
  interpreter, or with KF_TRITON_AUTOTUNE=0 (the GPU tests: many shapes, no
  time to tune each), there is no tuning: one fixed configuration.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence


def interpreting() -> bool:
    """True when Triton kernels run in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no")


def interpreter_ready() -> tuple[bool, str]:
    """Whether Triton kernels can run in the CPU interpreter in this process:
    TRITON_INTERPRET=1 must have been set before triton was first imported
    (its library functions, tl.sum and friends, are decorated then)."""
    if not interpreting():
        return False, "TRITON_INTERPRET is not set"
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.sum, InterpretedFunction):
        return False, ("triton was imported before TRITON_INTERPRET=1 was set: set it in the environment "
                       "(TRITON_INTERPRET=1 pytest ...) or run the kernel tests in their own process")
    return True, "ok"


def triton_status() -> tuple[bool, str]:
    """(importable, version or the import error)."""
    try:
        import triton
    except Exception as e:  # broken installs raise OSError/RuntimeError too
        return False, f"{type(e).__name__}: {e}"
    return True, str(getattr(triton, "__version__", "?"))


def gpu_family(device: Any = None) -> str:
    """'hopper' (sm90+), 'ampere_ada' (sm80..89), 'older' (< sm80) or 'none'."""
    import torch

    if not torch.cuda.is_available():
        return "none"
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 9:
        return "hopper"
    if major == 8:
        return "ampere_ada"
    return "older"


def next_pow2(n: int, minimum: int = 1) -> int:
    p = 1
    while p < n:
        p *= 2
    return max(p, minimum)


class LazyKernel:
    """A Triton kernel built on first launch.

    fn: the undecorated kernel body. configs: family -> list of dicts
    ``{"meta": {...}, "num_warps": w, "num_stages": s}`` autotuned over
    ``key`` on a GPU. interp_meta: the meta-parameters used under the
    interpreter (and on a GPU family without configs).

    ``kernel[grid](*args, **kwargs)``: grid is a tuple or a callable of the
    meta-parameters, as in Triton.
    """

    instances: list["LazyKernel"] = []

    def __init__(
        self,
        fn: Callable,
        *,
        interp_meta: dict[str, Any],
        configs: Callable[[str], Sequence[dict[str, Any]]] | None = None,
        key: Sequence[str] = (),
    ) -> None:
        self.fn = fn
        self.interp_meta = dict(interp_meta)
        self.configs = configs
        self.key = list(key)
        self._built: tuple[bool, Any] | None = None  # (autotuned, kernel)
        LazyKernel.instances.append(self)

    def _build(self) -> tuple[bool, Any]:
        import triton

        if self._built is None:
            jitted = triton.jit(self.fn)
            tune = os.environ.get("KF_TRITON_AUTOTUNE", "1").strip() not in ("0", "false", "no")
            cfgs = [] if interpreting() or self.configs is None or not tune else list(self.configs(gpu_family()))
            if cfgs:
                tuned = triton.autotune(
                    configs=[
                        triton.Config(c["meta"], num_warps=c.get("num_warps", 4), num_stages=c.get("num_stages", 2))
                        for c in cfgs
                    ],
                    key=self.key,
                )(jitted)
                self._built = (True, tuned)
            else:
                self._built = (False, jitted)
        return self._built

    @property
    def best_config(self) -> Any:
        """The autotuner's choice for the last key (None untuned/interpreted)."""
        tuned, k = self._build()
        return getattr(k, "best_config", None) if tuned else None

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        tuned, k = self._build()

        def launch(*args: Any, **kwargs: Any) -> Any:
            if tuned:
                return k[grid](*args, **kwargs)
            meta = {**self.interp_meta, **kwargs}
            g = grid(meta) if callable(grid) else grid
            return k[g](*args, **meta)

        return launch


class tl_stub:  # noqa: N801 - stands in for triton.language when triton is missing
    """Lets kernel signatures (annotated ``tl.constexpr``; the interpreter
    needs that exact spelling) parse on machines without Triton."""

    constexpr = int


def reset_kernels() -> None:
    """Forget every built kernel, so the next launch re-reads TRITON_INTERPRET
    (tests switch the interpreter on for their module only)."""
    for k in LazyKernel.instances:
        k._built = None
