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
from kf_desktop.input_path import ffmpeg_url
from kf_desktop.output_lock import OutputLock
from kf_desktop.output_path import (FRAGMENTED, free_name, refuse_non_regular, replace_into,
                                    video_format)
from kf_desktop.temp_files import clean_stale, discard, forget, new_temp

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
        # Pre-convert here, on the caller's thread: the sender thread only
        # sends (it must keep its cadence while the rest of the app is busy).
        img = self._prepare(image)
        if img is image or not img.flags.owndata:
            img = np.array(img, copy=True, order="C")  # the caller may reuse its buffer
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

    #: Linux: the sender asks for SCHED_RR at this real-time priority (it
    #: sleeps between frames, so it cannot starve anything), else for this
    #: nice value; both need CAP_SYS_NICE / an rtprio limit, else it keeps the
    #: default. ``KF_VCAM_PRIORITY=default`` turns this off.
    SENDER_RT_PRIORITY = 5
    SENDER_NICE = -10

    def _raise_priority(self) -> None:
        self._priority = "default"
        want = os.environ.get("KF_VCAM_PRIORITY", "rt")
        if want == "default":
            return
        if platform.system() == "Linux":
            if want == "rt" and hasattr(os, "sched_setscheduler"):
                try:  # pid 0 = the calling thread on Linux
                    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(self.SENDER_RT_PRIORITY))
                    self._priority = f"SCHED_RR {self.SENDER_RT_PRIORITY}"
                    return
                except (OSError, AttributeError):
                    pass
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.SENDER_NICE)
                self._priority = f"nice {self.SENDER_NICE}"
            except OSError:
                pass  # not permitted: keep the default
        elif platform.system() == "Windows":
            try:
                import ctypes

                k32 = ctypes.windll.kernel32
                if k32.SetThreadPriority(k32.GetCurrentThread(), 2):  # THREAD_PRIORITY_HIGHEST
                    self._priority = "highest"
            except Exception:
                pass

    def _send(self, cam, image) -> float | None:
        """Send one frame; the send time, or None when the camera failed (the
        error is kept for stats() and the sender thread must end)."""
        try:
            cam.send(image)
        except Exception as e:
            self._last_error = f"{type(e).__name__}: {e}"
            log.error("virtual camera stopped: %s", self._last_error)
            return None
        return time.monotonic()

    def _run(self) -> None:
        self._raise_priority()
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
                current = latest[0]  # already letterboxed/mirrored by submit()
            t_sent = self._send(cam, current)
            if t_sent is None:
                return
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
            send_fps = 0.0
            if len(times) >= 2 and times[-1] > times[0]:
                # Up to now: a sender that stopped reports a falling rate.
                now = time.monotonic()
                span = times[-1] - times[0]
                if now - times[-1] > 1.5 / self.fps:
                    span = now - times[0]
                send_fps = (len(times) - 1) / span
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
                "sender_priority": getattr(self, "_priority", None),
                "latency_ms": _percentiles(self._latency_ms),
                "last_error": self._last_error,
            }


def _even(n: int) -> bool:
    return n % 2 == 0


def clean_stale_temp_files(folder: Path, **kw) -> list[Path]:
    """Deal with the registered hidden temporary videos that kf-desktop
    processes which died (killed, power cut) left in ``folder``
    (kf_desktop/temp_files.py); returns the files handled."""
    return [tmp for tmp, _ in clean_stale(folder, salvage=salvage_fragmented_mp4, **kw)]


