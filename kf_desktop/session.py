"""The live session: capture thread -> engine worker thread -> output thread.

Queues between the threads hold at most 2 items and drop the oldest. The
output side hands frames to the sinks; the virtual-camera sink sends at a
constant rate and repeats the last frame while the engine is late. A source
that dies mid-stream does not stop the session: the capture thread keeps
feeding face-less signals (the avatar eases back to its neutral pose, or
follows idle motion), reports the loss, and tries to reopen the source.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kf_desktop.errors import UserError
from kf_desktop.face import FaceAnalyzer
from kf_desktop.frames import Frame
from kf_desktop.generators import Generator
from kf_desktop.pipeline import AvatarRenderer, DrivingSignal, RenderedFrame
from kf_desktop.portrait import Portrait, load_portrait
from kf_desktop.queues import DropOldestQueue
from kf_desktop.retarget import Gains, MotionParams
from kf_desktop.sinks import FrameSink
from kf_desktop.sources import FrameSource, SourceLost
from kf_desktop.stats import RollingStats, Timer


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
    #: Seconds between attempts to reopen a lost source.
    reopen_interval: float = 2.0
    #: Motion used whenever no face drives the avatar: t -> MotionParams.
    idle_motion: Callable[[float], MotionParams | None] | None = None
    generator_factory: Callable[[], Generator] | None = None
    #: Builds the audio source (MicSource / WavSource); None = no audio. With
    #: audio, the mouth follows speech whenever no face drives it (mic-only
    #: mode, face lost, or head turned beyond ``audio_takeover_yaw``).
    audio_factory: Callable[[], object] | None = None
    audio_takeover_yaw: float = 35.0


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
        self._out_q: DropOldestQueue[RenderedFrame] = DropOldestQueue(2)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._control_lock = threading.Lock()
        self._pending_source: tuple[Callable[[], FrameSource] | None] | None = None
        self._threads: list[threading.Thread] = []
        self._renderer: AvatarRenderer | None = None
        self._source: FrameSource | None = None
        self._source_ok = False
        self._started_sinks: list[FrameSink] = []
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

    def start(self) -> None:
        """Load the portrait, open the source and the sinks, start the threads.
        Raises UserError (nothing left running) if any of them fails."""
        if self._running:
            return
        cfg = self.config
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
                # make the mouth lag the voice; keep it short.
                self._audio_motion = AudioMotion(self._audio, lookahead_ms=20.0)
            for sink in self.sinks:
                sink.start()
                self._started_sinks.append(sink)
        except BaseException:
            self._release()
            raise
        self._stop.clear()
        self._running = True
        for name, target in (("kf-capture", self._capture_loop),
                             ("kf-engine", self._engine_loop),
                             ("kf-output", self._output_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(t)
            t.start()
        self._emit("info", "started", "stream started")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads, join them and release every device. Idempotent."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        alive = [t.name for t in self._threads if t.is_alive()]
        self._threads = []
        self._release()
        if self._running:
            self._running = False
            self._emit("info", "stopped", "stream stopped")
        if alive:
            raise RuntimeError(f"threads did not stop in {timeout}s: {alive}")

    def _release(self) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None
        if self._audio is not None:
            self._audio.close()
            self._audio = None
            self._audio_motion = None
        for sink in reversed(self._started_sinks):
            try:
                sink.stop()
            except UserError as e:
                self._emit("error", "sink_failed", e.message, e.hint)
        self._started_sinks = []

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

    def snapshot(self) -> dict:
        snap = self.stats.snapshot()
        snap["dropped"] = {"drive": self._drive_q.dropped, "output": self._out_q.dropped}
        snap["source_ok"] = self._source_ok
        if self._audio is not None:
            snap["audio"] = self._audio.stats()
        snap["sinks"] = {type(s).__name__: s.stats() for s in self.sinks}
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
        next_reopen = 0.0
        try:
            while not self._stop.is_set():
                self._apply_source_switch()
                src = self._source
                if self._paused.is_set():
                    if src is not None and self._source_ok:
                        src.close()
                        self._source_ok = False
                        next_reopen = 0.0  # reopen as soon as we resume
                    self._stop.wait(period)
                    continue
                if src is None or not self._source_ok:
                    now = time.monotonic()
                    self._drive_q.put(self._idle_signal(now))
                    if src is not None and now >= next_reopen:
                        next_reopen = now + self.config.reopen_interval
                        self._try_reopen(src)
                    self._stop.wait(period)
                    continue
                try:
                    with Timer(self.stats, "capture"):
                        frame = src.read()
                except SourceLost as e:
                    self._source_ok = False
                    next_reopen = time.monotonic() + self.config.reopen_interval
                    self._emit("warning", "source_lost", e.message,
                               e.hint or "reconnect the camera; the avatar keeps running")
                    src.close()
                    continue
                if frame is None:  # a finite file ended: keep streaming idle
                    self._source_ok = False
                    next_reopen = float("inf")
                    self._emit("info", "source_ended", "the driving video ended")
                    continue
                self._drive_q.put(self._analyze(analyzer, frame))
        except Exception as e:  # report, keep the output alive on idle frames
            self._emit("error", "capture_crashed", f"capture stopped: {e}",
                       "restart the stream; see the log for details")
            traceback.print_exc()
            while not self._stop.wait(period):
                self._drive_q.put(self._idle_signal(time.monotonic()))
        finally:
            analyzer.close()

    def _apply_source_switch(self) -> None:
        """Capture thread only: swap in a source requested by switch_source."""
        with self._control_lock:
            pending, self._pending_source = self._pending_source, None
        if pending is None:
            return
        factory = pending[0]
        if self._source is not None:
            self._source.close()
        self._source, self._source_ok = None, False
        self.config.source_factory = factory
        if factory is None:
            self._emit("info", "source_switched", "no camera: idle motion")
            return
        src = factory()
        self._source = src
        try:
            src.open()
        except UserError as e:
            self._emit("error", "source_failed", e.message, e.hint)
            return
        self._source_ok = True
        self._emit("info", "source_switched", f"driving from {src.name}")

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

    def _try_reopen(self, src: FrameSource) -> None:
        try:
            src.open()
        except UserError:
            return
        self._source_ok = True
        self._emit("info", "source_restored", f"{src.name} is back")

    def _engine_loop(self) -> None:
        renderer = self._renderer
        assert renderer is not None
        renderer.configure_thread()
        while not self._stop.is_set():
            signal = self._drive_q.get(timeout=0.1)
            if signal is None:
                continue
            try:
                frames = renderer.step(signal)
            except Exception as e:
                self._emit("error", "engine_failed", f"frame dropped: {e}",
                           "if this repeats, switch to guide-only mode")
                traceback.print_exc()
                continue
            self.stats.tick("engine")
            for f in frames:
                self._out_q.put(f)

    def _output_loop(self) -> None:
        while not self._stop.is_set():
            frame = self._out_q.get(timeout=0.1)
            if frame is None:
                continue
            with Timer(self.stats, "output"):
                for sink in list(self._started_sinks):
                    try:
                        sink.submit(frame.image, frame.timestamp)
                    except UserError as e:  # e.g. recorder's disk full: others go on
                        self._started_sinks.remove(sink)
                        self._emit("error", "sink_failed", e.message, e.hint)
            now = time.monotonic()
            self.stats.add("latency", (now - frame.timestamp) * 1000.0)
            self.stats.tick("output", now)
