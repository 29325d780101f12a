"""`kf-desktop bench`: the speed table of DESIGN section 6.

Two measurements in one run, on the fetched talking-head clip:
1. stage costs: every stage run back to back on the same frames (no threads,
   no pacing), median and p95 milliseconds per stage;
2. the live session: the real three-thread runtime, a source paced at the
   output rate, the real pyvirtualcam.Camera on an in-memory backend; output
   fps and end-to-end latency from capture timestamp to sink.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np

from kf_desktop.cli import DEFAULT_PORTRAIT
from kf_desktop.compute import resolve_device
from kf_desktop.data import data_path
from kf_desktop.face import FaceAnalyzer
from kf_desktop.frames import Frame
from kf_desktop.generators import make_generator
from kf_desktop.pipeline import AvatarRenderer, DrivingSignal
from kf_desktop.portrait import load_portrait
from kf_desktop.session import Session, SessionConfig
from kf_desktop.sinks import VirtualCameraSink
from kf_desktop.sources import VideoFileSource
from kf_desktop.stats import RollingStats, Timer
from kf_desktop.vcam_memory import MemoryVcam

STAGES = ("capture", "face", "retarget", "guide", "generator", "paste", "output")


class PacedSource:
    """A video file re-timed to ``fps`` (like a webcam at that rate): frames
    are released on a fixed schedule and stamped when released."""

    def __init__(self, path: Path, fps: float) -> None:
        self._inner = VideoFileSource(path, realtime=False, loop=True)
        self._fps = fps
        self._t0 = 0.0
        self._n = 0

    def open(self) -> None:
        self._inner.open()
        self._t0 = time.monotonic()
        self._n = 0

    def read(self) -> Frame | None:
        due = self._t0 + self._n / self._fps
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        frame = self._inner.read()
        if frame is None:
            return None
        self._n += 1
        return Frame(frame.image, time.monotonic(), self._n - 1)

    def close(self) -> None:
        self._inner.close()

    fps = property(lambda self: self._fps)
    size = property(lambda self: self._inner.size)
    name = property(lambda self: f"paced {self._inner.name}")


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if platform.system() != "Darwin" else kb / 2**20


def measure_stages(portrait, clip: Path, out_size, device: str, mode: str,
                   frames: int = 150, weights: Path | None = None) -> dict:
    """Every stage back to back on ``frames`` frames; returns ms percentiles."""
    from kf_desktop.blas_threads import limit_blas_threads

    limit_blas_threads(1)  # as the session does: the guide's small solves (blas_threads.py)
    stats = RollingStats(window=frames)
    renderer = AvatarRenderer(portrait, out_size=out_size, device=device,
                              generator=make_generator(mode, device, weights=weights), stats=stats)
    renderer.configure_thread()
    vc = MemoryVcam(keep_last=1, name="kf_bench_stages")
    vc.register()
    sink = VirtualCameraSink(out_size[0], out_size[1], 1000.0, backend=vc.name)
    source = VideoFileSource(clip, realtime=False, loop=True)
    source.open()
    sink.start()
    try:
        with FaceAnalyzer(static=False) as analyzer:
            for i in range(frames + 10):
                if i == 10:  # warm-up done: forget first-call costs
                    stats.reset()
                with Timer(stats, "capture"):
                    frame = source.read()
                with Timer(stats, "face"):
                    face = analyzer.analyze(frame.image)
                for out in renderer.step(DrivingSignal(frame.timestamp, face, index=i)):
                    with Timer(stats, "output"):
                        sink.submit(out.image, out.timestamp)
    finally:
        sink.stop()
        source.close()
        vc.unregister()
    return {s: stats.percentiles(s, (50, 95)) for s in STAGES}


def measure_live(portrait, clip: Path, out_size, fps: float, device: str, mode: str,
                 seconds: float, weights: Path | None = None) -> dict:
    from kf_desktop.av_delay import HeldVirtualCameraSink  # what `run` and the GUI use

    vc = MemoryVcam(keep_last=1, name="kf_bench_live")
    vc.register()
    vcam = HeldVirtualCameraSink(out_size[0], out_size[1], fps, backend=vc.name)
    cfg = SessionConfig(portrait=portrait, source_factory=lambda: PacedSource(clip, fps),
                        out_size=out_size, fps=fps, device=device,
                        generator_factory=lambda: make_generator(mode, device, weights=weights))
    session = Session(cfg, [vcam])
    try:
        session.start()
        time.sleep(1.0)  # warm-up
        session.stats.reset()  # the renderer records into the same object
        time.sleep(seconds)
        snap = session.snapshot()
    finally:
        session.stop()
        vc.unregister()
    v = snap["sinks"][type(vcam).__name__]
    return {
        "input_fps": fps,
        "engine_fps": snap["fps"].get("engine", 0.0),
        "output_fps": snap["fps"].get("output", 0.0),
        "vcam_send_fps": v["send_fps"],
        "vcam_repeated": v["frames_repeated"],
        "dropped": snap["dropped"],
        "latency_to_sink_ms": snap["ms"].get("latency", {}),
        "latency_to_vcam_send_ms": {k: v["latency_ms"][k] for k in ("p50", "p95", "p99")},
        "hold": v.get("hold"),
    }


def format_table(result: dict) -> str:
    lines = []
    cfg = result["config"]
    lines.append(f"kf-desktop bench: {cfg['generator']} on {cfg['device']}, output "
                 f"{cfg['size']} @ {cfg['fps']:g} fps, head crop {cfg['crop']}, "
                 f"{cfg['cpu_count']} CPU cores")
    lines.append("")
    lines.append(f"{'stage':<12}{'p50 ms':>9}{'p95 ms':>9}")
    total = 0.0
    for s in STAGES:
        p = result["stages"].get(s) or {}
        p50 = p.get("p50", 0.0)
        total += p50
        lines.append(f"{s:<12}{p50:>9.2f}{p.get('p95', 0.0):>9.2f}")
    lines.append(f"{'sum':<12}{total:>9.2f}")
    eng = sum((result["stages"].get(s) or {}).get("p50", 0.0)
              for s in ("retarget", "guide", "generator", "paste"))
    cap = sum((result["stages"].get(s) or {}).get("p50", 0.0) for s in ("capture", "face"))
    lines.append(f"capacity: capture thread {1000 / max(cap, 1e-6):.0f} fps, "
                 f"engine thread {1000 / max(eng, 1e-6):.0f} fps")
    live = result["live"]
    lat = live["latency_to_sink_ms"]
    lat2 = live["latency_to_vcam_send_ms"]
    lines.append("")
    lines.append(f"live session ({cfg['seconds']:g} s, source paced at {live['input_fps']:g} fps):")
    lines.append(f"  engine {live['engine_fps']:.1f} fps, output {live['output_fps']:.1f} fps, "
                 f"virtual camera sends {live['vcam_send_fps']:.1f} fps "
                 f"({live['vcam_repeated']} repeats), dropped {live['dropped']}")
    lines.append(f"  latency capture->sink     p50 {lat.get('p50', 0):6.1f}  "
                 f"p95 {lat.get('p95', 0):6.1f}  p99 {lat.get('p99', 0):6.1f} ms")
    lines.append(f"  latency capture->vcam send p50 {lat2['p50'] or 0:6.1f}  "
                 f"p95 {lat2['p95'] or 0:6.1f}  p99 {lat2['p99'] or 0:6.1f} ms")
    hold = live.get("hold") or {}
    if hold.get("target_ms") is not None:
        lines.append(f"  held video delay {hold['target_ms']:.0f} ms ({'auto' if hold.get('auto') else 'set'}), "
                     f"jitter {hold.get('jitter_ms') or 0:.1f} ms, {hold.get('late', 0)} late frames")
    lines.append(f"peak memory (RSS): {result['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    if getattr(args, "serving", False):
        from engine.bench_serving import main as serving_main  # the table: engine/bench_serving.py

        return serving_main(["--json"] if args.json else [])
    if getattr(args, "kernels", False) or (args.engine and getattr(args, "preset", None)):
        from engine.kernels.bench import main as kernels_main  # GPU timings; floors only without one

        argv = (["--kernels"] if args.kernels else []) + (["--engine"] if args.engine else [])
        return kernels_main(argv + ["--preset", *(args.preset or ["paper"])] + (["--json"] if args.json else []))
    if args.engine:
        from engine.bench_engine import main as engine_main

        argv = ["--json"] if args.json else []
        if args.device != "auto":
            argv += ["--device", resolve_device(args.device)]
        return engine_main(argv)
    import os

    device = resolve_device(args.device)
    if args.mode == "auto":
        from kf_desktop.generators import auto_mode

        args.mode = auto_mode(device, Path(args.weights) if args.weights else None)
    clip = data_path("cap13_edit2.mp4")
    with FaceAnalyzer(static=True, max_faces=2) as still:
        portrait = load_portrait(DEFAULT_PORTRAIT, still)
    print("measuring stages...", file=sys.stderr, flush=True)
    weights = Path(args.weights) if args.weights else None
    stages = measure_stages(portrait, clip, args.size, device, args.mode, weights=weights)
    print(f"running a live session for {args.seconds:g} s...", file=sys.stderr, flush=True)
    live = measure_live(portrait, clip, args.size, args.fps, device, args.mode, args.seconds, weights=weights)
    result = {
        "config": {"generator": "guide-only" if args.mode == "guide" else "knot-forcing",
                   "device": device, "size": f"{args.size[0]}x{args.size[1]}",
                   "fps": args.fps, "crop": f"{portrait.crop.shape[1]}x{portrait.crop.shape[0]}",
                   "seconds": args.seconds, "cpu_count": os.cpu_count()},
        "stages": stages,
        "live": live,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if args.json:
        print(json.dumps(result, indent=2, default=lambda o: float(o) if isinstance(o, np.floating) else str(o)))
    else:
        print(format_table(result))
    return 0