def _ffprobe_packets(path: Path) -> tuple[dict[str, int], str] | None:
    """Demux ``path`` with ffprobe: (packets per stream type, error text), or
    None when ffprobe is not installed. A file whose moov/trailer was never
    written, or whose last fragment is cut off, gives an error text."""
    ffprobe = shutil.which("ffprobe")
    if ffprobe is None:
        return None
    try:
        res = subprocess.run([ffprobe, "-v", "error", "-count_packets", "-show_entries",
                              "stream=codec_type,nb_read_packets", "-of", "csv=p=0",
                              ffmpeg_url(path)],
                             capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {}, f"ffprobe failed: {e}"
    counts: dict[str, int] = {}
    for line in res.stdout.splitlines():
        kind, _, n = line.strip().partition(",")
        if n.strip().isdigit():
            counts[kind] = counts.get(kind, 0) + int(n)
    err = res.stderr.strip()
    if res.returncode != 0 and not err:
        err = f"ffprobe exited with code {res.returncode}"
    return counts, err


def _isobmff_complete_end(path: Path) -> int:
    """Byte offset where the last complete top-level ISO-BMFF box ends; in a
    fragmented mp4, where the last whole fragment (moof + its mdat) ends."""
    size = path.stat().st_size
    off = 0
    last_moof = None  # offset of a moof whose mdat has not been seen yet
    with open(path, "rb") as f:
        while off + 8 <= size:
            f.seek(off)
            hdr = f.read(16)
            box = int.from_bytes(hdr[:4], "big")
            kind = hdr[4:8]
            if box == 1 and len(hdr) >= 16:
                box = int.from_bytes(hdr[8:16], "big")
            if box < 8 or off + box > size:
                break
            if kind == b"moof":
                last_moof = off
            elif kind == b"mdat":
                last_moof = None
            off += box
    return last_moof if last_moof is not None else off


def verify_mp4(path: Path, *, video_frames: int | None = None,
               need_audio: bool = False) -> str | None:
    """None if ``path`` is a complete, playable mp4 (with ``video_frames``
    video packets and an audio stream when asked), else what is wrong.

    ffmpeg exits 0 even when writing the trailer failed ("No space left on
    device"), so its exit code alone proves nothing. Without ffprobe, OpenCV
    opens the file and reads its frame count."""
    if not path.exists() or path.stat().st_size == 0:
        return "the file is empty"
    probed = _ffprobe_packets(path)
    if probed is None:
        cap = cv2.VideoCapture(os.path.abspath(path))
        try:
            if not cap.isOpened() or not cap.read()[0]:
                return "the file does not open as a video"
        finally:
            cap.release()
        return None
    counts, err = probed
    if err:
        return err.splitlines()[-1][-300:]
    if video_frames is not None and counts.get("video", 0) != video_frames:
        return f"it holds {counts.get('video', 0)} of {video_frames} frames"
    if need_audio and not counts.get("audio"):
        return "it has no sound track"
    return None


ISOBMFF_SUFFIXES = (".mp4", ".m4v", ".mov")


def salvage_fragmented_mp4(path: Path) -> int:
    """Cut a fragmented mp4 back to its last complete fragment so that what
    is kept plays cleanly; returns its frame count (0: nothing playable, or
    unknown without ffprobe and OpenCV cannot read it)."""
    try:
        if path.suffix.lower() in ISOBMFF_SUFFIXES:  # Matroska demuxers stop at a cut on their own
            end = _isobmff_complete_end(path)
            if end < path.stat().st_size:
                os.truncate(path, end)
    except OSError:
        return 0
    probed = _ffprobe_packets(path)
    if probed is None:
        cap = cv2.VideoCapture(os.path.abspath(path))
        try:
            return 1 if cap.isOpened() and cap.read()[0] else 0
        finally:
            cap.release()
    counts, _ = probed
    return counts.get("video", 0)


def _disk_full(text: str, exc: BaseException | None, folder: Path) -> bool:
    if "No space left" in text or "Disk quota exceeded" in text:
        return True
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < 1 << 20
    except OSError:
        return False


class RecordingEnded(RuntimeError):
    """``submit`` on a recording that ``stop()``/``abandon()`` ended meanwhile."""


class RecorderSink:
    """Writes submitted frames, in order, to an mp4.

    Offline (``realtime=False``, `kf-desktop render`): every frame is written,
    nothing dropped or paced; ``submit`` blocks while the encoder is busy.
    Live (``realtime=True``, `run --record`): frames are placed on the output
    clock by their capture timestamp, so the file plays in real time whatever
    rate they arrive at: a slot with no new frame repeats the previous one
    (``frames_repeated``), a second frame for an already written slot is
    dropped (``frames_dropped``); a gap over ``MAX_FILL_S`` (a pause) is cut.

    Encoder: ffmpeg (libx264, yuv420p, preset veryfast, crf 20, a keyframe
    every 2 s) writing a *fragmented* mp4 (moov first, one fragment per
    keyframe), so whatever reached the disk before a crash, a kill or a full
    disk plays; else OpenCV's mp4v writer; ``encoder`` forces "ffmpeg" or
    "opencv". Frames go to a hidden temporary file in the output folder
    (``.<stem>.<pid>-<token>.tmp<ext>``, registered: kf_desktop/temp_files.py)
    that ``stop()`` verifies (ffprobe: the container demuxes without error
    and holds every frame) and only then renames to ``path``, so an
    interrupted run never leaves a half-written file under the final name.
    The container follows the extension (.mp4/.m4v, .mov, .mkv; anything
    else is refused). An existing ``path`` is replaced only with
    ``overwrite=True``; a file that appears there while recording is kept
    and the recording goes to ``<stem>-2<ext>``. A lock beside ``path``
    (kf_desktop/output_lock.py) refuses a second kf-desktop writing it. If the encoder or the verification fails (disk
    full, broken pipe) a UserError is raised; the complete fragments are kept
    as ``<stem>.partial.mp4`` (and the message says how many frames it
    holds) or, if nothing is playable, removed. ``stop()`` with no frames
    written creates no file. ``start()`` removes temporary files that dead
    processes left in the folder.

    A recorder can be started again after ``stop()`` (a stream restarted in
    the same session): each later take goes to ``<stem>-2.mp4``,
    ``<stem>-3.mp4``, ... so no take overwrites the previous one
    (``takes`` lists the finished files).

    Bounded ending: ``stop()`` gives ffmpeg ``STOP_GRACE_S`` to finish the
    file, then kills it (a child stopped or stuck on a hung disk never
    finishes) and keeps the complete fragments as ``.partial.mp4``;
    ``abandon(reason)`` does the same at once (the session calls it, from
    another thread, for a recorder that stalled) and returns the UserError
    that says what was kept. ``last_progress`` is the monotonic time of the
    last frame written.
    """

    #: stop(): seconds ffmpeg gets to write the end of the file.
    STOP_GRACE_S = 5.0

    def __init__(self, path: str | os.PathLike, width: int, height: int, fps: float,
                 *, encoder: str | None = None, crf: int = 20, preset: str = "veryfast",
                 realtime: bool = False, overwrite: bool = False, option: str = "--out",
                 lock: OutputLock | None = None) -> None:
        self.requested_path = Path(path)
        self.path = self.requested_path
        self.option = option
        self.format = video_format(self.requested_path, option)
        self.overwrite = overwrite
        self._given_lock = lock
        self._lock: OutputLock | None = None
        self.width, self.height, self.fps = int(width), int(height), float(fps)
        if self.width <= 0 or self.height <= 0 or not (0 < self.fps < 1e4):
            raise ValueError(f"bad recording format {width}x{height}@{fps}")
        if encoder not in (None, "ffmpeg", "opencv"):
            raise ValueError(f"encoder must be None, 'ffmpeg' or 'opencv', got {encoder!r}")
        self.encoder_request = encoder
        self.crf, self.preset = crf, preset
        self.realtime = realtime
        self.encoder: str | None = None
        self.tmp_path: Path | None = None
        self.takes: list[Path] = []
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self._writer: cv2.VideoWriter | None = None
        self._frames_written = 0
        self._frames_repeated = 0
        self._frames_dropped = 0
        self._t0: float | None = None  # realtime: capture time of slot 0
        self._last_frame: np.ndarray | None = None
        self._error: UserError | None = None
        self._done = False
        self._take = 0
        self.last_progress: float | None = None
        # stop() and abandon() may run on two threads at once (the session's
        # stop and the stall handler): one ends the file, the other waits.
        self._end_lock = threading.RLock()
        self._ending = False
        self._abandoned: tuple[str, str] | None = None  # abandon()'s (problem, hint)

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".partial" + self.path.suffix)

    def _unwritable(self, reason: str) -> UserError:
        return UserError(f"cannot write {self.path}: {reason}",
                         f"pass {self.option} with a file in an existing folder you can write to")

    def _release_lock(self) -> None:
        if self._lock is not None and self._lock is not self._given_lock:
            self._lock.release()
        self._lock = None

    def _next_take_path(self) -> Path:
        if self._take == 0:
            return self.requested_path
        rp = self.requested_path
        n = self._take + 1
        while True:
            cand = rp.with_name(f"{rp.stem}-{n}{rp.suffix}")
            if not cand.exists() and not cand.with_name(cand.stem + ".partial" + rp.suffix).exists():
                return cand
            n += 1

    def start(self) -> None:
        if self.tmp_path is not None and not self._done:
            return  # already recording
        if self._done:  # a restart after stop(): a new take under a new name
            self._take += 1
            self.tmp_path = None
            self._done = False
            self._error = None
            self._frames_written = self._frames_repeated = self._frames_dropped = 0
            self._t0 = None
            self._last_frame = None
            self.encoder = None
            self._ending = False
            self._abandoned = None
        self.path = self._next_take_path()
        exists = refuse_non_regular(self.path, self.option)
        if exists and not (self.overwrite and self._take == 0):
            raise UserError(f"{self.path} already exists; kf-desktop does not replace a file "
                            "unasked", f"pass --overwrite (or -y) to replace it, or "
                            f"{self.option} with another name")
        folder = self.path.parent
        if not folder.is_dir():
            raise self._unwritable(f"the folder {folder} does not exist")
        self._lock = (self._given_lock or OutputLock(self.path, self.option)).acquire()
        clean_stale_temp_files(folder)
        try:
            tmp = new_temp(self.path)
        except OSError as e:
            self._release_lock()
            raise self._unwritable(e.strerror or str(e)) from e
        self.tmp_path = tmp
        ffmpeg = shutil.which("ffmpeg")
        use_ffmpeg = self.encoder_request == "ffmpeg" or (self.encoder_request is None and ffmpeg)
        if use_ffmpeg and not ffmpeg:
            self._discard_tmp()
            self.tmp_path = None
            self._release_lock()
            raise UserError("ffmpeg was requested for recording but is not on PATH",
                            "install ffmpeg (e.g. sudo apt install ffmpeg) or use the OpenCV encoder")
        try:
            if use_ffmpeg:
                self._start_ffmpeg(ffmpeg)
            else:
                self._start_opencv()
        except BaseException:
            self._discard_tmp()
            self.tmp_path = None
            self._release_lock()
            raise

    def _start_ffmpeg(self, ffmpeg: str) -> None:
        rate = str(Fraction(self.fps).limit_denominator(1001))
        cmd = [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
               "-framerate", rate, "-i", "pipe:0", "-an"]
        if not (_even(self.width) and _even(self.height)):
            cmd += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]  # yuv420p needs even sides
        # A keyframe (and so a fragment) every 2 s: a crash or a full disk
        # loses at most the last 2 s; the cost is a few % of file size.
        gop = max(1, round(2 * self.fps))
        cmd += ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
                "-g", str(gop), "-pix_fmt", "yuv420p", "-r", rate]
        if self.format in FRAGMENTED:
            cmd += ["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]
        # Each fragment straight to the disk: a calm picture encodes to a few
        # hundred bytes a frame, and ffmpeg's 32 KB output buffer then held
        # several fragments that a killed child lost.
        cmd += ["-flush_packets", "1", "-f", self.format, ffmpeg_url(self.tmp_path)]
        # stderr to a file: a pipe nobody drains could fill up and stall ffmpeg.
        self._stderr = tempfile.TemporaryFile()
        try:
            # Its own process group: Ctrl-C or a closed terminal signal the
            # whole foreground group, and ffmpeg would end the file on its own
            # while frames are still coming; we finish it in stop() instead.
            group = ({"start_new_session": True} if os.name == "posix" else
                     {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)})
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                          stderr=self._stderr, **group)
        except OSError as e:
            self._stderr.close()
            self._stderr = None
            raise UserError(f"cannot run ffmpeg for recording: {e}", "reinstall ffmpeg") from e
        self.encoder = "ffmpeg"

    def _start_opencv(self) -> None:
        writer = cv2.VideoWriter(str(self.tmp_path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                 (self.width, self.height))
        if not writer.isOpened():
            raise self._unwritable("OpenCV could not open an mp4 writer there")
        self._writer = writer
        self.encoder = "opencv"

    #: Realtime: a gap longer than this (a privacy pause, a suspend) is cut
    #: out of the file instead of filled with a frozen frame (filling also
    #: blocks the output thread while the encoder eats the repeats).
    MAX_FILL_S = 3.0

    def submit(self, image: np.ndarray, capture_ts: float = 0.0) -> None:
        if self._error is not None:
            raise self._error
        if self.tmp_path is None or self._done:
            raise RuntimeError("RecorderSink.submit() outside start()/stop()")
        check_image(image)
        frame = np.ascontiguousarray(fit_frame(image, self.width, self.height))
        if not self.realtime:
            self._write(frame)
            return
        ts = float(capture_ts)
        if self._t0 is None:
            self._t0 = ts
        slot = int(np.floor((ts - self._t0) * self.fps + 1e-6))
        if slot < self._frames_written:  # this slot is written already
            self._frames_dropped += 1
            return
        gap = slot - self._frames_written
        if gap > self.MAX_FILL_S * self.fps:
            self._t0 = ts - self._frames_written / self.fps
            gap = 0
        if self._last_frame is not None:
            for _ in range(gap):  # the previous frame stayed on screen meanwhile
                self._write(self._last_frame)
                self._frames_repeated += 1
        self._write(frame)
        self._last_frame = frame if frame is not image else frame.copy()

    def _write(self, frame: np.ndarray) -> None:
        proc = self._proc
        if self._ending:
            raise RecordingEnded(f"the recording to {self.path} was ended")
        if proc is not None:
            try:
                proc.stdin.write(memoryview(frame).cast("B"))
            except (OSError, ValueError) as e:  # BrokenPipeError: ffmpeg died (disk full, ...)
                if self._ending:  # stop()/abandon() killed it under this write
                    raise RecordingEnded(f"the recording to {self.path} was ended") from e
                raise self._fail(e) from e
        else:
            self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        self._frames_written += 1
        self.last_progress = time.monotonic()

    def _ffmpeg_stderr(self) -> str:
        if self._stderr is None:
            return ""
        try:
            self._stderr.seek(0)
            return self._stderr.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _finish_encoder(self, grace: float) -> int | None:
        """Close ffmpeg's input and wait up to ``grace`` s for it to end; kill
        it after that. Its exit code, or None when it had to be killed. The
        close runs on a helper thread: it blocks while the pipe is full (a
        stopped child reads nothing) or while a write holds the pipe."""
        proc = self._proc
        if proc is None:
            return 0

        def close() -> None:
            try:
                proc.stdin.close()
            except (OSError, ValueError):
                pass  # BrokenPipeError once killed: the data is lost either way

        closer = threading.Thread(target=close, name="kf-recorder-close", daemon=True)
        closer.start()
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) process
            proc.wait()
            closer.join(2.0)
            return None
        finally:
            closer.join(2.0)

    def _fail(self, exc: BaseException | None, problem: str = "", *,
              grace: float = 30.0, hint: str = "") -> UserError:
        """Stop the encoder, keep the playable part as .partial.mp4, build the error."""
        self._ending = True
        rc = self._finish_encoder(grace) if self._proc is not None else None
        text = self._ffmpeg_stderr()
        self._close_encoder()
        kept, kept_frames = None, 0
        if self.tmp_path is not None and self.tmp_path.exists():
            if self.tmp_path.stat().st_size > 0 and self.encoder == "ffmpeg":
                kept_frames = salvage_fragmented_mp4(self.tmp_path)
            if kept_frames > 0:
                kept = self.partial_path
                if os.path.lexists(kept):  # an earlier partial take is not replaced
                    kept = free_name(kept)
                try:
                    replace_into(self.tmp_path, kept, self.option)
                except (UserError, OSError):
                    kept = self.tmp_path  # it stays, visible in the message
                forget(self.tmp_path)
            else:
                discard(self.tmp_path)
        self._done = True
        self._release_lock()
        if kept and shutil.which("ffprobe"):
            where = (f"; kept the first {kept_frames} frames ({kept_frames / self.fps:.1f} s),"
                     f" which play, as {kept}")
        elif kept:
            where = f"; kept what plays as {kept}"
        else:
            where = "; nothing playable was written, no file kept"
        last = problem or (text.splitlines()[-1] if text else (
            f"ffmpeg exited with code {rc}" if rc is not None else str(exc)))
        if _disk_full(text + problem, exc, self.path.parent):
            err = UserError(f"recording to {self.path} failed: disk full (no space left on device)"
                            f" after {self._frames_written} frames{where}",
                            "free some disk space or choose another --out on a disk with more space")
        else:
            err = UserError(f"recording to {self.path} failed after {self._frames_written} frames: "
                            f"{last}{where}",
                            hint or "check free disk space and that ffmpeg works "
                            "(`ffmpeg -version`), or choose another --out")
        self._error = err
        return err

    STALL_HINT = ("check the disk (or network share) the recording is on; "
                  "start a new recording once it responds")

    def abandon(self, reason: str, hint: str = STALL_HINT) -> UserError:
        """End the recording at once (it stalled, or the user gave up): kill
        the encoder, keep the complete fragments as ``.partial.mp4``; the
        returned UserError says what was kept. Safe to call from another
        thread than ``submit``'s, and while ``stop()`` runs on another one
        (that stop then ends the same way)."""
        self._abandoned = (f"{reason}, so it was stopped", hint)
        self._ending = True
        proc = self._proc
        if proc is not None:
            proc.kill()  # first: a stop() in progress waits on this child
        with self._end_lock:
            if self._error is not None:
                return self._error
            if self._done or self.tmp_path is None:
                return UserError(f"the recording to {self.path} had already ended", "")
            return self._fail(None, self._abandoned[0], grace=2.0, hint=hint)

    def _close_encoder(self) -> None:
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        self._proc = None
        if self._writer is not None:
            self._writer.release()
            self._writer = None

    def _discard_tmp(self) -> None:
        discard(self.tmp_path)

    def abort(self) -> None:
        """Give up (e.g. the render failed or was interrupted): kill the encoder
        and remove the temporary file; ``path`` is never created."""
        if self._done or self.tmp_path is None:
            return
        self._ending = True
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
        self._close_encoder()
        self._discard_tmp()
        self._done = True
        self._release_lock()

    def stop(self) -> None:
        """Finish the file, verify it and rename it to ``path``. Raises
        UserError if the encoder fails while finishing, does not finish within
        ``STOP_GRACE_S`` (it is killed; the complete fragments are kept), or
        the file does not verify (e.g. disk full while writing the last
        fragment)."""
        with self._end_lock:
            self._stop()

    def _stop(self) -> None:
        if self._done or self.tmp_path is None:
            return
        self._ending = True
        if self._frames_written == 0:
            if self._proc is not None:
                self._proc.kill()
                self._proc.wait()
            self._close_encoder()
            self._discard_tmp()
            self._done = True
            self._release_lock()
            log.warning("no frames were recorded; %s not written", self.path)
            return
        if self._proc is not None:
            rc = self._finish_encoder(self.STOP_GRACE_S)
            if rc is None:
                raise self._fail(None, f"ffmpeg did not finish the file within "
                                       f"{self.STOP_GRACE_S:.0f} s (a stalled disk or encoder), "
                                       "so it was stopped", grace=0.0, hint=self.STALL_HINT)
            text = self._ffmpeg_stderr()
            if self._abandoned is not None:
                raise self._fail(None, self._abandoned[0], grace=0.0, hint=self._abandoned[1])
            if rc != 0 or text:  # -loglevel error: any output is an error
                raise self._fail(None, text.splitlines()[-1] if text else "")
            problem = verify_mp4(self.tmp_path, video_frames=self._frames_written)
            if problem:
                raise self._fail(None, f"the written file does not verify: {problem}")
            self._close_encoder()
        else:
            self._close_encoder()
            problem = verify_mp4(self.tmp_path)
            if problem:
                raise self._fail(None, f"the written file does not verify: {problem}")
        if os.path.lexists(self.path) and not (self.overwrite and self._take == 0):
            # It appeared while we recorded (not ours to replace): keep both.
            other = self.path
            self.path = free_name(self.path)
            log.warning("%s appeared while recording and was left as it is; the recording "
                        "is %s", other, self.path)
        try:
            replace_into(self.tmp_path, self.path, self.option)
        except UserError as e:
            raise self._fail(None, e.message) from None
        forget(self.tmp_path)
        self._done = True
        self._release_lock()
        self.takes.append(self.path)
        log.info("wrote %s (%d frames, %s)", self.path, self._frames_written, self.encoder)

    def __enter__(self) -> "RecorderSink":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict:
        return {"frames_written": self._frames_written, "path": str(self.path),
                "frames_repeated": self._frames_repeated,
                "frames_dropped": self._frames_dropped,
                "encoder": self.encoder, "finished": self._done and self._error is None,
                "last_error": self._error.message if self._error else None}


