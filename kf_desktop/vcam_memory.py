"""An in-memory pyvirtualcam backend.

The real ``pyvirtualcam.Camera`` front end runs (format checks, reshaping,
backend selection); only the device is replaced. Used by the tests (DESIGN
section 7) and by `kf-desktop bench`, which measures the real output path on
machines without a virtual-camera driver.

Each ``MemoryVcam`` builds its own backend class in a closure and records the
instances that class creates, so no state lives at module level; pyvirtualcam's
own registry holds the class while it is registered.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import pyvirtualcam
from pyvirtualcam.camera import BACKENDS
from pyvirtualcam.util import decode_fourcc


class MemoryVcam:
    """Factory + record of in-memory virtual camera backends for one test.

    keep_last: how many sent frames each instance keeps (as (H, W, 3) arrays).
    name: the pyvirtualcam backend name; give two live instances different names.
    fail_after: if set, ``send`` raises RuntimeError("device lost ...") once
        that many frames were sent (simulates an unplugged/removed device).
    """

    def __init__(self, keep_last: int = 64, fail_after: int | None = None,
                 device_name: str = "kf-mem-cam", name: str = "kf_test_mem",
                 on_frame=None) -> None:
        self.keep_last = keep_last
        #: ``on_frame(image, send_time)`` for every sent frame, on the sender's
        #: thread (measurements that must not keep whole frames).
        self.on_frame = on_frame
        self.fail_after = fail_after
        self.device_name = device_name
        self.instances: list = []
        self.name = name  # pyvirtualcam backend name (pass as backend=...)
        self.backend_class = self._make_class()

    def _make_class(self) -> type:
        owner = self

        class MemoryBackend:
            def __init__(self, *, width: int, height: int, fps: float, fourcc: int,
                         device: str | None, **kw) -> None:
                fmt = decode_fourcc(fourcc)
                if fmt != pyvirtualcam.PixelFormat.RGB.value:
                    raise RuntimeError(f"memory backend supports RGB only, got {fmt!r}")
                if device is not None and device != owner.device_name:
                    raise RuntimeError(f"device {device!r} not found")
                self.width, self.height, self.fps = width, height, fps
                self.count = 0
                self.frames: collections.deque[np.ndarray] = collections.deque(maxlen=owner.keep_last)
                self.send_times: list[float] = []
                self.closed = False
                self.close_calls = 0
                self._lock = threading.Lock()
                owner.instances.append(self)

            def send(self, frame: np.ndarray) -> None:
                # pyvirtualcam passes a 1-D C-contiguous view of the caller's array
                if owner.fail_after is not None and self.count >= owner.fail_after:
                    raise RuntimeError("device lost (simulated)")
                img = frame.reshape(self.height, self.width, 3).copy()
                with self._lock:
                    self.count += 1
                    self.frames.append(img)
                    self.send_times.append(time.monotonic())
                if owner.on_frame is not None:
                    owner.on_frame(img, self.send_times[-1])

            def close(self) -> None:
                self.closed = True
                self.close_calls += 1

            def device(self) -> str:
                return owner.device_name

            def native_fourcc(self):
                return None

        return MemoryBackend

    def register(self) -> str:
        pyvirtualcam.register_backend(self.name, self.backend_class)
        return self.name

    def unregister(self) -> None:
        BACKENDS.pop(self.name, None)

    @property
    def last(self):
        assert self.instances, "no virtual camera was opened"
        return self.instances[-1]
