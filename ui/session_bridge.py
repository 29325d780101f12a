"""A QObject that owns the kf_desktop Session and speaks Qt signals.

Threads:
- the GUI thread calls the public methods; they return at once;
- one worker thread ("ui-worker") runs everything slow, in order: loading
  the model, checking a photo, starting, restarting and stopping the session,
  opening the virtual camera;
- the session's own threads call back: ``_on_event`` (any of them) and
  ``_on_preview`` (its output thread), which turns the frame into a QImage
  right there, keeps only the newest one and emits ``frame_ready`` only when
  the GUI has taken the previous one, so a busy GUI drops preview frames
  instead of queueing them.
Signals emitted from those threads reach GUI-thread slots as queued calls.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QCoreApplication, QObject, QTimer, Signal
from PySide6.QtGui import QImage

from kf_desktop.errors import UserError
from ui.options import StreamOptions, VideoKey, uses_camera, uses_mic
from ui.services import Services
from ui.vcam_slot import VcamSlot, VcamStatus

log = logging.getLogger(__name__)

STOPPED, STARTING, RUNNING, STOPPING = "stopped", "starting", "running", "stopping"


@dataclass(frozen=True)
class Notice:
    """A SessionEvent, or one the bridge makes itself (same fields)."""

    level: str  # "info" | "warning" | "error"
    code: str
    message: str
    hint: str = ""
    detail: str = ""  # the technical text (tooltip, log), when message is a summary


@dataclass(frozen=True)
class PreviewFrame:
    image: QImage
    capture_ts: float  # time.monotonic() of the driving frame
    arrived: float  # time.monotonic() when the output thread handed it over


class _ReportingSource:
    """Delegates to a source whose ``open`` cannot be wrapped in place."""

    def __init__(self, inner: Any, open_fn: Callable[[], Any]) -> None:
        self._inner = inner
        self.open = open_fn

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __enter__(self) -> "_ReportingSource":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self._inner.close()


def track_open(source: Any, errors: list[BaseException]) -> Any:
    """``source`` with its ``open`` noting why it failed in ``errors``, so the
    bridge can tell "the camera / microphone would not open" from other
    start failures. Patched on the instance (the session and AudioMotion see
    the real object); a proxy where that is impossible."""
    inner_open = source.open

    def open_() -> Any:
        try:
            return inner_open()
        except BaseException as e:
            errors.append(e)
            raise

    try:
        source.open = open_
        return source
    except (AttributeError, TypeError):
        return _ReportingSource(source, open_)


class SessionBridge(QObject):
    state_changed = Signal(str)
    busy = Signal(str)  # what the worker is doing; "" when done
    notice = Signal(object)  # Notice
    frame_ready = Signal()  # call take_frame()
    portrait_checking = Signal(str)
    portrait_accepted = Signal(str)
    portrait_rejected = Signal(str, str, str)  # path, message, hint
    vcam_changed = Signal(object)  # VcamStatus
    stats_updated = Signal(object)  # dict: Session.snapshot() + "preview"
    vmic_checked = Signal(bool, str, str)  # ok, detail, fix: the doctor's virtual-mic check

    def __init__(self, services: Services | None = None, options: StreamOptions | None = None,
                 parent: QObject | None = None, stats_interval_ms: int = 500) -> None:
        super().__init__(parent)
        self.services = services or Services()
        self._opts_lock = threading.Lock()
        self._opts = options or StreamOptions()
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ui-worker")
        self._state = STOPPED
        self._session: Any = None
        self._session_opts: StreamOptions | None = None  # as resolved at start
        self._vmic: Any = None  # the running session's VirtualMicSink
        self._slot = VcamSlot(self._make_vcam, mirror=self._opts.output_mirror)
        self._portrait_path = self._opts.portrait or self.services.default_portrait
        self._portrait_obj: Any = None  # validated Portrait for _portrait_path
        self._paused = False
        self._frame_lock = threading.Lock()
        self._latest: PreviewFrame | None = None
        self._frame_pending = False
        self.preview_frames = 0
        self.preview_dropped = 0
        self._closed = False
        self._stop_future: concurrent.futures.Future | None = None
        self._shut_down = False
        self._stats_timer = QTimer(self)
        self._stats_timer.setInterval(stats_interval_ms)
        self._stats_timer.timeout.connect(self._poll_stats)
        # Emitted from the worker, delivered here on the GUI thread (queued).
        self.state_changed.connect(self._on_state)

    # -- public, GUI thread -------------------------------------------------
    @property
    def state(self) -> str:
        return self._state

    @property
    def running(self) -> bool:
        return self._state == RUNNING

    @property
    def options(self) -> StreamOptions:
        with self._opts_lock:
            return self._opts

    @property
    def session(self) -> Any:
        """The running kf_desktop Session, or None (read-only use)."""
        return self._session

    @property
    def portrait_path(self) -> str:
        return self._portrait_path

    @property
    def vcam(self) -> VcamSlot:
        return self._slot

    @property
    def paused(self) -> bool:
        return self._paused

    def start(self) -> None:
        if self._state in (STOPPED, STOPPING):
            self._set_state(STARTING)
            self._submit(self._op_start)

    def stop(self) -> None:
        if self._state in (STARTING, RUNNING):
            self._set_state(STOPPING)
            self._submit(self._op_stop)

    def toggle(self) -> None:
        self.stop() if self._state in (STARTING, RUNNING) else self.start()

    def update_options(self, opts: StreamOptions) -> None:
        """Apply what can change live; restart the session for the rest."""
        with self._opts_lock:
            old, self._opts = self._opts, opts
        if opts.gains != old.gains:
            self._apply_gains(opts.gains)
        if opts.output_mirror != old.output_mirror:
            self._slot.set_mirror(opts.output_mirror)
        if opts.vcam_enabled != old.vcam_enabled:
            self._submit(self._op_vcam)
        vmic = self._vmic
        if opts.av_trim_ms != old.av_trim_ms and vmic is not None:
            vmic.set_trim_ms(opts.av_trim_ms)  # live, like the sink's own trim
        if self._state in (STARTING, RUNNING):
            self._submit(self._op_restart)  # decides on the worker, after a pending start

    def probe_vcam(self) -> None:
        """Check, before streaming, that a virtual camera can be opened (the
        status then says "Ready" or how to install one)."""
        if self._state == STOPPED and self.options.vcam_enabled:
            self._submit(self._op_probe_vcam)

    def probe_vmic(self) -> None:
        """Run the doctor's virtual-microphone check off the GUI thread
        (``vmic_checked`` answers)."""
        self._submit(self._op_probe_vmic)

    def set_portrait_path(self, path: str) -> None:
        """The portrait to start with, unchecked (it was accepted before; the
        session checks it again when it starts)."""
        if path != self._portrait_path:
            self._portrait_path, self._portrait_obj = path, None

    def retry_vcam(self) -> None:
        if self.options.vcam_enabled:
            self._submit(self._op_vcam)

    def request_portrait(self, path: str) -> None:
        """Check the photo off the GUI thread; swap it in if the stream runs.
        A refused photo leaves the current one in place."""
        self.portrait_checking.emit(str(path))
        self._submit(lambda: self._op_portrait(str(path)))

    def reset_neutral(self) -> None:
        if self._session is not None:
            self._session.reset_neutral()
            self.notice.emit(Notice("info", "neutral_reset", "Neutral pose reset to your current pose"))

    def set_paused(self, paused: bool, still: np.ndarray | None = None) -> None:
        """Privacy pause: the stream keeps running (no reconnects in the
        meeting) but the virtual camera shows ``still`` instead of the avatar."""
        self._paused = bool(paused)
        if paused and still is not None:
            self._slot.pause(still)
        elif not paused:
            self._slot.resume()
        session = self._session
        if session is not None and hasattr(session, "set_paused"):
            session.set_paused(bool(paused))

    def take_frame(self) -> PreviewFrame | None:
        """The newest preview frame not yet taken (GUI thread)."""
        with self._frame_lock:
            frame, self._latest = self._latest, None
            self._frame_pending = False
        return frame

    def snapshot(self) -> dict:
        session = self._session
        snap = session.snapshot() if session is not None else {}
        snap["preview"] = {"frames": self.preview_frames, "dropped": self.preview_dropped}
        snap["vcam"] = self._slot.stats()
        return snap

    def begin_shutdown(self) -> None:
        """Ask the worker to stop the stream, without waiting (the window's
        close event must not wait for a start still in flight). Idempotent."""
        if self._stop_future is not None:
            return
        self._closed = True  # a start in flight gives up before it opens devices
        self._stats_timer.stop()
        self._paused = True  # the preview callback drops frames from here on
        self._stop_future = self._pool.submit(self._op_stop)

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop everything; blocks up to ``timeout`` for the worker (a start
        in flight finishes first, then the stop). Idempotent."""
        self.begin_shutdown()
        if self._shut_down:
            return
        self._shut_down = True
        try:
            self._stop_future.result(timeout)
        except concurrent.futures.TimeoutError:
            log.warning("the stream did not stop within %.0f s", timeout)
        except Exception:
            log.exception("stopping the stream failed")
        self._pool.shutdown(wait=False, cancel_futures=True)
        QCoreApplication.removePostedEvents(self)  # queued signals for a window that is going

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Block until every queued worker job is done (tests, shutdown)."""
        try:
            self._pool.submit(lambda: None).result(timeout)
            return True
        except concurrent.futures.TimeoutError:
            return False

    # -- helpers -------------------------------------------------------------
    def _submit(self, fn: Callable[[], None]) -> None:
        if self._closed:
            return

        def run() -> None:
            try:
                fn()
            except Exception as e:  # never let a worker job die silently
                log.exception("background job failed")
                self._notify("error", "internal_error", f"something went wrong: {e}",
                             "the details are in the log; Help > Copy diagnostics")
            finally:
                self.busy.emit("")

        self._pool.submit(run)

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.state_changed.emit(state)

    def _notify(self, level: str, code: str, message: str, hint: str = "",
                detail: str = "") -> None:
        log.log({"error": logging.ERROR, "warning": logging.WARNING}.get(level, logging.INFO),
                "%s: %s%s%s", code, message, f" [{detail}]" if detail else "",
                f" (fix: {hint})" if hint else "")
        self.notice.emit(Notice(level, code, message, hint, detail))

    def _on_event(self, ev: Any) -> None:
        """SessionEvent from any session thread."""
        if ev.code in ("started", "stopped", "portrait_switched"):
            return  # the bridge reports these itself, with better words
        self._notify(ev.level, ev.code, ev.message, getattr(ev, "hint", ""))

    def _make_vcam(self, mirror: bool) -> Any:
        return self.services.make_vcam(self.options, mirror)

    def _apply_gains(self, gains: dict) -> None:
        session = self._session
        if session is not None:
            session.set_gains(self.services.make_gains(gains))

    # -- preview, called on the session's output thread ------------------------
    def _on_preview(self, image: np.ndarray, capture_ts: float) -> None:
        if self._paused:
            return
        image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        qimg = QImage(image.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
        frame = PreviewFrame(qimg, capture_ts, time.monotonic())
        with self._frame_lock:
            if self._latest is not None:
                self.preview_dropped += 1
            self._latest = frame
            self.preview_frames += 1
            notify = not self._frame_pending
            self._frame_pending = True
        if notify:
            self.frame_ready.emit()

    def _on_state(self, state: str) -> None:
        if state == RUNNING and not self._closed:
            self._stats_timer.start()
        elif state == STOPPED:
            self._stats_timer.stop()

    def _poll_stats(self) -> None:
        if self._session is None:
            return
        failure = self._slot.new_failure()
        if failure is not None:
            self.vcam_changed.emit(failure)
            self._notify("error", "vcam_failed", failure.message, failure.hint)
        try:
            self.stats_updated.emit(self.snapshot())
        except Exception:
            log.exception("stats snapshot failed")

    # -- worker jobs (ui-worker thread) ----------------------------------------
    def _op_start(self) -> None:
        if self._closed:
            return  # the window closed before this start ran
        if self._session is not None:
            self._set_state(RUNNING)
            return
        if self._try_start(self.options, "start"):
            self._notify("info", "started", "Stream started")

    def _try_start(self, opts: StreamOptions, verb: str) -> bool:
        """Start a session for ``opts``; on failure tell the user (banner)
        and return False. ``verb``: "start" or "restart" for the message."""
        try:
            self._start_session(opts)
        except UserError as e:
            self._fail_start(e.message, e.hint)
            return False
        except Exception as e:
            log.exception("could not %s the stream", verb)
            self._fail_start(f"could not {verb} the stream: {e}",
                             "the details are in the log; Help > Copy diagnostics")
            return False
        self._set_state(RUNNING)
        return True

    def _fail_start(self, message: str, hint: str) -> None:
        self._slot.close()
        self.vcam_changed.emit(self._slot.status())
        self._set_state(STOPPED)
        self._notify("error", "start_failed", message, hint)

    def _op_stop(self) -> None:
        was = self._session is not None
        self._stop_session()
        self._slot.close()
        self.vcam_changed.emit(self._slot.status())
        self._set_state(STOPPED)
        if was:
            self._notify("info", "stopped", "Stream stopped")

    def _needs_restart(self, opts: StreamOptions) -> bool:
        old = self._session_opts
        if self._session is None or old is None:
            return False
        # A chosen device unplugged mid-stream is the session's to reopen
        # (source_lost / source_restored), not a reason to restart it.
        if opts.camera and opts.camera.key is None and old.camera \
                and opts.camera.name == old.camera.name:
            opts = opts.with_(camera=old.camera)
        if opts.mic and opts.mic.key is None and old.mic and opts.mic.name == old.mic.name:
            opts = opts.with_(mic=old.mic)
        return opts.restart_key() != old.restart_key()

    def _op_restart(self) -> None:
        opts = self.options
        if not self._needs_restart(opts):
            return
        if self._switch_camera_only(opts):
            return
        self._set_state(STARTING)
        self.busy.emit("Applying the new settings…")
        self._stop_session()
        self._try_start(opts, "restart")

    def _op_probe_vcam(self) -> None:
        if self._session is not None or self._slot.is_open or not self.options.vcam_enabled:
            return  # streaming (the device is ours and busy) or switched off
        try:
            ok, detail, fix = self.services.probe_vcam(self.options)
        except Exception as e:
            log.exception("virtual camera probe failed")
            ok, detail, fix = False, f"{type(e).__name__}: {e}", self.services.vcam_fix()
        if ok:  # detail: "<device> (<backend>)"
            device, _, backend = detail.partition(" (")
            self.vcam_changed.emit(VcamStatus("off", device=device, backend=backend.rstrip(")")))
        else:
            self.vcam_changed.emit(VcamStatus("error", message=detail, hint=fix))

    def _op_probe_vmic(self) -> None:
        try:
            ok, detail, fix = self.services.check_virtual_mic()
        except Exception as e:
            log.exception("virtual microphone check failed")
            ok, detail, fix = False, f"{type(e).__name__}: {e}", ""
        self.vmic_checked.emit(bool(ok), str(detail), str(fix))

    def _op_vcam(self) -> None:
        enabled = self.options.vcam_enabled
        if not enabled:
            self._slot.close()
            self.vcam_changed.emit(self._slot.status())
        elif self._session is not None:
            self._open_vcam()

    def _open_vcam(self) -> None:
        self.busy.emit("Opening the virtual camera…")
        try:
            status = self._slot.open()
        except Exception as e:
            if not isinstance(e, UserError):
                log.exception("virtual camera failed to open")
            detail = e.message if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
            hint = (e.hint if isinstance(e, UserError) else "") or self.services.vcam_fix()
            # pyvirtualcam's own text is long and technical: a summary in the
            # banner, the text itself in its tooltip and the log.
            summary = ("No virtual camera driver found; the preview keeps running"
                       if "no virtual camera" in detail.lower() or "not found" in detail.lower()
                       or "unknown virtual camera backend" in detail.lower()
                       else "The virtual camera could not be opened; the preview keeps running")
            self.vcam_changed.emit(VcamStatus("error", message=detail, hint=hint))
            self._notify("warning", "vcam_missing", summary, hint, detail)
            return
        self.vcam_changed.emit(status)

    def _op_portrait(self, path: str) -> None:
        self.busy.emit("Checking the photo…")
        try:
            portrait = self.services.load_portrait(path)
        except UserError as e:
            self.portrait_rejected.emit(path, e.message, e.hint)
            self._notify("error", "portrait_rejected", e.message, e.hint)
            return
        except Exception as e:
            log.exception("could not load %s", path)
            msg = f"could not use {path}: {e}"
            hint = "choose a JPEG or PNG photo with one clearly visible face"
            self.portrait_rejected.emit(path, msg, hint)
            self._notify("error", "portrait_rejected", msg, hint)
            return
        session = self._session
        if session is not None:
            # Session.switch_portrait accepts a loaded Portrait as well as a
            # path; the swap happens at the next frame, the stream never waits.
            session.switch_portrait(portrait).join(30.0)
        self._portrait_path, self._portrait_obj = path, portrait
        self.portrait_accepted.emit(path)

    # -- the session itself (ui-worker thread) ----------------------------------
    def _start_session(self, opts: StreamOptions) -> None:
        svc = self.services
        self.busy.emit("Starting the engine…")
        try:
            device = svc.resolve_device(opts.device)
        except UserError as e:
            self._notify("warning", "device_fallback", f"{e.message}; using the CPU instead", e.hint)
            device = "cpu"
        generator = None
        if opts.generator != "guide":
            self.busy.emit("Loading the Knot Forcing model…")
            try:
                generator = svc.make_generator(opts.generator, device)
            except Exception as e:  # missing weights, no kf_generator yet, OOM...
                if not isinstance(e, UserError):
                    log.exception("could not load the generator")
                msg = e.message if isinstance(e, UserError) else str(e)
                hint = e.hint if isinstance(e, UserError) and e.hint else ""
                if not msg.startswith("the Knot Forcing model is not available"):
                    msg = f"the Knot Forcing model is not available ({msg})"
                self._notify("warning", "generator_unavailable",
                             f"{msg}; streaming the guide only",
                             hint or "choose 'Guide only' to hide this message")
        source_factory = None
        camera_error: list[BaseException] = []
        used_camera = None
        mic = None
        if uses_camera(opts.mode):
            entry = used_camera = self._find_camera(opts.camera)
            if entry is None:
                wanted = opts.camera.name if opts.camera else ""
                self._notify("warning", "no_camera",
                             f"Camera '{wanted}' is not connected" if wanted else "No camera found",
                             "plug in a webcam, choose a video file (Video…), or switch the "
                             "mode to 'Microphone only'; "
                             "the avatar keeps streaming with idle motion")
            else:

                def source_factory() -> Any:
                    return track_open(self._open_input(entry, opts), camera_error)
        mic_factory = None
        mic_error: list[BaseException] = []
        have_mic = opts.mic is not None and opts.mic.key is not None
        if uses_mic(opts.mode) and have_mic and svc.open_mic is not None:
            mic = opts.mic

            def mic_factory() -> Any:
                return track_open(svc.open_mic(mic, opts), mic_error)
        elif opts.mode == "mic":
            self._notify("warning", "no_mic", "No microphone found",
                         "plug in a microphone (or pick one in Input); the avatar keeps "
                         "streaming with idle motion")
        if self._slot.is_open and self._slot.held != opts.sync_audio:
            self._slot.close()  # held (constant delay) for the virtual microphone, or not
        if opts.vcam_enabled and not self._slot.is_open:
            self._open_vcam()
        from kf_desktop.sinks import PreviewSink

        def build(src_factory: Callable | None, audio_factory: Callable | None) -> Any:
            # The virtual microphone plays the session's own microphone: none without one.
            self._vmic = (svc.make_virtual_mic(opts)
                          if opts.sync_audio and audio_factory is not None else None)
            return svc.make_session(opts=opts, device=device,
                                    portrait=self._portrait_obj or self._portrait_path,
                                    source_factory=src_factory, mic_factory=audio_factory,
                                    generator=generator,
                                    sinks=[PreviewSink(self._on_preview), self._slot],
                                    on_event=self._on_event, virtual_mic=self._vmic,
                                    video=self._slot)

        if self._closed:
            return  # the window closed during the set-up: open no devices
        self.busy.emit("Loading the portrait and opening the camera…")
        session = build(source_factory, mic_factory)
        for _attempt in range(3):  # at most: without the camera, then without the mic
            try:
                session.start()
                break
            except UserError as e:
                # A device that would not open costs only itself: stream
                # without it, say why and how to fix it.
                if camera_error and source_factory is not None:
                    self._notify("warning", "camera_failed",
                                 f"{e.message}; streaming without the camera", e.hint)
                    source_factory = used_camera = None
                elif mic_error and mic_factory is not None:
                    self._notify("warning", "mic_failed",
                                 f"{e.message}; streaming without the microphone", e.hint)
                    mic_factory = None
                else:
                    raise
                camera_error.clear()
                mic_error.clear()
                session = build(source_factory, mic_factory)
        self._session = session
        self._session_opts = opts.with_(camera=used_camera, mic=mic if mic_factory else None)
        if self._paused and hasattr(session, "set_paused"):
            session.set_paused(True)

    def _switch_camera_only(self, opts: StreamOptions) -> bool:
        """Another camera with every other option unchanged: swap the running
        session's source (Session.switch_source) instead of restarting the
        stream, so the output never pauses. Returns False when a restart is
        still needed."""
        old, session = self._session_opts, self._session
        if session is None or old is None or not hasattr(session, "switch_source"):
            return False
        if not uses_camera(opts.mode) or old.camera is None:
            return False
        if opts.with_(camera=old.camera).restart_key() != old.restart_key():
            return False  # something besides the camera changed
        entry = self._find_camera(opts.camera)
        if entry is None:
            return False
        session.switch_source(lambda: self._open_input(entry, opts))
        self._session_opts = old.with_(camera=entry)
        self._notify("info", "camera_switched", f"Camera: {entry.name}")
        return True

    def _open_input(self, entry: Any, opts: StreamOptions) -> Any:
        """The camera's source: a webcam, or a video file offered as one."""
        if isinstance(entry.key, VideoKey):
            return self.services.open_video(entry.key.path, opts)
        return self.services.open_camera(entry, opts)

    def _find_camera(self, wanted: Any) -> Any:
        """The camera to open: the chosen one if it is plugged in; when the
        pickers have not listed devices yet, ask the device layer now."""
        if wanted is not None and wanted.key is not None:
            return wanted
        try:
            cams = self.services.list_cameras()
        except Exception:
            log.exception("listing cameras failed")
            return None
        if wanted is not None:
            return next((c for c in cams if c.name == wanted.name), None)
        return cams[0] if cams else None

    def _stop_session(self) -> None:
        session, self._session = self._session, None
        self._session_opts = None
        self._vmic = None
        if session is None:
            return
        self.busy.emit("Stopping…")
        try:
            session.stop()
        except Exception:
            log.exception("the session did not stop cleanly")
        with self._frame_lock:
            self._latest = None
            self._frame_pending = False
