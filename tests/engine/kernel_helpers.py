"""Shared by tests/engine/test_kernels*.py: the Triton interpreter switch,
fresh seeds, and error bounds relative to the torch reference's own
low-precision error."""

from __future__ import annotations

import os
import random

import sys

import torch

# Triton decorates its own library functions (tl.sum, tl.max, ...) when it is
# imported, reading TRITON_INTERPRET then: without a GPU the variable must be
# set before the first `import triton` of the process. Test modules import
# this file first, at collection time, before any test runs (nothing else in
# the suite imports triton while collecting).
if not torch.cuda.is_available() and "triton" not in sys.modules:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")


@pytest.fixture(scope="module")
def triton_backend():
    """Kernels run on a CUDA GPU when there is one, else in Triton's CPU
    interpreter (TRITON_INTERPRET=1, see above); kernels are rebuilt for the
    module (engine.kernels compiles lazily). Yields the device."""
    from engine.kernels._triton import interpreter_ready, reset_kernels

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    os.environ.setdefault("KF_TRITON_AUTOTUNE", "0")  # one fixed config: the tests try many shapes
    if dev == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"
        ok, why = interpreter_ready()
        assert ok, why
    reset_kernels()
    yield torch.device(dev)
    reset_kernels()


def fresh_seed() -> int:
    """A new seed every run (KF_TEST_SEED=N reproduces a failure)."""
    s = os.environ.get("KF_TEST_SEED")
    return int(s) if s else random.SystemRandom().randrange(2**31)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def assert_within_reference_error(out, ref_lowp, truth, dtype, what: str, seed: int, factor: float = 3.0) -> None:
    """|out - truth| <= factor * |ref_lowp - truth| + a floor of a few ulps of
    the output scale (in fp32 both errors are at rounding level)."""
    scale = float(truth.double().abs().max()) + 1e-30
    eps = torch.finfo(dtype).eps
    e_out, e_ref = max_err(out, truth), max_err(ref_lowp, truth)
    bound = factor * e_ref + 16 * eps * scale
    assert e_out <= bound, (f"{what}: kernel error {e_out:.3g} > bound {bound:.3g} (torch {dtype} error {e_ref:.3g}, "
                            f"scale {scale:.3g}); reproduce with KF_TEST_SEED={seed}")
