"""One sink's own thread and bounded hand-off.

The output thread used to call every sink's ``submit`` in turn, so one sink
that blocked (a recorder whose ffmpeg child hangs on a stalled disk) froze
them all: the virtual camera repeated its last frame and ``stop()`` could
never join the thread. Each sink now has a ``SinkFeeder``: the output thread
only ``offer``s a frame (never blocks; when the sink is behind, the oldest
waiting frame is dropped and counted), and the feeder's thread calls
``submit``. ``stalled_for`` tells the session how long the sink has accepted
nothing while it had work, so it can take a hung sink out.
"""

from __future__ import annotations

import enum
import logging
import threading
import time

import numpy as np

from kf_desktop.queues import DropOldestQueue
from kf_desktop.sinks import FrameSink

log = logging.getLogger(__name__)


class FeederState(enum.Enum):
    RUNNING = "running"
    #: ``submit`` raised; frames are discarded until ``resume()``.
    FAILED = "failed"
    #: Taken out (stalled, removed or stopping); it never feeds again.
    CLOSED = "closed"


class SinkFeeder:
    """Feeds ``sink`` from a ``capacity``-frame drop-oldest queue on a daemon
    thread named ``kf-sink-<kind>``."""

    def __init__(self, sink: FrameSink, capacity: int = 2) -> None:
        self.sink = sink
        self._q: DropOldestQueue[tuple[np.ndarray, float]] = DropOldestQueue(capacity)
        self._lock = threading.Lock()
        self._state = FeederState.RUNNING
        self.error: BaseException | None = None
        self._busy_since: float | None = None  # when the submit in progress began
        self._accepted = 0
        self._discarded = 0  # offered while failed or closed
        self._thread = threading.Thread(target=self._run, name=f"kf-sink-{type(sink).__name__}",
                                        daemon=True)
        self._thread.start()

    # -- output thread ------------------------------------------------------
    @property
    def state(self) -> FeederState:
        return self._state

    def offer(self, image: np.ndarray, capture_ts: float) -> None:
        """Hand a frame over; never blocks."""
        if self._state is not FeederState.RUNNING:
            self._discarded += 1
            return
        self._q.put((image, capture_ts))

    def stalled_for(self, now: float) -> float:
        """Seconds the sink has been inside one ``submit`` without taking a
        frame. A sink with a ``last_progress`` time (a recorder filling a gap
        writes many frames in one submit) counts from its last frame."""
        busy = self._busy_since
        if busy is None:
            return 0.0
        progress = getattr(self.sink, "last_progress", None)
        if isinstance(progress, float) and progress > busy:
            busy = progress
        return max(0.0, now - busy)

    def resume(self) -> None:
        """After the session restarted a failed sink: feed it again."""
        with self._lock:
            if self._state is FeederState.FAILED:
                self._q.clear()
                self.error = None
                self._state = FeederState.RUNNING

    def close(self, timeout: float) -> bool:
        """Stop feeding; wait up to ``timeout`` s for a submit in progress.
        False if the sink is still inside ``submit`` (its thread is left
        behind as a daemon; ending the sink, e.g. killing its encoder, frees it)."""
        with self._lock:
            self._state = FeederState.CLOSED
        self._q.put(None)  # wake the thread
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stats(self) -> dict:
        return {"handoff_dropped": self._q.dropped, "accepted": self._accepted,
                "discarded": self._discarded, "state": self._state.value}

    # -- feeder thread --------------------------------------------------------
    def _run(self) -> None:
        while self._state is not FeederState.CLOSED:
            item = self._q.get(timeout=0.5)
            if item is None or self._state is not FeederState.RUNNING:
                continue
            self._busy_since = time.monotonic()
            try:
                self.sink.submit(*item)
                self._accepted += 1
            except BaseException as e:  # noqa: BLE001 - reported by the session
                with self._lock:
                    if self._state is FeederState.RUNNING:
                        self.error = e
                        self._state = FeederState.FAILED
                    else:  # closing: the error is the sink being ended under us
                        log.debug("%s ended while submitting: %s", type(self.sink).__name__, e)
            finally:
                self._busy_since = None
