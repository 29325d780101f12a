"""The live session: capture thread -> engine worker thread -> output thread.

Queues between the threads hold at most 2 items and drop the oldest. The
output side hands frames to the sinks; the virtual-camera sink sends at a
constant rate and repeats the last frame while the engine is late. A source
that dies mid-stream does not stop the session: the capture thread keeps
feeding face-less signals (the avatar eases back to its neutral pose, or
follows idle motion), reports the loss, and tries to reopen the source.

Faults never stop the stream silently (issue 13):
- the source is read on its own thread (``_SourceReader``), so a ``read()``
  or ``open()`` that blocks only starves the capture thread of frames: after
  ``stall_timeout`` seconds without one, idle motion takes over, a
  ``source_stalled`` event is raised and a fresh source instance is opened on
  another thread; any exception from ``read()`` (``SourceLost``, but also the
  ``RuntimeError``/``OSError`` an unplugged camera gives) is a loss that is
  reopened every ``reopen_interval``;
- every sink is fed from its own thread and bounded hand-off
  (``SinkFeeder``), so a sink that blocks holds up no other; a sink whose
  ``submit`` raises (or whose own thread failed) is taken out of the output,
  reported (``sink_failed``) and restarted up to ``sink_retries`` times
  (``sink_restored`` / ``sink_removed``); a ``UserError`` (disk full) removes
  it; a sink that accepts no frame for ``sink_stall_timeout`` s is reported
  (``sink_stalled``) and ended on a helper thread (a recorder keeps what it
  wrote as ``.partial.mp4`` and the event names it);
- ``stop()`` is bounded: a source thread that does not come back in time is
  reported (``source_hung``) and left behind as a daemon, never joined for
  ever; so is a sink whose ``stop()`` hangs (``sink_hung``); it never raises.
"""

from __future__ import annotations

import enum
import gc
import logging
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kf_desktop.blas_threads import limit_blas_threads
from kf_desktop.errors import UserError
from kf_desktop.face import FaceAnalyzer
from kf_desktop.frames import Frame
from kf_desktop.generators import Generator
from kf_desktop.pipeline import AvatarRenderer, DrivingSignal, RenderedFrame
from kf_desktop.portrait import Portrait, load_portrait
from kf_desktop.queues import DropOldestQueue
from kf_desktop.retarget import Gains, MotionParams
from kf_desktop.sink_feeder import FeederState, SinkFeeder
from kf_desktop.sinks import FrameSink
from kf_desktop.sources import FrameSource, SourceLost
from kf_desktop.stats import RollingStats, Timer

log = logging.getLogger(__name__)


class ReaderState(enum.Enum):
    """Where a ``_SourceReader`` is."""
    OPENING = "opening"
    READING = "reading"
    ENDED = "ended"  # a finite file ended
    LOST = "lost"  # read() raised
    FAILED = "failed"  # open() raised


class Announce(enum.Enum):
    """What the capture thread says once the source delivers again."""
    NONE = "none"
    RESTORED = "restored"
    SWITCHED = "switched"


@dataclass(frozen=True)
class SessionEvent:
    level: str  # "info" | "warning" | "error"
    code: str  # stable identifier, e.g. "source_lost", "portrait_switched"
    message: str
    hint: str = ""


@dataclass
class SessionConfig:
    portrait: str | Path | Portrait
    #: Builds the driving video source; None = no camera (idle motion only).
    source_factory: Callable[[], FrameSource] | None = None
    out_size: tuple[int, int] = (1280, 720)
    fps: float = 30.0
    crop_size: int = 256
    device: str = "cpu"
    gains: Gains = field(default_factory=Gains)
    mirror_output: bool = False
    #: Seconds before the first attempt to reopen a lost source; each failed
    #: attempt doubles it, up to ``reopen_max_interval``.
    reopen_interval: float = 2.0
    reopen_max_interval: float = 16.0
    #: Watchdog: a source that is open but delivers no frame for this long is
    #: declared stalled (idle motion takes over, a fresh instance is opened).
    stall_timeout: float = 1.5
    #: An ``open()`` that takes longer than this is abandoned the same way.
    open_timeout: float = 12.0
    #: Restarts of a failing sink before it is removed from the stream.
    sink_retries: int = 3
    #: A sink that accepts no frame for this long while frames wait for it
    #: (a recorder on a stalled disk) is taken out of the stream.
    sink_stall_timeout: float = 3.0
    #: Motion used whenever no face drives the avatar: t -> MotionParams.
    idle_motion: Callable[[float], MotionParams | None] | None = None
    generator_factory: Callable[[], Generator] | None = None
    #: Builds the audio source (MicSource / WavSource); None = no audio. With
    #: audio, the mouth follows speech whenever no face drives it (mic-only
    #: mode, face lost, or head turned beyond ``audio_takeover_yaw``).
    audio_factory: Callable[[], object] | None = None
    audio_takeover_yaw: float = 35.0
    #: If set, the audio-driven mouth of a frame is that of exactly this many ms
    #: before its timestamp (the delayed virtual microphone sets it; see
    #: ``AudioMotion(fixed_lag_ms=...)``); None: the newest mouth available.
    audio_lag_ms: float | None = None


