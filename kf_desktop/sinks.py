"""Frame sinks: virtual camera, mp4 recorder, preview callback, null.

All take ``(H, W, 3) uint8 RGB`` images with the ``time.monotonic()`` capture
timestamp of the camera frame they were made from (for end-to-end latency).

Frame size: a sink built for W x H letterboxes an image of another size into
W x H (aspect ratio kept, black bars), so a mid-session change of output size
or portrait never takes the camera down. Images that are not (H, W, 3) uint8
raise ValueError in ``submit``.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from kf_desktop.errors import DeviceError, UserError

log = logging.getLogger(__name__)

VCAM_LABEL = "kf-desktop"
LINUX_VCAM_SETUP = (
    "install and load the v4l2loopback driver: "
    "sudo apt install v4l2loopback-dkms && "
    f'sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label="{VCAM_LABEL}" '
    "(then check with `kf-desktop doctor`)"
)
OBS_VCAM_SETUP = (
    "install OBS Studio 30 or newer, start its Virtual Camera once "
    "(OBS: Start Virtual Camera), then close OBS and try again"
)


@runtime_checkable
class FrameSink(Protocol):
    """Where finished frames go. ``submit`` takes (H, W, 3) uint8 RGB plus the
    capture timestamp; ``stop`` is idempotent and releases everything."""

    def start(self) -> None: ...

    def submit(self, image: np.ndarray, capture_ts: float) -> None: ...

    def stop(self) -> None: ...

    def stats(self) -> dict: ...


def vcam_setup_hint(system: str | None = None) -> str:
    """How to get a virtual camera driver on this OS (``platform.system()`` name)."""
    system = system or platform.system()
    if system == "Linux":
        return LINUX_VCAM_SETUP
    if system in ("Windows", "Darwin"):
        return OBS_VCAM_SETUP
    return f"virtual cameras are not supported on {system}; record to a file with --out instead"


def probe_virtual_camera(width: int = 640, height: int = 480, fps: float = 30,
                         backend: str | None = None) -> tuple[bool, str, str]:
    """Open and close a virtual camera once: (ok, detail, fix) for ``doctor``.

    Fails (with the reason) if the device is busy, e.g. while kf-desktop
    itself is streaming to it.
    """
    try:
        import pyvirtualcam
    except ImportError as e:
        return False, f"pyvirtualcam not installed ({e})", "pip install pyvirtualcam"
    try:
        with pyvirtualcam.Camera(width, height, fps, backend=backend) as cam:
            return True, f"{cam.device} ({cam.backend})", ""
    except (RuntimeError, ValueError, OSError, KeyError) as e:
        detail = str(e).strip() or "no virtual camera backend for this system"
        return False, detail, vcam_setup_hint()


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3:
        desc = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {desc}")


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Return ``image`` as (height, width, 3): unchanged if it already is,
    otherwise scaled to fit and centred on black (letterbox / pillarbox)."""
    ih, iw = image.shape[:2]
    if (iw, ih) == (width, height):
        return image
    scale = min(width / iw, height / ih)
    nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((height, width, 3), np.uint8)
    x0, y0 = (width - nw) // 2, (height - nh) // 2
    out[y0:y0 + nh, x0:x0 + nw] = resized
    return out


