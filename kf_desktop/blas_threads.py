"""One BLAS thread per caller: the real-time threads must not fight OpenBLAS.

Measured (issue 13 item 6): on a 2-core machine with other work running,
numpy's ``linalg.solve`` of the motion guide's ~150x150 system took ~100 ms
instead of well under 1 ms, because OpenBLAS's worker threads spin for the
cores the other processes hold, and numpy holds the GIL for the whole call:
the virtual camera's sender thread then waited ~90 ms for the GIL on every
frame (9 fps instead of 30). With one BLAS thread the same solve takes
~3 ms and never blocks the GIL for long. The app's parallelism comes from
its own threads (capture, engine, output), not from BLAS.

``OPENBLAS_NUM_THREADS`` only works before numpy loads OpenBLAS, so this sets
the count at run time through the library's own ``*_set_num_threads``.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import sys

log = logging.getLogger(__name__)

_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
            "openblas_set_num_threads64_", "openblas_set_num_threads")


def _loaded_openblas() -> list[str]:
    paths: set[str] = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rsplit(None, 1)[-1]
                if path.startswith("/") and "openblas" in os.path.basename(path).lower():
                    paths.add(path)
    except OSError:  # not Linux: the libraries numpy ships next to itself
        np_mod = sys.modules.get("numpy")
        if np_mod is not None:
            root = os.path.dirname(os.path.dirname(np_mod.__file__))
            for pattern in ("numpy.libs/*openblas*", "numpy/.libs/*openblas*",
                            "numpy/.dylibs/*openblas*", "scipy_openblas*/lib/*openblas*"):
                paths.update(glob.glob(os.path.join(root, pattern)))
    return sorted(paths)


def limit_blas_threads(n: int = 1) -> list[str]:
    """Set every loaded OpenBLAS to ``n`` threads; returns what was set
    (``lib:function``), empty where none is loaded or it cannot be reached."""
    done = []
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name, None)
            if fn is None:
                continue
            fn.argtypes = [ctypes.c_int]
            fn.restype = None
            fn(int(n))
            done.append(f"{os.path.basename(path)}:{name}")
            break
    if done:
        log.debug("BLAS threads set to %d: %s", n, ", ".join(done))
    return done


def blas_threads() -> dict[str, int]:
    """Thread count of every loaded OpenBLAS (for tests and `doctor`-like reports)."""
    out = {}
    for path in _loaded_openblas():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _SETTERS:
            fn = getattr(lib, name.replace("set_num", "get_num"), None)
            if fn is not None:
                fn.restype = ctypes.c_int
                out[os.path.basename(path)] = int(fn())
                break
    return out
