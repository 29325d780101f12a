"""Frame sources: a real webcam and a video file behind one interface.

Both hand out ``Frame`` objects (RGB uint8, ``time.monotonic()`` timestamp)
from a blocking ``read()``, so the capture thread, the CLI and the tests do not
care where frames come from. A file source stands in for the camera on machines
without one (DESIGN section 7).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import platform
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from kf_desktop.errors import DeviceError, UserError
from kf_desktop.frames import Frame
from kf_desktop.input_path import regular_file

log = logging.getLogger(__name__)

# Our own virtual camera (see sinks.VirtualCameraSink / the modprobe hint):
# capturing from it would feed the avatar back into itself.
OWN_VCAM_LABEL = "kf-desktop"

_CAMERA_HINT = ("check that the camera is plugged in and not used by another app "
                "(close Zoom/Teams/OBS/browser tabs), or pick another with --camera; "
                "run `kf-desktop doctor` to list cameras")


class SourceLost(DeviceError):
    """A device that was delivering frames stopped doing so (unplugged, taken
    by another app, driver hang)."""


@runtime_checkable
class FrameSource(Protocol):
    """What the capture thread reads from.

    ``open()`` raises UserError/DeviceError with a hint; ``read()`` blocks until
    the next frame and returns None at end of stream; ``close()`` is idempotent.
    ``fps``, ``size`` (w, h) and ``name`` are valid after ``open()``.
    """

    def open(self) -> None: ...

    def read(self) -> Frame | None: ...

    def close(self) -> None: ...

    @property
    def fps(self) -> float: ...

    @property
    def size(self) -> tuple[int, int]: ...

    @property
    def name(self) -> str: ...

    def __enter__(self) -> "FrameSource": ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass(frozen=True)
class CameraInfo:
    index: int  # what CameraSource(index) takes
    name: str  # human-readable device name ("Integrated Camera")
    path: str  # "/dev/video0" on Linux, "" where there is no device file


def _capture_api() -> int:
    system = platform.system()
    if system == "Linux":
        return cv2.CAP_V4L2
    if system == "Windows":
        return cv2.CAP_DSHOW
    if system == "Darwin":
        return cv2.CAP_AVFOUNDATION
    return cv2.CAP_ANY


def list_cameras(sysfs_root: str = "/sys/class/video4linux", max_probe: int = 6) -> list[CameraInfo]:
    """Cameras the user can pick, without opening any device on Linux.

    Linux: one entry per /sys/class/video4linux/videoN capture node. UVC
    cameras expose a second (metadata) node with ``index`` 1; those are
    skipped, as is our own virtual camera (label "kf-desktop").
    Elsewhere: indices 0..max_probe-1 are opened briefly (there is no cheap
    way to enumerate DirectShow/AVFoundation devices from OpenCV).
    """
    if platform.system() == "Linux":
        cams = []
        for node in glob.glob(os.path.join(sysfs_root, "video*")):
            m = re.fullmatch(r"video(\d+)", os.path.basename(node))
            if not m:
                continue
            name = _read_text(os.path.join(node, "name")) or f"video{m.group(1)}"
            node_index = _read_text(os.path.join(node, "index"))
            if node_index not in ("", "0"):
                continue  # metadata / secondary node of a camera
            if name.strip() == OWN_VCAM_LABEL:
                continue
            cams.append(CameraInfo(int(m.group(1)), name.strip(), f"/dev/video{m.group(1)}"))
        return sorted(cams, key=lambda c: c.index)
    cams = []
    for i in range(max_probe):
        cap = cv2.VideoCapture(i, _capture_api())
        try:
            if cap.isOpened():
                cams.append(CameraInfo(i, f"Camera {i}", ""))
        finally:
            cap.release()
    return cams


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def _describe_cameras(cams: list[CameraInfo]) -> str:
    if not cams:
        return "none detected"
    return ", ".join(f"{c.index} ({c.name})" for c in cams)


class _FpsMeter:
    """EMA of inter-frame intervals; reports fps = 1 / mean interval."""

    def __init__(self, initial_fps: float, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self._interval = 1.0 / initial_fps if initial_fps > 0 else 1.0 / 30
        self._last: float | None = None
        self._samples = 0

    def tick(self, t: float) -> None:
        if self._last is not None:
            dt = t - self._last
            if dt > 0:
                # The first real interval replaces the driver's claim outright.
                self._interval = dt if self._samples == 0 else (
                    self._interval + self.alpha * (dt - self._interval))
                self._samples += 1
        self._last = t

    @property
    def fps(self) -> float:
        return 1.0 / self._interval

    @property
    def measured(self) -> bool:
        return self._samples > 0


class CameraSource:
    """A webcam through OpenCV (V4L2 on Linux, DirectShow on Windows,
    AVFoundation on macOS).

    Requests ``size``/``fps`` and MJPG (uncompressed YUYV caps most USB
    cameras at 5-10 fps at 720p); whatever the camera grants is read back and
    reported by ``size``. ``fps`` is the measured delivery rate (EMA of
    inter-frame times), starting from the driver's claim until frames arrive.

    ``read()`` raises ``SourceLost`` after ``max_failures`` consecutive failed
    reads or when no frame arrived for ``timeout_s``.
    """

    def __init__(self, index: int, size: tuple[int, int] = (1280, 720), fps: float = 30,
                 mjpg: bool = True, *, timeout_s: float = 2.0, max_failures: int = 10) -> None:
        self.index = int(index)
        self.requested_size = (int(size[0]), int(size[1]))
        self.requested_fps = float(fps)
        self.mjpg = mjpg
        self.timeout_s = timeout_s
        self.max_failures = max_failures
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()  # read() vs close() from another thread
        self._size = self.requested_size
        self._meter = _FpsMeter(self.requested_fps)
        self._pending: Frame | None = None  # first frame, read in open()
        self._count = 0
        self._last_ok = 0.0
        self._name = f"camera {self.index}"
        self.fourcc = ""  # granted pixel format, e.g. "MJPG" / "YUYV"

    # ---- hooks --------------------------------------------------------
    def _open_capture(self) -> cv2.VideoCapture:
        """Open the device. Overridable so tests can substitute another
        cv2.VideoCapture (e.g. one reading a file) on camera-less machines."""
        return cv2.VideoCapture(self.index, _capture_api())

    # ---- FrameSource ----------------------------------------------------
    @property
    def fps(self) -> float:
        return self._meter.fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def open(self) -> None:
        if self._cap is not None:
            return
        if self.index < 0:
            raise DeviceError(f"camera index must be >= 0, got {self.index}", _CAMERA_HINT)
        cap = self._open_capture()
        if not cap.isOpened():
            cap.release()
            cams = list_cameras()
            if any(c.index == self.index for c in cams):
                raise DeviceError(
                    f"camera {self.index} exists but could not be opened "
                    f"(busy or no permission); available cameras: {_describe_cameras(cams)}",
                    "close other apps that use the camera; on Linux add yourself to the "
                    "'video' group (sudo usermod -aG video $USER, then log in again); "
                    "run `kf-desktop doctor`")
            raise DeviceError(
                f"camera {self.index} not found; available cameras: {_describe_cameras(cams)}",
                _CAMERA_HINT)
        self._configure(cap)
        for c in list_cameras() if platform.system() == "Linux" else []:
            if c.index == self.index:
                self._name = f"{c.name} ({c.path})"
        # One frame proves the device delivers and tells the real size.
        t0 = time.monotonic()
        ok, bgr = False, None
        while time.monotonic() - t0 < max(self.timeout_s, 3.0):
            ok, bgr = cap.read()
            if ok and bgr is not None:
                break
            time.sleep(0.02)
        if not ok or bgr is None:
            cap.release()
            raise DeviceError(f"camera {self.index} opened but delivers no frames", _CAMERA_HINT)
        now = time.monotonic()
        self._size = (int(bgr.shape[1]), int(bgr.shape[0]))
        self._meter.tick(now)
        self._pending = Frame(self._to_rgb(bgr), now, 0)
        self._count = 1
        self._last_ok = now
        self._cap = cap
        log.info("opened %s: %dx%d, fourcc %s, driver fps %.1f", self._name, *self._size,
                 self.fourcc or "?", self._meter.fps)

    def _configure(self, cap: cv2.VideoCapture) -> None:
        # Order matters for V4L2: the pixel format limits the sizes/rates on offer.
        if self.mjpg:
            cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*"MJPG"))
        w, h = self.requested_size
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, w)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, h)
        cap.set(cv2.CAP_PROP_FPS, self.requested_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # fresh frames, not a backlog
        if hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC"):
            cap.set(cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.timeout_s * 1000))
        code = int(cap.get(cv2.CAP_PROP_FOURCC))
        self.fourcc = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).strip("\0 ") if code > 0 else ""
        gw, gh = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if gw > 0 and gh > 0:
            self._size = (gw, gh)
        gfps = cap.get(cv2.CAP_PROP_FPS)
        if gfps and math.isfinite(gfps) and 1 <= gfps <= 240:
            self._meter = _FpsMeter(gfps)

    @staticmethod
    def _to_rgb(bgr: np.ndarray) -> np.ndarray:
        if bgr.ndim == 2:
            return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB))
        return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def read(self) -> Frame | None:
        if self._pending is not None:
            frame, self._pending = self._pending, None
            return frame
        failures = 0
        while True:
            with self._lock:
                cap = self._cap
                if cap is None:
                    return None  # closed (possibly from another thread)
                ok, bgr = cap.read()
            now = time.monotonic()
            if ok and bgr is not None:
                self._meter.tick(now)
                self._last_ok = now
                if (bgr.shape[1], bgr.shape[0]) != self._size:
                    self._size = (int(bgr.shape[1]), int(bgr.shape[0]))
                frame = Frame(self._to_rgb(bgr), now, self._count)
                self._count += 1
                return frame
            failures += 1
            if failures >= self.max_failures or now - self._last_ok > self.timeout_s:
                raise SourceLost(
                    f"{self._name} stopped delivering frames "
                    f"({failures} failed reads, {now - self._last_ok:.1f} s without a frame)",
                    "check the cable and that no other app took the camera, then restart; "
                    "run `kf-desktop doctor`")
            time.sleep(0.01)

    def close(self) -> None:
        with self._lock:
            cap, self._cap = self._cap, None
            self._pending = None
        if cap is not None:
            cap.release()

    def __enter__(self) -> "CameraSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CameraSource(index={self.index}, size={self._size}, fps={self.fps:.1f})"


def _check_isobmff_complete(path: Path) -> None:
    """Raise UserError if an MP4/MOV file's top-level boxes run past its end.

    A cut-off download of a faststart mp4 still opens in FFmpeg and decodes a
    few frames before failing, so "the first frame decodes" is not enough.
    Files that are not ISO-BMFF are left to the decoder.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[4:8] != b"ftyp":
            return
        off = 0
        while off < size:
            f.seek(off)
            hdr = f.read(16)
            if len(hdr) < 8:
                break
            box_size, box_type = struct.unpack(">I4s", hdr[:8])
            if box_size == 1:
                if len(hdr) < 16:
                    break
                box_size = struct.unpack(">Q", hdr[8:16])[0]
            elif box_size == 0:
                return  # box runs to end of file by definition
            if box_size < 8:
                raise UserError(f"{path} is not a valid video file (corrupt MP4 structure)",
                                "re-download or re-export the video")
            if off + box_size > size:
                raise UserError(
                    f"{path} is truncated: its {box_type.decode('latin-1')!r} box needs "
                    f"{off + box_size} bytes but the file has {size} (incomplete download or copy?)",
                    "re-download or re-copy the video")
            off += box_size


