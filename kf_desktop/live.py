"""`kf-desktop run`: headless live streaming with a status line."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from kf_desktop.compute import resolve_device
from kf_desktop.errors import UserError
from kf_desktop.generators import make_generator
from kf_desktop.idle_motion import IdleMotion
from kf_desktop.input_path import regular_file
from kf_desktop.output_lock import OutputLock
from kf_desktop.output_path import check_video_out
from kf_desktop.session import Session, SessionConfig, SessionEvent
from kf_desktop.signals import handle_termination
from kf_desktop.sinks import NullSink, RecorderSink
from kf_desktop.sources import CameraSource, VideoFileSource


def status_line(snap: dict, notes: tuple[str, ...] = ()) -> str:
    fps = snap["fps"].get("output", 0.0)
    lat = snap["ms"].get("latency", {})
    stages = " ".join(f"{k}={v['p50']:.1f}" for k, v in snap["ms"].items()
                      if k != "latency" and v)
    line = (f"out {fps:5.1f} fps | latency p50 {lat.get('p50', 0):5.1f} ms "
            f"p95 {lat.get('p95', 0):5.1f} ms | ms: {stages}")
    return " | ".join((line, *notes))


class FaceWatch:
    """'NO FACE' for the status line while most driver frames of the last
    interval had no face (the avatar then runs on idle motion)."""

    def __init__(self) -> None:
        self._last: tuple[float, int] | None = None

    def note(self, snap: dict, now: float) -> str | None:
        missing = int(snap.get("counters", {}).get("no_face", 0))
        last, self._last = self._last, (now, missing)
        rate = snap.get("fps", {}).get("capture") or 0.0
        if last is None or not snap.get("source_ok") or rate <= 0:
            return None
        expected = rate * max(now - last[0], 1e-3)
        if missing - last[1] >= 0.5 * expected:
            return "NO FACE in the driver: idle motion"
        return None


def check_inputs(args: argparse.Namespace) -> bool:
    """Every user path of `run`, before any device opens: inputs are regular
    files, the recording is no input and replaces nothing unasked. Returns
    whether an existing --record file may be replaced."""
    regular_file(args.portrait, "portrait photo", "--portrait")
    if args.video:
        regular_file(args.video, "driving video", "--video")
    if args.audio:
        regular_file(args.audio, "speech WAV", "--audio")
    if not args.record:
        return False
    return check_video_out(args.record, [("portrait", Path(args.portrait)),
                                         ("driving video", args.video and Path(args.video)),
                                         ("speech WAV", args.audio and Path(args.audio))],
                           option="--record", overwrite=getattr(args, "overwrite", False))


def run_live(args: argparse.Namespace) -> int:
    record_ok = check_inputs(args)
    # Held for the whole run: a second kf-desktop recording to the same file
    # is refused at once, not after its own run.
    if not args.record:
        return _run_live(args, False, None)
    with OutputLock(args.record, "--record") as lock:
        return _run_live(args, record_ok, lock)


def _run_live(args: argparse.Namespace, record_ok: bool, lock: OutputLock | None) -> int:
    device = resolve_device(args.device)
    w, h = args.size
    source_factory = None
    if args.video:
        video = Path(args.video)

        def source_factory():
            return VideoFileSource(video, realtime=True, loop=True)
    elif not args.no_camera:
        def source_factory():
            return CameraSource(args.camera, size=(1280, 720), fps=30)

    audio_factory = None
    if args.audio:
        from kf_desktop.audio.wav import WavSource

        wav = Path(args.audio)
        audio_factory = lambda: WavSource(wav, realtime=True, loop=True)  # noqa: E731
    elif args.mic is not None:
        from kf_desktop.audio.mic import MicSource

        name = None if args.mic == "default" else args.mic
        audio_factory = lambda: MicSource(name)  # noqa: E731

    sinks = []
    vmic = None
    if getattr(args, "virtual_mic", False):
        # Lips in sync in the call: frames held to a constant delay, the
        # microphone played into a virtual mic by exactly as much.
        from kf_desktop.audio.virtual_mic import DEFAULT_AUDIO_LAG_MS, VirtualMicSink
        from kf_desktop.av_delay import HeldVirtualCameraSink

        if audio_factory is None:
            print("[warning] --virtual-mic needs --mic (or --audio): no virtual microphone",
                  file=sys.stderr, flush=True)
        vcam = HeldVirtualCameraSink(w, h, args.fps, delay_ms=getattr(args, "video_delay", None)) \
            if args.vcam else None
        if vcam is not None:
            sinks.append(vcam)
        if audio_factory is not None:
            vmic = VirtualMicSink(getattr(args, "av_trim", 0.0) or 0.0)
            sinks.append(vmic)
    elif args.vcam:
        # Always a constant capture-to-send delay: it paces a chunked
        # generator's frames (c at a time) at their capture cadence, where a
        # plain newest-frame sender would show only the last of each chunk.
        from kf_desktop.av_delay import HeldVirtualCameraSink

        sinks.append(HeldVirtualCameraSink(w, h, args.fps, delay_ms=getattr(args, "video_delay", None)))
    if args.record:
        # realtime: placed by capture time, so the file plays at wall-clock speed
        sinks.append(RecorderSink(Path(args.record), w, h, args.fps, realtime=True,
                                  overwrite=record_ok, option="--record", lock=lock))
    if not sinks:
        sinks.append(NullSink())

    def on_event(ev: SessionEvent) -> None:
        line = f"[{ev.level}] {ev.message}"
        if ev.hint:
            line += f" (fix: {ev.hint})"
        print(line, file=sys.stderr, flush=True)

    from kf_desktop.cli import generator_options

    options = generator_options(args)
    refused: list[str] = []  # --mode generator that fell back to guide-only

    def fallback(message: str, hint: str) -> None:
        refused.append(message)
        print(f"[warning] {message} (fix: {hint})", file=sys.stderr, flush=True)

    generator_factory = (lambda: make_generator(args.mode, device, **options,
                                                on_fallback=fallback))
    config = SessionConfig(portrait=args.portrait, source_factory=source_factory,
                           out_size=(w, h), fps=args.fps, device=device,
                           generator_factory=generator_factory, audio_factory=audio_factory,
                           idle_motion=IdleMotion(seed=0),
                           audio_lag_ms=DEFAULT_AUDIO_LAG_MS if vmic is not None else None)
    session = Session(config, sinks, on_event=on_event)
    if vmic is not None:
        vmic.attach(session, vcam)
    stop = threading.Event()

    def on_signal(signum: int) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C while stopping: give up at once
        stop.set()

    # Ctrl-C, `kill` (SIGTERM) and a closed terminal (SIGHUP) all stop the
    # stream the same way, so a --record file is finished, not left hidden.
    try:
        with handle_termination(on_signal, include_sigint=True):
            _stream(session, args, stop, w, h, refused)
    except KeyboardInterrupt:
        _keep_recordings(sinks)
        raise
    errors = [e for e in session.events() if e.level == "error"]
    if errors:
        raise UserError(errors[-1].message, errors[-1].hint)
    if session.model_never_finite():
        from kf_desktop.model_choice import NOT_AS_ASKED

        print("error: the Knot Forcing model never produced a finite frame (see the warnings "
              "above): the stream was guide-only", file=sys.stderr)
        print("  fix: re-download or re-train the weights; --mode guide skips the model",
              file=sys.stderr)
        return NOT_AS_ASKED
    if refused:
        from kf_desktop.model_choice import NOT_AS_ASKED

        print("error: --mode generator was asked for, but the Knot Forcing model was refused: "
              "the stream was guide-only", file=sys.stderr)
        return NOT_AS_ASKED
    return 0


def _keep_recordings(sinks: list) -> None:
    """A second Ctrl-C gives up at once: what was recorded is kept under a
    visible ``.partial.mp4`` name (not the hidden temporary file) and the
    user is told where."""
    for sink in sinks:
        if not isinstance(sink, RecorderSink):
            continue
        finished = lambda: bool(sink.takes) and sink.takes[-1] == sink.path  # noqa: E731
        # abandon() waits for a stop() in progress, which may finish the file meanwhile
        err = None if finished() else sink.abandon("interrupted (a second Ctrl-C gives up at once)", hint="")
        if finished():
            print(f"[info] the recording was finished as {sink.path}", file=sys.stderr, flush=True)
        else:
            print(f"[warning] {err.message}", file=sys.stderr, flush=True)


def _sync_notes(snap: dict) -> tuple[str | None, ...]:
    """Held video delay + jitter and the virtual microphone, when in use."""
    from kf_desktop.audio.virtual_mic import vmic_summary
    from kf_desktop.av_delay import hold_summary

    return hold_summary(snap), vmic_summary(snap)


def _stream(session: Session, args: argparse.Namespace, stop: threading.Event,
            w: int, h: int, refused: list[str]) -> None:
    try:
        print("loading portrait and opening devices...", file=sys.stderr, flush=True)
        session.start()
        if args.vcam:
            print(f"virtual camera is live ({w}x{h} @ {args.fps:g} fps); "
                  "select it in Zoom/Teams/Meet/OBS. Ctrl-C stops.", file=sys.stderr)
        t_end = time.monotonic() + args.seconds if args.seconds else float("inf")
        faces = FaceWatch()
        while not stop.wait(1.0) and time.monotonic() < t_end:
            snap = session.snapshot()
            bad = int(snap.get("counters", {}).get("nonfinite_recovered", 0))
            notes = tuple(n for n in (faces.note(snap, time.monotonic()),
                                      "GUIDE-ONLY (model refused)" if refused else None,
                                      f"MODEL NON-FINITE x{bad}: guide frames" if bad else None,
                                      *_sync_notes(snap)) if n)
            print(status_line(snap, notes), file=sys.stderr, flush=True)
    finally:
        session.stop()
