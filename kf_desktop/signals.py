"""Termination signals handled like Ctrl-C, so output files get finalised.

`kill PID` (SIGTERM), a closed terminal or an ssh drop (SIGHUP) used to end
`render` and `run --record` at once, leaving a hidden temporary video behind.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

#: What a service manager, `kill` or a closed terminal sends.
TERMINATION_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP")
                            if hasattr(signal, n))


@contextlib.contextmanager
def handle_termination(on_signal: Callable[[int], None] | None = None,
                       *, include_sigint: bool = False) -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP (and SIGINT with
    ``include_sigint``) call ``on_signal(signum)``; without ``on_signal`` they
    raise KeyboardInterrupt, exactly like Ctrl-C. Handlers are restored on
    exit. Outside the main thread (where Python cannot install handlers) it
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        if on_signal is None:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")
        on_signal(signum)

    sigs = TERMINATION_SIGNALS + ((signal.SIGINT,) if include_sigint else ())
    previous = {}
    try:
        for s in sigs:
            previous[s] = signal.signal(s, handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