class Session:
    """Start/stop a live avatar stream. Thread-safe control methods."""

    def __init__(self, config: SessionConfig, sinks: list[FrameSink],
                 on_event: Callable[[SessionEvent], None] | None = None) -> None:
        self.config = config
        self.sinks = list(sinks)
        self.stats = RollingStats()
        self._on_event = on_event
        self._events: list[SessionEvent] = []
        self._events_lock = threading.Lock()
        self._drive_q: DropOldestQueue[DrivingSignal] = DropOldestQueue(2)
        # 4, not 2: a chunked generator hands over c = 3 frames at once, and
        # a 2-slot queue dropped one of every chunk (issue 12's live bench:
        # engine 21 fps, output 14 fps)
        self._out_q: DropOldestQueue[RenderedFrame] = DropOldestQueue(4)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._control_lock = threading.Lock()
        self._pending_source: tuple[Callable[[], FrameSource] | None] | None = None
        self._threads: list[threading.Thread] = []
        self._renderer: AvatarRenderer | None = None
        self._source: FrameSource | None = None
        self._source_ok = False
        # capture-thread state (see _capture_tick)
        self._reader: _SourceReader | None = None
        self._retired: list[_SourceReader] = []
        self._next_open = float("inf")
        self._fresh_instance = False  # next open builds a new source (the old one hangs)
        self._report_open_failure = False
        self._announce = Announce.NONE  # event to emit once the source delivers
        self._trouble = 0  # losses / failed reopens since the source last worked
        self._next_still_trying = 0.0
        self._started_sinks: list[FrameSink] = []
        self._active_sinks: list[FrameSink] = []
        self._sink_retry: dict[int, list] = {}  # id(sink) -> [sink, attempts, due]
        self._feeders: dict[int, SinkFeeder] = {}  # id(sink) -> its hand-off
        self._enders: list[threading.Thread] = []  # ending stalled sinks
        self._overloaded = False
        self._overload_votes = 0
        self._next_overload_check = 0.0
        self._gc_frozen = False
        self._output_started = 0.0
        self._running = False
        self._audio = None
        self._audio_motion: Callable[[float], MotionParams] | None = None
        self._audio_lost = False

    # -- events -------------------------------------------------------------
    def _emit(self, level: str, code: str, message: str, hint: str = "") -> None:
        ev = SessionEvent(level, code, message, hint)
        with self._events_lock:
            self._events.append(ev)
            del self._events[:-100]
        if self._on_event is not None:
            try:
                self._on_event(ev)
            except Exception:  # a broken listener must not kill a worker thread
                traceback.print_exc()

    def events(self) -> list[SessionEvent]:
        with self._events_lock:
            return list(self._events)

    # -- lifecycle ------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    @property
    def audio_source(self):
        """The open audio source (MicSource / WavSource) the mouth follows, or
        None; other readers (the virtual microphone) share this one capture."""
        return self._audio

    def start(self) -> None:
        """Load the portrait, open the source and the sinks, start the threads.
        Raises UserError (nothing left running) if any of them fails."""
        if self._running:
            return
        cfg = self.config
        # numpy's OpenBLAS spinning for busy cores held the GIL ~100 ms per
        # guide frame and starved the virtual camera (see blas_threads.py).
        limit_blas_threads(1)
        try:
            portrait = self._load(cfg.portrait)
            generator = cfg.generator_factory() if cfg.generator_factory else None
            self._renderer = AvatarRenderer(portrait, out_size=cfg.out_size,
                                            device=cfg.device, gains=cfg.gains,
                                            generator=generator, mirror=cfg.mirror_output,
                                            stats=self.stats)
            if cfg.source_factory is not None:
                self._source = cfg.source_factory()
                self._source.open()
                self._source_ok = True
            if cfg.audio_factory is not None:
                from kf_desktop.audio.mix import AudioMotion

                self._audio = cfg.audio_factory()
                self._audio.open()
                # Live: the call's audio is not delayed, so look-ahead would only
                # make the mouth lag the voice; keep it short. With the delayed
                # virtual microphone (issue 11) the mouth is a fixed lag behind.
                self._audio_motion = AudioMotion(self._audio, lookahead_ms=20.0,
                                                 fixed_lag_ms=cfg.audio_lag_ms)
            # A full garbage collection walks every object the app loaded
            # (torch, mediapipe, Qt: ~230k) with the GIL held: measured
            # 300-550 ms on a busy 2-core machine, a visible freeze of the
            # virtual camera every few minutes. Frozen objects are skipped.
            gc.freeze()
            self._gc_frozen = True
            for sink in self.sinks:
                sink.start()
                self._started_sinks.append(sink)
        except BaseException:
            self._release()
            raise
        self._active_sinks = list(self._started_sinks)
        self._sink_retry = {}
        self._feeders = {id(s): SinkFeeder(s) for s in self._started_sinks}
        self._overloaded = False
        self._overload_votes = 0
        self._output_started = time.monotonic()
        self._stop.clear()
        self._running = True
        self._next_open = float("inf")
        self._fresh_instance = False
        self._announce = Announce.NONE
        self._trouble = 0
        if self._source is not None:
            self._reader = _SourceReader(self._source, opened=True, on_notice=self._emit,
                                       stats=self.stats)
        for name, target in (("kf-capture", self._capture_loop),
                             ("kf-engine", self._engine_loop),
                             ("kf-output", self._output_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(t)
            t.start()
        self._emit("info", "started", "stream started")

    #: stop(): how long the source threads get to come back after close().
    SOURCE_STOP_TIMEOUT = 3.0

    #: stop(): how long a sink's feeder gets to finish the frame in hand.
    FEEDER_STOP_TIMEOUT = 1.0
    #: stop(): how long one sink's own ``stop()`` may take (a recorder kills
    #: its encoder after its own, shorter, grace period).
    SINK_STOP_TIMEOUT = 15.0

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads, join them and release every device. Idempotent.
        Bounded: a source stuck in its driver or a sink stuck in a device is
        reported (a warning event), not waited for; it never raises."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._release()
        if alive:
            log.info("threads did not stop in %.1f s: %s", timeout, alive)
            self._emit("warning", "threads_hung",
                       f"the stream's {', '.join(alive)} thread did not stop in {timeout:.0f} s; "
                       "it is left behind", "restart the app if it keeps using the CPU")
        if self._running:
            self._running = False
            self._emit("info", "stopped", "stream stopped")

    def _release(self) -> None:
        if self._overloaded:  # undo the shedding for the next start
            self._overloaded = False
            for sink in self._started_sinks:
                if hasattr(sink, "set_max_fps"):
                    sink.set_max_fps(None)
        readers = self._retired + ([self._reader] if self._reader is not None else [])
        self._reader, self._retired = None, []
        for r in readers:
            r.retire()  # close() on a helper thread: it may block in the driver
        deadline = time.monotonic() + self.SOURCE_STOP_TIMEOUT
        hung = [r for r in readers if not r.join(max(0.0, deadline - time.monotonic()))]
        for r in hung:
            log.warning("source %s did not stop within %.0f s; leaving its thread behind",
                        r.name, self.SOURCE_STOP_TIMEOUT)
            self._emit("warning", "source_hung",
                       f"{r.name} did not stop (its driver hangs); its reader thread is left "
                       "behind", "unplug and replug the camera, or restart the app")
        if not readers and self._source is not None:
            self._source.close()  # opened by start(), which then failed
        self._source = None
        self._source_ok = False
        if self._audio is not None:
            self._audio.close()
            self._audio = None
            self._audio_motion = None
        feeders, self._feeders = self._feeders, {}
        deadline = time.monotonic() + self.FEEDER_STOP_TIMEOUT
        for f in feeders.values():
            f.close(max(0.0, deadline - time.monotonic()))
        enders, self._enders = self._enders, []
        for t in enders:  # a stalled recorder is being ended: let it say what it kept
            t.join(self.SINK_STOP_TIMEOUT)
        for sink in reversed(self._started_sinks):
            self._stop_sink(sink)
        self._started_sinks = []
        self._active_sinks = []
        self._sink_retry = {}
        if self._gc_frozen:  # garbage of the session's start-up may be collected again
            self._gc_frozen = False
            gc.unfreeze()

    def _stop_sink(self, sink: FrameSink) -> None:
        """``sink.stop()`` on a helper thread, waited for at most
        ``SINK_STOP_TIMEOUT``; what it raises becomes an event."""
        errors: list[BaseException] = []

        def work() -> None:
            try:
                sink.stop()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=work, name="kf-sink-stop", daemon=True)
        t.start()
        t.join(self.SINK_STOP_TIMEOUT)
        if t.is_alive():
            log.info("%s did not stop within %.0f s", _sink_label(sink), self.SINK_STOP_TIMEOUT)
            self._emit("warning", "sink_hung",
                       f"{_sink_label(sink)} did not stop within {self.SINK_STOP_TIMEOUT:.0f} s "
                       "(its device hangs); it is left behind", "restart the app")
            return
        for e in errors:
            if isinstance(e, UserError):
                self._emit("error", "sink_failed", e.message, e.hint)
            elif isinstance(e, Exception):  # one broken sink must not keep the others open
                log.error("stopping %s failed", type(sink).__name__, exc_info=e)
                self._emit("error", "sink_failed",
                           f"{_sink_label(sink)} failed while stopping: {type(e).__name__}: {e}")
            else:
                raise e

    def __enter__(self) -> "Session":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- control (any thread) -----------------------------------------------
    def _load(self, portrait: str | Path | Portrait) -> Portrait:
        if isinstance(portrait, Portrait):
            return portrait
        with FaceAnalyzer(static=True, max_faces=2) as analyzer:
            return load_portrait(portrait, analyzer, crop_size=self.config.crop_size)

    def switch_portrait(self, path: str | Path,
                        on_done: Callable[[UserError | None], None] | None = None) -> threading.Thread:
        """Load a new portrait in the background and swap it in at the next
        frame; the stream never waits for it. On failure the current portrait
        stays and an error event says why."""

        def work() -> None:
            err: UserError | None = None
            try:
                portrait = self._load(path)
                if self._renderer is None:
                    raise UserError("the stream is not running", "start it first")
                self._renderer.request_portrait(portrait)
                self._emit("info", "portrait_switched", f"portrait: {Path(str(path)).name}")
            except UserError as e:
                err = e
                self._emit("error", "portrait_rejected", e.message, e.hint)
            if on_done is not None:
                on_done(err)

        t = threading.Thread(target=work, name="kf-portrait-load", daemon=True)
        t.start()
        return t

    def switch_source(self, factory: Callable[[], FrameSource] | None) -> None:
        """Change the driving camera (or go camera-less with None) without
        restarting the stream: the capture thread closes the old source and
        opens the new one; the output keeps running on idle frames meanwhile.
        A source that fails to open is reported and the stream stays idle."""
        with self._control_lock:
            self._pending_source = (factory,)

    def set_paused(self, paused: bool) -> None:
        """Privacy pause: the camera is closed (its light goes off) and the
        engine idles; sinks keep repeating what they last got (the GUI swaps
        in a 'paused' still). Resuming reopens the camera."""
        if paused == self._paused.is_set():
            return
        if paused:
            self._paused.set()
        else:
            self._paused.clear()
        self._emit("info", "paused" if paused else "resumed",
                   "stream paused" if paused else "stream resumed")

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def set_gains(self, gains: Gains) -> None:
        self.config.gains = gains
        if self._renderer is not None:
            self._renderer.request_gains(gains)

    def reset_neutral(self) -> None:
        if self._renderer is not None:
            self._renderer.request_reset_neutral()

    def model_never_finite(self) -> bool:
        """The Knot Forcing model ran but every chunk it made was non-finite:
        what the user saw was the motion guide (``run`` exits 3 on it)."""
        r = self._renderer
        if r is None or r.generator is None or self._running:
            return False
        # The engine checks a chunk's finiteness when the next one starts:
        # flushing generates what is buffered and checks the last chunk.
        r.generator.flush()
        r.generator.pop_events()
        return bool(getattr(r.generator, "never_finite", False))

    def snapshot(self) -> dict:
        snap = self.stats.snapshot()
        snap["dropped"] = {"drive": self._drive_q.dropped, "output": self._out_q.dropped}
        snap["source_ok"] = self._source_ok
        if self._audio is not None:
            snap["audio"] = self._audio.stats()
        snap["sinks"] = {}
        for s in self.sinks:
            st = dict(s.stats())
            feeder = self._feeders.get(id(s))
            if feeder is not None:
                st["handoff"] = feeder.stats()
            snap["sinks"][type(s).__name__] = st
        return snap

    # -- threads ------------------------------------------------------------
    def _watch_audio(self) -> None:
        """Report microphone loss/recovery (the mic reconnects by itself)."""
        audio = self._audio
        if audio is None:
            return
        lost = bool(getattr(audio, "lost", False))
        if lost != self._audio_lost:
            self._audio_lost = lost
            if lost:
                self._emit("warning", "mic_lost",
                           f"microphone lost: {getattr(audio, 'error', '') or 'no audio'}",
                           "reconnect the microphone; the avatar keeps running with a closed mouth")
            else:
                self._emit("info", "mic_restored", "microphone is back")

    def _idle_signal(self, now: float) -> DrivingSignal:
        # Called from the capture thread only (AudioMotion is single-threaded).
        self._watch_audio()
        motion = self._audio_motion or self.config.idle_motion
        params = motion(now) if motion else None
        return DrivingSignal(timestamp=now, face=None, params=params)

    def _capture_loop(self) -> None:
        period = 1.0 / self.config.fps
        analyzer = FaceAnalyzer(static=False)  # mediapipe: one instance per thread
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    frame = self._capture_tick(period)
                    if frame is not None:
                        if len(self._drive_q) >= 2:
                            # The engine is two frames behind: analysing this
                            # frame would only push out one it has not used.
                            self.stats.count("shed_capture")
                            continue
                        self._drive_q.put(self._analyze(analyzer, frame))
                    failures = 0
                except Exception as e:  # report, keep the output alive on idle frames
                    failures += 1
                    if failures == 1:
                        self._emit("error", "capture_error", f"capture problem: {e}",
                                   "the avatar keeps running on idle motion; see the log")
                        traceback.print_exc()
                    self._drive_q.put(self._idle_signal(time.monotonic()))
                    self._stop.wait(period)
        finally:
            analyzer.close()

    def _capture_tick(self, period: float) -> Frame | None:
        """One step of the capture thread: a frame to analyse, or None after
        it fed an idle signal or waited. Never blocks on the source."""
        self._apply_source_switch()
        now = time.monotonic()
        if self._paused.is_set():
            if self._reader is not None:
                self._retire_reader()  # closes the camera: its light goes off
                self._next_open = 0.0  # reopen as soon as we resume
            self._source_ok = False
            self._stop.wait(period)
            return None
        r = self._reader
        if r is None:
            if self._source is not None or self._fresh_instance:
                if now >= self._next_open:
                    self._open_reader()
            self._drive_q.put(self._idle_signal(now))
            self._stop.wait(period)
            return None
        frame = r.get(period)
        if frame is not None:
            if not self._source_ok:
                self._source_ok = True
                if self._announce is Announce.SWITCHED:
                    self._emit("info", "source_switched", f"driving from {r.name}")
                    self._announce = Announce.NONE
            if r.first_frame is not None and \
                    time.monotonic() - r.first_frame >= self.RESTORED_AFTER_S:
                # Back for good (not one frame before the next failure).
                if self._announce is Announce.RESTORED:
                    self._emit("info", "source_restored", f"{r.name} is back")
                    self._announce = Announce.NONE
                self._trouble = 0
            return frame
        now = time.monotonic()
        state = r.state
        if state is ReaderState.FAILED:
            e = r.error
            msg, hint = (e.message, e.hint) if isinstance(e, UserError) else (
                f"cannot open {r.name}: {type(e).__name__}: {e}", "see the log")
            if self._report_open_failure:
                self._report_open_failure = False
                self._trouble += 1
                self._next_still_trying = now + self.STILL_TRYING_S
                self._emit("error", "source_failed", msg, hint)
                delay = self.config.reopen_interval
            else:
                delay = self._source_trouble("source_failed", msg, hint, now, r.name)
            self._drop_reader()
            self._next_open = now + delay
        elif state is ReaderState.LOST:
            e = r.error
            if isinstance(e, UserError):
                msg, hint = e.message, e.hint
            else:  # what an unplugged camera often gives: a device error
                msg = f"{r.name} stopped delivering frames ({type(e).__name__}: {e})"
                hint = ""
            self._source_ok = False
            self._drop_reader()
            delay = self._source_trouble("source_lost", msg,
                                         hint or "reconnect the camera; the avatar keeps running",
                                         now, r.name)
            self._announce = Announce.RESTORED
            self._next_open = now + delay
        elif state is ReaderState.ENDED:  # a finite file ended: keep streaming idle
            self._source_ok = False
            self._drop_reader()
            self._source = None
            self._emit("info", "source_ended", "the driving video ended")
        elif state is ReaderState.READING and now - r.last_frame > self.config.stall_timeout \
                or state is ReaderState.OPENING and now - r.started > self.config.open_timeout:
            waited = now - (r.last_frame if state is ReaderState.READING else r.started)
            what = "delivered no frame" if state is ReaderState.READING else "did not open"
            self._source_ok = False
            self._retire_reader()  # its read() may never return: abandon it
            delay = self._source_trouble(
                "source_stalled", f"{r.name} {what} for {waited:.1f} s; idle motion until it is "
                "reopened", "check the camera (or the file's disk); it is reopened automatically",
                now, r.name)
            self._fresh_instance = True  # the stuck instance cannot be reopened
            self._announce = Announce.RESTORED
            self._next_open = now + delay - self.config.reopen_interval  # the first at once
        if self._reader is None or self._reader.state is not ReaderState.READING \
                or now - self._reader.last_frame > self.config.stall_timeout:
            self._drive_q.put(self._idle_signal(now))
        return None

    #: A reopened source counts as back (``source_restored``, the back-off
    #: starts over) once it has delivered frames for this long.
    RESTORED_AFTER_S = 1.0
    #: After the first report of a source that keeps failing, "still
    #: trying" at most this often.
    STILL_TRYING_S = 30.0

    def _source_trouble(self, code: str, message: str, hint: str, now: float,
                        name: str) -> float:
        """Count one more loss or failed reopen since the source last
        worked: the first is reported (``code``), later ones only as a
        "still trying" line every ``STILL_TRYING_S``. The delay before the
        next attempt: ``reopen_interval`` doubled per failure, capped."""
        self._trouble += 1
        if self._trouble == 1:
            self._emit("warning", code, message, hint)
            self._next_still_trying = now + self.STILL_TRYING_S
        elif now >= self._next_still_trying:
            self._next_still_trying = now + self.STILL_TRYING_S
            self._emit("info", "source_retrying",
                       f"still trying to reopen {name} ({self._trouble} tries so far; "
                       f"the last: {message})", hint)
        cfg = self.config
        return min(cfg.reopen_interval * 2 ** min(self._trouble - 1, 16), cfg.reopen_max_interval)

    def _open_reader(self) -> None:
        """Start reading (and opening) the current source on its own thread."""
        if self._fresh_instance:
            factory = self.config.source_factory
            self._fresh_instance = False
            if factory is None:
                self._source = None
                return
            try:
                self._source = factory()
            except Exception as e:
                self._emit("error", "source_failed", f"cannot create the source: {e}")
                self._next_open = time.monotonic() + self.config.reopen_interval
                self._fresh_instance = True
                return
        if self._source is None:
            return
        for old in self._retired:
            if old.src is self._source and not old.join(0.5):
                # Still closing (or stuck) on another thread: never open the
                # same instance under it; build a fresh one next time.
                self._fresh_instance = True
                self._next_open = time.monotonic() + self.config.reopen_interval
                return
        self._reader = _SourceReader(self._source, opened=False, on_notice=self._emit,
                                       stats=self.stats)

    def _drop_reader(self) -> None:
        """Forget a reader whose thread finished by itself (it closed its source)."""
        r, self._reader = self._reader, None
        if r is not None:
            r.retire()
            self._retired.append(r)
        self._prune_retired()

    def _retire_reader(self) -> None:
        """Stop using the current reader; its source is closed on a helper
        thread, so a driver that hangs in close() cannot freeze capture."""
        self._drop_reader()

    def _prune_retired(self) -> None:
        self._retired = [r for r in self._retired if not r.finished]

    def _apply_source_switch(self) -> None:
        """Capture thread only: swap in a source requested by switch_source."""
        with self._control_lock:
            pending, self._pending_source = self._pending_source, None
        if pending is None:
            return
        factory = pending[0]
        self._retire_reader()
        self._source, self._source_ok = None, False
        self.config.source_factory = factory
        self._announce = Announce.NONE
        if factory is None:
            self._fresh_instance = False
            self._emit("info", "source_switched", "no camera: idle motion")
            return
        self._fresh_instance = True
        self._report_open_failure = True
        self._announce = Announce.SWITCHED
        self._trouble = 0
        self._next_open = 0.0
        self._open_reader()

    def _analyze(self, analyzer: FaceAnalyzer, frame: Frame) -> DrivingSignal:
        self._watch_audio()
        self.stats.tick("capture")
        with Timer(self.stats, "face"):
            face = analyzer.analyze(frame.image)
        if face is not None and self._audio_motion is not None \
                and abs(face.yaw) > self.config.audio_takeover_yaw:
            face = None  # turned away: the webcam mouth is unreliable, audio leads
        if face is None:
            self.stats.count("no_face")
            idle = self._idle_signal(frame.timestamp)
            return DrivingSignal(frame.timestamp, None, idle.params, frame.index)
        return DrivingSignal(frame.timestamp, face, None, frame.index)

    def _engine_loop(self) -> None:
        renderer = self._renderer
        assert renderer is not None
        renderer.configure_thread()
        said_nonfinite = -float("inf")  # when the model's non-finite output was last said
        while not self._stop.is_set():
            signal = self._drive_q.get(timeout=0.1)
            if signal is None:
                continue
            if self._overloaded:
                # Behind: render only the newest signal, skip the guide for
                # the older one (it would be stale by the time it is shown).
                newer = self._drive_q.get(timeout=0)
                while newer is not None:
                    self.stats.count("shed_engine")
                    signal, newer = newer, self._drive_q.get(timeout=0)
            try:
                frames = renderer.step(signal)
            except Exception as e:
                self._emit("error", "engine_failed", f"frame dropped: {e}",
                           "if this repeats, switch to guide-only mode")
                traceback.print_exc()
                continue
            self.stats.tick("engine")
            before = getattr(renderer.generator, "nonfinite_chunks", 0)
            for message in renderer.generator.pop_events():
                # Counted for the status line; said at most every 30 s.
                self.stats.count("nonfinite_recovered",
                                 getattr(renderer.generator, "nonfinite_chunks", 0) - before)
                if time.monotonic() - said_nonfinite > 30.0:
                    said_nonfinite = time.monotonic()
                    self._emit("warning", "nonfinite_recovered", message,
                               "re-download or re-train the weights; guide-only mode "
                               "skips the model")
            for f in frames:
                self._out_q.put(f)

    def _output_loop(self) -> None:
        errors = 0
        while not self._stop.is_set():
            try:
                self._output_step()
                errors = 0
            except Exception as e:  # a bug here must not end the output for good
                errors += 1
                if errors == 1:
                    traceback.print_exc()
                    self._emit("error", "output_error", f"output problem: {e}", "see the log")
                self._stop.wait(0.05)

    #: Overload: output below this share of the nominal rate (over the
    #: stats horizon) sheds work; at or above ``OVERLOAD_CLEAR`` it stops.
    OVERLOAD_ENTER = 0.7
    OVERLOAD_CLEAR = 0.9
    #: Consecutive 1 s checks below / above the thresholds to enter / leave.
    OVERLOAD_ENTER_CHECKS = 3
    OVERLOAD_CLEAR_CHECKS = 5
    #: Preview rate while overloaded (the virtual camera keeps its own rate).
    OVERLOAD_PREVIEW_FPS = 10.0

    def _check_overload(self, now: float) -> None:
        if now < self._next_overload_check:
            return
        self._next_overload_check = now + 1.0
        rate = self.stats.rate("output", now)
        if self._paused.is_set() or rate is None or now - self._output_started < 3.0:
            return
        nominal = self.config.fps
        source_rate = self.stats.rate("source", now) if self._source_ok else None
        if source_rate:  # a 25 fps camera cannot give 30 fps out: keeping up is 25
            nominal = min(nominal, source_rate)
        # Hysteresis in time too: a one-off hiccup (a GC, a busy second) must
        # not flip the preview rate and show a banner every minute.
        if rate < self.OVERLOAD_ENTER * nominal:
            self._overload_votes = max(1, self._overload_votes + 1)
        elif rate >= self.OVERLOAD_CLEAR * nominal:
            self._overload_votes = min(-1, self._overload_votes - 1)
        else:
            self._overload_votes = 0
        if not self._overloaded and self._overload_votes >= self.OVERLOAD_ENTER_CHECKS:
            self._overloaded = True
            for sink in self._started_sinks:
                if hasattr(sink, "set_max_fps"):
                    sink.set_max_fps(min(self.OVERLOAD_PREVIEW_FPS, nominal))
            self.stats.count("overloaded")
            self._emit("info", "overloaded",
                       f"the engine makes {rate:.0f} of {nominal:.0f} fps: it skips stale frames "
                       f"and the preview runs at {self.OVERLOAD_PREVIEW_FPS:g} fps",
                       "close other busy programs, or lower the output size")
        elif self._overloaded and -self._overload_votes >= self.OVERLOAD_CLEAR_CHECKS:
            self._overloaded = False
            for sink in self._started_sinks:
                if hasattr(sink, "set_max_fps"):
                    sink.set_max_fps(None)
            self._emit("info", "overload_cleared", f"the engine keeps up again ({rate:.0f} fps)")

    def _output_step(self) -> None:
        frame = self._out_q.get(timeout=0.1)
        now = time.monotonic()
        self._service_sinks(now)
        self._check_overload(now)
        if frame is None:
            return
        with Timer(self.stats, "output"):
            for sink in self._active_sinks:
                feeder = self._feeders.get(id(sink))
                if feeder is not None:
                    feeder.offer(frame.image, frame.timestamp)
        now = time.monotonic()
        self.stats.add("latency", (now - frame.timestamp) * 1000.0)
        self.stats.tick("output", now)

    def _sink_failed(self, sink: FrameSink, why: str, now: float) -> None:
        """Take a failing sink out of the output and schedule its restart."""
        if sink in self._active_sinks:
            self._active_sinks.remove(sink)
        entry = self._sink_retry.setdefault(id(sink), [sink, 0, now])
        entry[1] += 1
        attempts = entry[1]
        log.error("sink %s failed: %s", _sink_label(sink), why)
        if attempts > self.config.sink_retries:
            del self._sink_retry[id(sink)]
            self._emit("error", "sink_removed",
                       f"{_sink_label(sink)} keeps failing ({why}); it was removed from the stream",
                       "restart the stream; the other outputs keep running")
            return
        delay = self.config.reopen_interval * attempts
        entry[2] = now + delay
        self._emit("error", "sink_failed",
                   f"{_sink_label(sink)} failed: {why}; restarting it in {delay:.0f} s "
                   f"(attempt {attempts} of {self.config.sink_retries})",
                   "the other outputs keep running")

    def _service_sinks(self, now: float) -> None:
        """Notice sinks whose submit raised, that stalled or whose own thread
        died (``failed``); restart failed sinks that are due."""
        for sink in list(self._active_sinks):
            feeder = self._feeders.get(id(sink))
            if feeder is not None and feeder.state is FeederState.FAILED:
                e = feeder.error
                if isinstance(e, UserError):  # e.g. recorder's disk full: others go on
                    self._active_sinks.remove(sink)
                    self._emit("error", "sink_failed", e.message, e.hint)
                else:
                    self._sink_failed(sink, f"{type(e).__name__}: {e}", now)
                continue
            if feeder is not None and \
                    feeder.stalled_for(now) > self.config.sink_stall_timeout:
                self._sink_stalled(sink, feeder, feeder.stalled_for(now))
                continue
            if getattr(sink, "failed", False):
                err = ""
                try:
                    err = sink.stats().get("last_error") or ""
                except Exception:
                    pass
                self._sink_failed(sink, err or "it stopped", now)
        for key, (sink, attempts, due) in list(self._sink_retry.items()):
            if now < due or sink in self._active_sinks:
                continue
            try:
                sink.stop()
            except Exception:
                log.debug("stopping failed sink %s", _sink_label(sink), exc_info=True)
            try:
                sink.start()
            except Exception as e:
                self._sink_failed(sink, f"restart failed: {type(e).__name__}: {e}", now)
                continue
            self._active_sinks.append(sink)
            feeder = self._feeders.get(id(sink))
            if feeder is not None:
                feeder.resume()
            self._emit("info", "sink_restored", f"{_sink_label(sink)} is running again")
            # attempts are kept: a sink that fails again soon counts on


    def _sink_stalled(self, sink: FrameSink, feeder: SinkFeeder, waited: float) -> None:
        """Take a sink that accepts nothing out of the stream and end it on a
        helper thread (it may never come back from its device). A sink with
        ``abandon()`` (the recorder) keeps what it wrote and says where."""
        self._active_sinks.remove(sink)
        self._sink_retry.pop(id(sink), None)
        feeder.close(0.0)
        self.stats.count("sink_stalled")
        label = _sink_label(sink)
        # info, not warning: the event below is what the user reads (a
        # warning would also reach a terminal without logging set up)
        log.info("%s accepted no frame for %.1f s; taking it out", label, waited)
        self._emit("warning", "sink_stalled",
                   f"{label} accepted no frame for {waited:.1f} s (its disk, device or encoder "
                   "hangs); it was taken out of the stream, the other outputs keep running")

        def end() -> None:
            abandon = getattr(sink, "abandon", None)
            try:
                if abandon is None:
                    sink.stop()
                    self._emit("error", "sink_removed", f"{label} was stopped after it stalled",
                               "restart the stream to use it again")
                    return
                err = abandon(f"it accepted no frame for {waited:.0f} s")
                self._emit("error", "sink_removed", err.message, err.hint)
            except Exception as e:  # noqa: BLE001 - reported, the stream goes on
                log.error("ending stalled %s failed", label, exc_info=e)
                self._emit("error", "sink_removed",
                           f"{label} stalled and could not be ended: {type(e).__name__}: {e}",
                           "restart the app")

        t = threading.Thread(target=end, name="kf-sink-end", daemon=True)
        self._enders.append(t)
        t.start()


def _sink_label(sink: object) -> str:
    names = {"VirtualCameraSink": "the virtual camera", "RecorderSink": "the recording",
             "PreviewSink": "the preview"}
    return names.get(type(sink).__name__, type(sink).__name__)


class _SourceReader:
    """One source instance read on its own daemon thread ("kf-source-read").

    The thread opens the source (unless it is already open), then calls
    ``read()`` in a loop and keeps the newest frame in a one-slot mailbox. The
    capture thread only polls the mailbox and ``state`` (a ``ReaderState``), so a driver that blocks never
    freezes the stream. ``retire()`` asks the thread to stop and closes the
    source on a helper thread ("kf-source-close"), which also unblocks a
    ``read()`` waiting for the device in well-behaved sources."""

    def __init__(self, src: FrameSource, *, opened: bool,
                 on_notice: Callable[[str, str, str, str], None] | None = None,
                 stats: RollingStats | None = None) -> None:
        self.src = src
        self._stats = stats
        try:
            self.name = src.name
        except Exception:
            self.name = type(src).__name__
        self.state = ReaderState.READING if opened else ReaderState.OPENING
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.last_frame = self.started  # watchdog reference (time of the last frame)
        self.first_frame: float | None = None  # when it delivered its first frame
        self._on_notice = on_notice
        self._box: DropOldestQueue[Frame] = DropOldestQueue(1)
        self._quit = threading.Event()
        self._closer: threading.Thread | None = None
        self._thread = threading.Thread(target=self._run, args=(opened,),
                                        name="kf-source-read", daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> Frame | None:
        return self._box.get(timeout)

    def _run(self, opened: bool) -> None:
        src = self.src
        try:
            if not opened:
                try:
                    src.open()
                except Exception as e:
                    self.error, self.state = e, ReaderState.FAILED
                    return
                self.last_frame = time.monotonic()
                self.state = ReaderState.READING
            drain = getattr(src, "drain_notices", None)
            while not self._quit.is_set():
                t0 = time.perf_counter()
                try:
                    frame = src.read()
                except Exception as e:  # SourceLost, RuntimeError, OSError, cv2.error...
                    if not self._quit.is_set():
                        self.error, self.state = e, ReaderState.LOST
                    return
                if self._quit.is_set():
                    return
                if drain is not None and self._on_notice is not None:
                    for code, message, hint in drain():
                        self._on_notice("warning", code, message, hint)
                if frame is None:
                    self.state = ReaderState.ENDED
                    return
                self.last_frame = time.monotonic()
                if self.first_frame is None:
                    self.first_frame = self.last_frame
                if self._stats is not None:
                    self._stats.add("capture", (time.perf_counter() - t0) * 1000.0)
                    self._stats.tick("source", self.last_frame)
                self._box.put(frame)
        finally:
            if not self._quit.is_set():  # ended/lost/failed by itself: release the device
                try:
                    src.close()
                except Exception:
                    log.debug("closing %s", self.name, exc_info=True)

    def retire(self) -> None:
        """Stop reading; close the source on a helper thread. Idempotent."""
        if self._quit.is_set():
            return
        self._quit.set()

        def close() -> None:
            try:
                self.src.close()
            except Exception:
                log.debug("closing %s", self.name, exc_info=True)

        self._closer = threading.Thread(target=close, name="kf-source-close", daemon=True)
        self._closer.start()

    @property
    def finished(self) -> bool:
        return not self._thread.is_alive() and (self._closer is None or not self._closer.is_alive())

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for both threads; True if they ended."""
        t_end = time.monotonic() + timeout
        for t in (self._thread, self._closer):
            if t is not None:
                t.join(max(0.0, t_end - time.monotonic()))
        return self.finished
