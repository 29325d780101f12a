"""The virtual camera as the window manages it (no Qt).

``VcamSlot`` is the frame sink the Session gets. The Session starts and stops
its sinks with the stream, but the window wants the virtual camera to follow
its own switch: it stays published while the session restarts for a device
or generator change (a meeting app drops a camera that disappears), a missing
driver must not stop the stream (the preview goes on, a banner says how to
install one), and the privacy pause swaps the live frames for a still. So the
Session-facing ``start``/``stop`` do nothing, and the bridge calls ``open``,
``close``, ``pause`` and ``set_mirror`` from its own threads.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VcamStatus:
    state: str  # "off" (device: set when a probe found one) | "on" | "error"
    device: str = ""
    backend: str = ""
    message: str = ""
    hint: str = ""

    @property
    def text(self) -> str:
        if self.state == "on":
            return f"Live on {self.device}" if self.device else "Live"
        if self.state == "error":
            return self.message or "virtual camera unavailable"
        return f"Ready ({self.device})" if self.device else "Off"


class VcamSlot:
    """A FrameSink whose inner virtual camera can be opened, closed, mirrored
    and paused at any time from any thread.

    make_sink(mirror) builds the real sink (``kf_desktop.sinks.VirtualCameraSink``);
    its ``start`` may raise ``UserError`` (no driver), which ``open`` passes on.
    """

    def __init__(self, make_sink: Callable[[bool], Any], mirror: bool = False) -> None:
        self._make_sink = make_sink
        self._lock = threading.Lock()
        self._sink: Any = None
        self._mirror = mirror
        self._pause_frame: np.ndarray | None = None
        self._frames_forwarded = 0
        self._last_error_reported: str | None = None

    # -- FrameSink seen by the Session --------------------------------------
    def start(self) -> None:
        """The Session starts the stream: the camera follows the window's switch instead."""

    def stop(self) -> None:
        """The Session stops (maybe only to restart): the camera stays published."""

    def submit(self, image: np.ndarray, capture_ts: float) -> None:
        with self._lock:
            sink = self._sink
            if sink is None or self._pause_frame is not None:
                return
            self._frames_forwarded += 1
        sink.submit(image, capture_ts)

    def stats(self) -> dict:
        with self._lock:
            sink = self._sink
            paused = self._pause_frame is not None
            forwarded = self._frames_forwarded
        inner = sink.stats() if sink is not None else {}
        return {**inner, "open": sink is not None, "paused": paused,
                "frames_forwarded": forwarded, "mirror": self._mirror}

    # -- control (bridge) ---------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._sink is not None

    @property
    def held(self) -> bool:
        """The open camera holds frames to a constant delay (HeldVirtualCameraSink)."""
        return hasattr(self._sink, "target_delay_s")

    def target_delay_s(self) -> float | None:
        """What the virtual microphone delays itself by: the held camera's
        target (None while it is measured), 0 without a held camera."""
        fn = getattr(self._sink, "target_delay_s", None)
        return fn() if fn is not None else 0.0

    def open(self) -> VcamStatus:
        """Open the virtual camera if it is not open. Raises UserError."""
        with self._lock:
            if self._sink is not None:
                return self.status()
        sink = self._make_sink(self._mirror)
        sink.start()  # UserError/DeviceError with the per-OS fix goes to the caller
        with self._lock:
            self._sink = sink
            self._last_error_reported = None
            frame = self._pause_frame
        if frame is not None:
            self._send_still(sink, frame)
        return self.status()

    def close(self) -> None:
        with self._lock:
            sink, self._sink = self._sink, None
        if sink is not None:
            sink.stop()

    def set_mirror(self, mirror: bool) -> None:
        """Meeting apps mirror only the self-view; this flips what they receive."""
        with self._lock:
            self._mirror = bool(mirror)
            sink = self._sink
            frame = self._pause_frame
        if sink is not None:
            sink.mirror = bool(mirror)
            if frame is not None:
                self._send_still(sink, frame)

    @property
    def mirror(self) -> bool:
        return self._mirror

    def pause(self, frame: np.ndarray) -> None:
        """Send ``frame`` (H, W, 3) uint8 RGB instead of the live stream. The
        sink repeats it at the output rate, so the meeting app keeps a camera."""
        frame = np.ascontiguousarray(frame)
        with self._lock:
            self._pause_frame = frame
            sink = self._sink
        if sink is not None:
            self._send_still(sink, frame)

    def resume(self) -> None:
        with self._lock:
            self._pause_frame = None

    @property
    def paused(self) -> bool:
        return self._pause_frame is not None

    def _send_still(self, sink: Any, frame: np.ndarray) -> None:
        # The sink mirrors what it sends; pre-flip so the text on the still
        # reads the right way round for the people in the meeting.
        img = np.ascontiguousarray(frame[:, ::-1]) if self._mirror else frame
        sink.submit(img, time.monotonic())

    def status(self) -> VcamStatus:
        sink = self._sink
        if sink is None:
            return VcamStatus("off")
        st = sink.stats()
        if st.get("last_error"):
            return VcamStatus("error", str(st.get("device") or ""), str(st.get("backend") or ""),
                              f"the virtual camera stopped: {st['last_error']}",
                              "turn the virtual camera off and on again; if it keeps failing, "
                              "reload the driver")
        return VcamStatus("on", str(st.get("device") or ""), str(st.get("backend") or ""))

    def new_failure(self) -> VcamStatus | None:
        """The status once, the first time the open camera fails mid-stream."""
        status = self.status()
        if status.state != "error" or status.message == self._last_error_reported:
            return None
        self._last_error_reported = status.message
        return status