class VideoFileSource:
    """Frames from a video file (OpenCV/FFmpeg decode), RGB.

    realtime=True paces frames to the file's fps on a monotonic clock: read()
    sleeps until the next frame is due and never drops frames. A consumer that
    falls behind by more than one frame interval gets the next frame at once
    and the schedule restarts from "now" (no catch-up burst). realtime=False
    decodes as fast as the consumer reads. loop=True restarts at the end;
    max_frames caps the total frames handed out (across loops).
    Timestamps are ``time.monotonic()`` when a frame is handed out; ``index``
    keeps counting across loops.
    """

    def __init__(self, path: str | os.PathLike, realtime: bool = True, loop: bool = False,
                 max_frames: int | None = None) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.max_frames = max_frames
        self._cap: cv2.VideoCapture | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()  # interrupts a pacing sleep on close()
        self._fps = 25.0
        self._size = (0, 0)
        self._pending: np.ndarray | None = None  # first decoded frame (BGR)
        self._count = 0
        self._next_due: float | None = None
        self.frame_count = 0  # container's claim; 0 if unknown
        self.loops = 0
        self._pass_frames = 0  # frames decoded since the file was (re)started
        #: (frames decoded, frames the container claims) when a pass through
        #: the file ended well short of its claim: damaged part-way through.
        self.damage: tuple[int, int] | None = None
        self._notices: list[tuple[str, str, str]] = []

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def size(self) -> tuple[int, int]:
        return self._size

    @property
    def name(self) -> str:
        return self.path.name

    def _open_cap(self) -> cv2.VideoCapture:
        # An absolute path: a name like `concat:a|b` or `http:x` is then a
        # local file to FFmpeg, never a protocol (kf_desktop/input_path.py).
        name = os.path.abspath(self.path)
        cap = cv2.VideoCapture(name, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(name)
        return cap

    def open(self) -> None:
        if self._cap is not None:
            return
        p = self.path
        if not p.exists():
            raise UserError(f"video file not found: {p}", "check the path (and the spelling)")
        if p.is_dir():
            raise UserError(f"{p} is a folder, not a video file", "pass the path of a video file")
        regular_file(p, "video file")  # a FIFO would block the decoder for ever
        if not os.access(p, os.R_OK):
            raise UserError(f"cannot read {p}: permission denied", "check the file's permissions")
        if p.stat().st_size == 0:
            raise UserError(f"{p} is empty (0 bytes)", "re-download or re-export the video")
        _check_isobmff_complete(p)
        cap = self._open_cap()
        if not cap.isOpened():
            raise UserError(f"cannot open {p}: not a video file, or corrupt/unsupported format",
                            "use an .mp4 (H.264) or another format FFmpeg reads")
        ok, bgr = cap.read()
        if not ok or bgr is None:
            cap.release()
            raise UserError(f"cannot decode {p}: no video frame could be read (corrupt or no video stream)",
                            "re-download or re-export the video, e.g. as H.264 .mp4")
        fps = cap.get(cv2.CAP_PROP_FPS)
        self._fps = float(fps) if fps and math.isfinite(fps) and 1 <= fps <= 240 else 25.0
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(n) if n and math.isfinite(n) and n > 0 else 0
        self._size = (int(bgr.shape[1]), int(bgr.shape[0]))
        self._pending = bgr
        self._pass_frames = 0
        self._closed.clear()
        self._cap = cap

    def drain_notices(self) -> list[tuple[str, str, str]]:
        """(code, message, hint) of what went wrong without stopping the
        source (e.g. a damaged file that ended early), oldest first; each is
        handed out once."""
        with self._lock:
            out, self._notices = self._notices, []
        return out

    def _check_pass_complete(self) -> None:
        """Called (under the lock) when a pass through the file ended."""
        n, claim = self._pass_frames, self.frame_count
        # The claim of some containers is an estimate (duration x fps): allow
        # a few % before calling the file damaged.
        if claim and n < 0.97 * claim - 2:
            first = self.damage is None
            self.damage = (n, claim)
            if first:
                fps = self._fps
                self._notices.append((
                    "source_damaged",
                    f"{self.path.name} is damaged: decoding stopped after {n} of {claim} frames "
                    f"({n / fps:.1f} s of {claim / fps:.1f} s)",
                    "re-download or re-export the video; playback restarts from its beginning"
                    if self.loop else "re-download or re-export the video"))
                log.warning("%s: decoding stopped after %d of %d frames (damaged file?)",
                            self.path, n, claim)

    def _decode_next(self) -> np.ndarray | None:
        """Next BGR frame, restarting the file when looping; None at the end."""
        if self._pending is not None:
            bgr, self._pending = self._pending, None
            self._pass_frames += 1
            return bgr
        with self._lock:
            if self._cap is None:
                return None
            ok, bgr = self._cap.read()
            if ok and bgr is not None:
                self._pass_frames += 1
                return bgr
            self._check_pass_complete()
            if not self.loop:
                return None
            # Reopening is more reliable than seeking to 0 for every container.
            self._cap.release()
            self._cap = None
            # A file that is gone for a moment (a network share reconnecting,
            # a disk waking up) is a lost source, reopened by the session like
            # an unplugged camera, not the end of the video.
            if not self.path.exists():
                raise SourceLost(f"{self.path.name} could not be read again when it looped "
                                 "(the file is gone)",
                                 "check the file's disk or network share; it is reopened "
                                 "when it is back")
            cap = self._open_cap()
            ok, bgr = cap.read()
            if not ok or bgr is None:
                cap.release()
                raise SourceLost(f"{self.path.name} could not be read again when it looped",
                                 "check the file's disk or network share; it is reopened "
                                 "when it is back")
            self._cap = cap
            self.loops += 1
            self._pass_frames = 1
            return bgr

    def read(self) -> Frame | None:
        if self._cap is None or self._closed.is_set():
            return None
        if self.max_frames is not None and self._count >= self.max_frames:
            return None
        bgr = self._decode_next()
        if bgr is None:
            return None
        rgb = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        if self.realtime:
            now = time.monotonic()
            if self._next_due is None or now - self._next_due > 1.0 / self._fps:
                self._next_due = now  # first frame, or late: deliver now, restart schedule
            elif now < self._next_due:
                if self._closed.wait(self._next_due - now):
                    return None
            self._next_due += 1.0 / self._fps
        frame = Frame(rgb, time.monotonic(), self._count)
        self._count += 1
        return frame

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            cap, self._cap = self._cap, None
            self._pending = None
        if cap is not None:
            cap.release()

    def __enter__(self) -> "VideoFileSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VideoFileSource({str(self.path)!r}, fps={self._fps:.2f}, size={self._size})"