def _percentiles(values: collections.deque) -> dict[str, float | int | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    p50, p95, p99 = np.percentile(np.fromiter(values, float), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "n": len(values)}


class VirtualCameraSink:
    """Publishes frames through pyvirtualcam at a constant rate.

    A sender thread sends every 1/fps s (own monotonic schedule): the newest
    submitted frame if there is one it has not sent yet, else the previous one
    again (``frames_repeated``), because meeting apps freeze or drop a camera
    that stops delivering. Before the first submit it sends ``placeholder``
    (default black). ``submit`` never blocks on the sender: it copies the image
    into a one-slot mailbox (newest wins; superseded frames count as
    ``frames_dropped``). Letterboxing and mirroring happen on the sender thread,
    once per new frame.

    If sending fails mid-stream, the error is logged and kept in
    ``stats()['last_error']``, sending stops, and ``failed`` becomes True; the
    process keeps running and ``stop()`` still cleans up.
    """

    def __init__(self, width: int = 1280, height: int = 720, fps: float = 30,
                 backend: str | None = None, mirror: bool = False, device: str | None = None,
                 *, placeholder: np.ndarray | None = None, latency_window: int = 300) -> None:
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"bad virtual camera format {width}x{height}@{fps}")
        self.backend = backend
        self.mirror = mirror
        self.device = device
        if placeholder is not None:
            check_image(placeholder)
            placeholder = fit_frame(placeholder, self.width, self.height)
        else:
            placeholder = np.zeros((self.height, self.width, 3), np.uint8)
        self._placeholder = np.ascontiguousarray(placeholder)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cam: Any = None
        # mailbox: (image, capture_ts, seq); seq increments per submit
        self._latest: tuple[np.ndarray, float, int] | None = None
        self._seq = 0
        self._sent_seq = 0  # seq of the newest frame already sent
        self._frames_sent = 0
        self._frames_repeated = 0
        self._frames_placeholder = 0
        self._frames_submitted = 0
        self._frames_dropped = 0
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._send_times: collections.deque[float] = collections.deque(maxlen=max(2, int(2 * self.fps)))
        self._last_error: str | None = None
        self._backend_name: str | None = None
        self._device_name: str | None = None

    # ---- lifecycle ------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        import pyvirtualcam
        from pyvirtualcam.camera import BACKENDS

        if self.backend is not None and self.backend not in BACKENDS:
            raise DeviceError(
                f"unknown virtual camera backend {self.backend!r}; "
                f"available here: {', '.join(BACKENDS) or 'none'}",
                vcam_setup_hint())
        try:
            cam = pyvirtualcam.Camera(self.width, self.height, self.fps,
                                      fmt=pyvirtualcam.PixelFormat.RGB,
                                      device=self.device, backend=self.backend)
        except RuntimeError as e:
            # pyvirtualcam joins every backend's failure into one RuntimeError
            # (empty when no backend exists for this OS at all).
            detail = str(e).strip() or "no virtual camera backend for this system"
            raise DeviceError(f"no virtual camera available: {detail}", vcam_setup_hint()) from e
        except (ValueError, OSError) as e:
            raise DeviceError(f"cannot open the virtual camera: {e}", vcam_setup_hint()) from e
        self._cam = cam
        self._backend_name = cam.backend
        try:
            self._device_name = cam.device
        except Exception:  # a backend without device(); only cosmetic
            self._device_name = self.device
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="vcam-sender", daemon=True)
        self._thread.start()
        log.info("virtual camera %s (%s) %dx%d@%g", self._device_name, self._backend_name,
                 self.width, self.height, self.fps)

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5.0)
            if thread.is_alive():
                log.warning("virtual camera sender did not stop within 5 s (driver hang?)")
                return  # don't close the device under a send in progress
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.close()
            except Exception as e:  # closing a broken device must not crash shutdown
                log.warning("closing the virtual camera failed: %s", e)
                self._last_error = self._last_error or f"close: {type(e).__name__}: {e}"

    def __enter__(self) -> "VirtualCameraSink":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- producer side ----------------------------------------------------
    def submit(self, image: np.ndarray, capture_ts: float) -> None:
        check_image(image)
        img = np.array(image, copy=True, order="C")  # the caller may reuse its buffer
        with self._lock:
            if self._latest is not None and self._latest[2] > self._sent_seq:
                self._frames_dropped += 1
            self._seq += 1
            self._latest = (img, float(capture_ts), self._seq)
            self._frames_submitted += 1

    @property
    def failed(self) -> bool:
        return self._last_error is not None

    # ---- sender thread ---------------------------------------------------
    def _prepare(self, image: np.ndarray) -> np.ndarray:
        out = fit_frame(image, self.width, self.height)
        if self.mirror:
            out = out[:, ::-1]
        return np.ascontiguousarray(out)

    def _run(self) -> None:
        period = 1.0 / self.fps
        cam = self._cam
        current = self._placeholder
        have_frame = False
        next_t = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now < next_t and self._stop.wait(next_t - now):
                break
            now = time.monotonic()
            if now - next_t > period:
                next_t = now  # fell behind (suspend, long GC): no catch-up burst
            next_t += period
            with self._lock:
                latest = self._latest
                fresh = latest is not None and latest[2] > self._sent_seq
                if fresh:
                    self._sent_seq = latest[2]
            if fresh:
                current = self._prepare(latest[0])
            try:
                cam.send(current)
            except Exception as e:
                self._last_error = f"{type(e).__name__}: {e}"
                log.error("virtual camera stopped: %s", self._last_error)
                return
            t_sent = time.monotonic()
            with self._lock:
                self._frames_sent += 1
                self._send_times.append(t_sent)
                if fresh:
                    have_frame = True
                    self._latency_ms.append((t_sent - latest[1]) * 1000.0)
                elif have_frame:
                    self._frames_repeated += 1
                else:
                    self._frames_placeholder += 1

    def stats(self) -> dict:
        with self._lock:
            times = list(self._send_times)
            send_fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) >= 2 and times[-1] > times[0] else 0.0
            return {
                "running": self._thread is not None and not self.failed,
                "backend": self._backend_name,
                "device": self._device_name,
                "width": self.width, "height": self.height, "fps": self.fps,
                "mirror": self.mirror,
                "frames_sent": self._frames_sent,
                "frames_repeated": self._frames_repeated,
                "frames_placeholder": self._frames_placeholder,
                "frames_submitted": self._frames_submitted,
                "frames_dropped": self._frames_dropped,
                "send_fps": send_fps,
                "latency_ms": _percentiles(self._latency_ms),
                "last_error": self._last_error,
            }


