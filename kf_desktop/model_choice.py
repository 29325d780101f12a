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
    """Why ``--weights`` cannot be used at all (they do not verify), or None.
    Whether good weights run is ``--mode auto``'s decision (the recorded
    evaluation, then on a CPU the speed probe): ``decision_message`` says it."""
    if mode != "auto" or not weights:
        return None
    from kf_desktop.kf_generator import describe_shipped_model

    ok, detail, fix = describe_shipped_model(Path(weights))
    if not ok:
        return (f"--weights {weights} is not used: {detail}; --mode auto runs guide-only"
                + (f" (fix: {fix})" if fix else ""))
    return None


def decision_message(decision, weights: str | None) -> str:
    """The one line that reports what ``--mode auto`` chose, and why."""
    if decision.mode == "guide" and weights:
        why = decision.reason.removeprefix("guide-only: ")
        return (f"warning: --weights {weights} is not used: {why}; --mode auto runs guide-only "
                "(fix: --mode generator runs the model anyway)")
    return f"note: --mode auto: {decision.reason}"


def decision_printer(args):
    """``on_decision`` for make_generator in a render/run command: prints the
    auto mode's final decision once (None outside --mode auto)."""
    if getattr(args, "mode", None) != "auto":
        return None
    weights = getattr(args, "weights", None)

    def say(decision) -> None:
        print(decision_message(decision, weights), file=sys.stderr, flush=True)

    return say


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