class PreviewSink:
    """Calls ``callback(image, capture_ts)`` synchronously on the submitting
    thread (the GUI marshals to its own thread). A callback exception is
    logged and counted, not raised: a preview bug must not stop the camera.

    ``set_max_fps(n)`` caps how often the callback runs (frames in between
    are skipped, ``frames_skipped``); the session lowers it while the engine
    cannot keep up, so the preview's painting does not take CPU from the
    virtual camera. ``None`` = every frame."""

    def __init__(self, callback: Callable[[np.ndarray, float], None],
                 max_fps: float | None = None) -> None:
        self.callback = callback
        self._frames = 0
        self._skipped = 0
        self._errors = 0
        self._last_error: str | None = None
        self._max_fps = max_fps
        self._last_shown = float("-inf")

    def set_max_fps(self, fps: float | None) -> None:
        self._max_fps = fps

    @property
    def max_fps(self) -> float | None:
        return self._max_fps

    def start(self) -> None:
        pass

    def submit(self, image: np.ndarray, capture_ts: float) -> None:
        self._frames += 1
        if self._max_fps:
            now = time.monotonic()
            # 0.9: a frame arriving a little early still counts as on time
            if now - self._last_shown < 0.9 / self._max_fps:
                self._skipped += 1
                return
            self._last_shown = now
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
                "frames_skipped": self._skipped, "max_fps": self._max_fps,
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
