"""Say it when the user asked for a model and will not get it (issue 13,
item 16): ``--weights`` that ``--mode auto`` will not use, and the exit
status of a command that fell back to guide-only under ``--mode generator``."""

from __future__ import annotations

import sys
from pathlib import Path

#: Exit status of a command that produced its output, but not the way the
#: user asked (``--mode generator`` ran guide-only). 2 is a usage/user error.
NOT_AS_ASKED = 3


def unused_weights_warning(mode: str, device: str, weights: str | None) -> str | None:
    """Why ``--weights`` will not be used in ``--mode auto``, or None."""
    if mode != "auto" or not weights:
        return None
    from kf_desktop.kf_generator import describe_shipped_model

    ok, detail, fix = describe_shipped_model(Path(weights))
    if not ok:
        return (f"--weights {weights} is not used: {detail}; --mode auto runs guide-only"
                + (f" (fix: {fix})" if fix else ""))
    if not str(device).startswith("cuda"):
        return (f"--weights {weights} is not used: --mode auto runs the model only on a CUDA "
                "GPU, and this run is on the CPU, guide-only (fix: add --mode generator to run "
                "it on the CPU, far slower than real time)")
    return None


def warn_unused_weights(args) -> None:
    """Print the warning for a parsed render/demo/run/bench command."""
    mode, weights = getattr(args, "mode", None), getattr(args, "weights", None)
    if mode != "auto" or not weights:
        return
    from kf_desktop.compute import resolve_device

    msg = unused_weights_warning(mode, resolve_device(args.device), weights)
    if msg:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def generator_refused(mode: str, label: str) -> bool:
    """``--mode generator`` that ended up guide-only."""
    return mode == "generator" and label == "guide-only"