def _even(n: int) -> bool:
    return n % 2 == 0


class RecorderSink:
    """Writes every submitted frame, in order, to an mp4 (offline render: no
    pacing, nothing dropped; ``submit`` blocks while the encoder is busy).

    Encoder: ffmpeg (libx264, yuv420p, preset veryfast, crf 20, +faststart)
    when ``ffmpeg`` is on PATH, else OpenCV's mp4v writer; ``encoder`` forces
    "ffmpeg" or "opencv". Frames go to a hidden temporary file in the output
    folder that is renamed to ``path`` by ``stop()``, so an interrupted run
    never leaves a half-written file under the final name. If the encoder
    fails (disk full, broken pipe) a UserError is raised and what was written
    is kept as ``<stem>.partial.mp4``. ``stop()`` with no frames written
    creates no file.
    """

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float,
                 *, encoder: str | None = None, crf: int = 20, preset: str = "veryfast") -> None:
        self.path = Path(path)
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        if self.width <= 0 or self.height <= 0 or self.fps <= 0:
            raise ValueError(f"bad recording format {width}x{height}@{fps}")
        if encoder not in (None, "ffmpeg", "opencv"):
            raise ValueError(f"encoder must be None, 'ffmpeg' or 'opencv', got {encoder!r}")
        self.encoder_request = encoder
        self.crf, self.preset = crf, preset
        self.encoder: str | None = None
        self.tmp_path: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self._writer: cv2.VideoWriter | None = None
        self._frames_written = 0
        self._error: UserError | None = None
        self._done = False

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".partial.mp4")

    def _unwritable(self, reason: str) -> UserError:
        return UserError(f"cannot write {self.path}: {reason}; choose another --out",
                         "pass --out with a file in an existing folder you can write to")

    def start(self) -> None:
        if self.tmp_path is not None or self._done:
            return
        if self.path.is_dir():
            raise self._unwritable("it is a folder")
        folder = self.path.parent
        # Not mkstemp: its 0600 mode would stick to the final video. O_EXCL with
        # 0666 gives a fresh file with the user's usual (umask) permissions.
        tmp = folder / f".{self.path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp.mp4"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as e:
            raise self._unwritable(e.strerror or str(e)) from e
        self.tmp_path = tmp
        ffmpeg = shutil.which("ffmpeg")
        use_ffmpeg = self.encoder_request == "ffmpeg" or (self.encoder_request is None and ffmpeg)
        if use_ffmpeg and not ffmpeg:
            self._discard_tmp()
            raise UserError("ffmpeg was requested for recording but is not on PATH",
                            "install ffmpeg (e.g. sudo apt install ffmpeg) or use the OpenCV encoder")
        try:
            if use_ffmpeg:
                self._start_ffmpeg(ffmpeg)
            else:
                self._start_opencv()
        except BaseException:
            self._discard_tmp()
            raise

    def _start_ffmpeg(self, ffmpeg: str) -> None:
        rate = str(Fraction(self.fps).limit_denominator(1001))
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
               "-framerate", rate, "-i", "pipe:0", "-an"]
        if not (_even(self.width) and _even(self.height)):
            cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]  # yuv420p needs even sides
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
                "-pix_fmt", "yuv420p", "-r", rate, "-movflags", "+faststart",
                "-f", "mp4", str(self.tmp_path)]
        # stderr to a file: a pipe nobody drains could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._stderr)
        except OSError as e:
            self._stderr.close()
            raise UserError(f"cannot run ffmpeg for recording: {e}", "reinstall ffmpeg") from e
        self.encoder = "ffmpeg"

    def _start_opencv(self) -> None:
        writer = cv2.VideoWriter(str(self.tmp_path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                 (self.width, self.height))
        if not writer.isOpened():
            raise self._unwritable("OpenCV could not open an mp4 writer there")
        self._writer = writer
        self.encoder = "opencv"

    def submit(self, image: np.ndarray, capture_ts: float = 0.0) -> None:
        if self._error is not None:
            raise self._error
        if self.tmp_path is None or self._done:
            raise RuntimeError("RecorderSink.submit() outside start()/stop()")
        check_image(image)
        frame = np.ascontiguousarray(fit_frame(image, self.width, self.height))
        if self._proc is not None:
            try:
                self._proc.stdin.write(memoryview(frame).cast("B"))
            except OSError as e:  # BrokenPipeError: ffmpeg died (disk full, ...)
                raise self._fail(e) from e
        else:
            self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self._frames_written += 1

    def _ffmpeg_stderr(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _fail(self, exc: BaseException | None) -> UserError:
        """Stop the encoder, keep what exists as .partial.mp4, build the error."""
        rc = None
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
            try:
                rc = self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                rc = self._proc.wait()
        text = self._ffmpeg_stderr()
        self._close_encoder()
        kept = None
        if self.tmp_path is not None and self.tmp_path.exists():
            if self.tmp_path.stat().st_size > 0:
                os.replace(self.tmp_path, self.partial_path)
                kept = self.partial_path
            else:
                self.tmp_path.unlink()
        self._done = True
        disk_full = ("No space left" in text
                     or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)))
        try:
            disk_full = disk_full or shutil.disk_usage(self.path.parent).free < 1 << 20
        except OSError:
            pass
        where = f"; kept what was written as {kept}" if kept else ""
        last = text.splitlines()[-1] if text else (f"ffmpeg exited with code {rc}" if rc is not None else str(exc))
        if disk_full:
            err = UserError(f"recording to {self.path} failed: disk full (no space left on device)"
                            f" after {self._frames_written} frames{where}",
                            "free some disk space or choose another --out on a disk with more space")
        else:
            err = UserError(f"recording to {self.path} failed after {self._frames_written} frames: "
                            f"{last}{where}",
                            "check free disk space and that ffmpeg works (`ffmpeg -version`), "
                            "or choose another --out")
        self._error = err
        return err

    def _close_encoder(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._proc = None
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _discard_tmp(self) -> None:
        if self.tmp_path is not None:
            try:
                self.tmp_path.unlink()
            except FileNotFoundError:
                pass

    def abort(self) -> None:
        """Give up (e.g. the render failed or was interrupted): kill the encoder
        and remove the temporary file; ``path`` is never created."""
        if self._done or self.tmp_path is None:
            return
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._close_encoder()
        self._discard_tmp()
        self._done = True

    def stop(self) -> None:
        """Finish the file and rename it to ``path``. Raises UserError if the
        encoder fails while finishing (e.g. disk full during +faststart)."""
        if self._done or self.tmp_path is None:
            return
        if self._frames_written == 0:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
            self._close_encoder()
            self._discard_tmp()
            self._done = True
            log.warning("no frames were recorded; %s not written", self.path)
            return
        if self._proc is not None:
            try:
                self._proc.stdin.close()
            except OSError as e:
                raise self._fail(e) from e
            rc = self._proc.wait()
            if rc != 0:
                raise self._fail(None)
            self._close_encoder()
        else:
            self._close_encoder()
            if not self.tmp_path.exists() or self.tmp_path.stat().st_size == 0:
                raise self._fail(None)
        os.replace(self.tmp_path, self.path)
        self._done = True
        log.info("wrote %s (%d frames, %s)", self.path, self._frames_written, self.encoder)

    def __enter__(self) -> "RecorderSink":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict:
        return {"frames_written": self._frames_written, "path": str(self.path),
                "encoder": self.encoder, "finished": self._done and self._error is None,
                "last_error": self._error.message if self._error else None}


class PreviewSink:
    """Calls ``callback(image, capture_ts)`` synchronously on the submitting
    thread (the GUI marshals to its own thread). A callback exception is
    logged and counted, not raised: a preview bug must not stop the camera."""

    def __init__(self, callback: Callable[[np.ndarray, float], None]) -> None:
        self.callback = callback
        self._frames = 0
        self._errors = 0
        self._last_error: str | None = None

    def start(self) -> None:
        pass

    def submit(self, image: np.ndarray, capture_ts: float) -> None:
        self._frames += 1
        try:
            self.callback(image, capture_ts)
        except Exception as e:
            self._errors += 1
            if self._last_error is None:
                log.exception("preview callback failed")
            self._last_error = f"{type(e).__name__}: {e}"

    def stop(self) -> None:
        pass

    def stats(self) -> dict:
        return {"frames_submitted": self._frames, "frames": self._frames, "errors": self._errors,
                "last_error": self._last_error}


class NullSink:
    """Accepts and counts frames (benchmarks, headless runs)."""

    def __init__(self) -> None:
        self._frames = 0
        self._last_ts: float | None = None

    def start(self) -> None:
        pass

    def submit(self, image: np.ndarray, capture_ts: float) -> None:
        self._frames += 1
        self._last_ts = capture_ts

    def stop(self) -> None:
        pass

    def stats(self) -> dict:
        # "frames" is an alias of "frames_submitted" (used by session tests).
        return {"frames_submitted": self._frames, "frames": self._frames,
                "last_capture_ts": self._last_ts}
