"""Long-running check of the live session (not part of CI; issue 13).

    .venv/bin/python scripts/soak.py --minutes 20 [--hog 1] [--size 1280x720] [--fps 30]
    .venv/bin/python scripts/soak.py --minutes 20 --sender-only   # the machine's own floor
    .venv/bin/python scripts/soak.py --minutes 20 --record /tmp/soak.mp4 --stall-recorder-at 120 \
        --stall-for 10 --lose-video-at 300 --lose-for 4             # with faults

Runs the real session for N minutes: a file-driven source (the fetched test
clip, looping in real time), the real guide/paste-back engine, a real
``pyvirtualcam.Camera`` on the in-memory backend (kf_desktop/vcam_memory.py)
and a preview-like sink. ``--hog K`` runs K busy-looping processes (one core
each) for the whole run. Every ``--every`` seconds it prints RSS, the output
rate, the virtual camera's cadence (frames really sent per second, and the
largest gap between two sends), and the events since the last line; at the
end a summary: RSS growth over the last half (or the last 10 minutes), the
worst window, the largest gap, gaps over 2 frame periods, and all events.
Exit status 1 if a worker thread died or the virtual camera stopped.

Faults (each once, at the given second of the run): ``--record PATH`` adds a
live recorder; ``--stall-recorder-at S --stall-for D`` stops its ffmpeg
child with SIGSTOP for D s (a stalled disk: the recorder must be taken out
with its partial file kept, the virtual camera must keep its cadence);
``--lose-video-at S --lose-for D`` moves the driving video (a copy) away for
D s (a network share reconnecting: the source must come back).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kf_desktop.cli import DEFAULT_PORTRAIT, parse_size  # noqa: E402
from kf_desktop.data import data_path  # noqa: E402
from kf_desktop.idle_motion import IdleMotion  # noqa: E402
from kf_desktop.session import Session, SessionConfig  # noqa: E402
from kf_desktop.signals import handle_termination  # noqa: E402
from kf_desktop.sinks import PreviewSink, RecorderSink, VirtualCameraSink  # noqa: E402
from kf_desktop.sources import VideoFileSource  # noqa: E402
from kf_desktop.vcam_memory import MemoryVcam  # noqa: E402


def _hog() -> None:  # pragma: no cover - runs in a child process
    x = 0
    while True:
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF


def rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class GcWatch:
    """Times the garbage collector's passes (gc.callbacks): a full collection
    holds the GIL, so a long one shows up as a virtual-camera gap."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self.passes: list[tuple[float, int, float]] = []  # (end time, generation, ms)

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            ms = (time.perf_counter() - self._t0) * 1000.0
            if info.get("generation", 0) == 2 or ms > 5.0:
                self.passes.append((time.monotonic(), info.get("generation", 0), ms))

    def drain(self) -> list[tuple[float, int, float]]:
        out, self.passes = self.passes, []
        return out


class SenderOnly:
    """The control run (--sender-only): the same virtual-camera sink and
    backend, fed a fixed frame at 25 fps by one thread, and nothing else in
    the process. Gaps seen here come from the machine (scheduling, the VM),
    not from the session's threads."""

    def __init__(self, vcam: VirtualCameraSink, w: int, h: int) -> None:
        self.vcam = vcam
        self._frame = np.full((h, w, 3), 128, np.uint8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="soak-feed", daemon=True)

    def _feed(self) -> None:
        while not self._stop.wait(0.04):
            self.vcam.submit(self._frame, time.monotonic())

    def start(self) -> None:
        self.vcam.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.vcam.stop()

    def snapshot(self) -> dict:
        return {"fps": {}, "counters": {}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--hog", type=int, default=0, help="busy-looping processes (cores) to add")
    ap.add_argument("--size", type=parse_size, default=(1280, 720))
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between report lines")
    ap.add_argument("--clip", default=None, help="driving video (default: the fetched test clip)")
    ap.add_argument("--portrait", default=str(DEFAULT_PORTRAIT))
    ap.add_argument("--json", help="also write the summary as JSON to this file")
    ap.add_argument("--record", help="also record live to this mp4")
    ap.add_argument("--stall-recorder-at", type=float, help="s into the run: SIGSTOP ffmpeg")
    ap.add_argument("--stall-for", type=float, default=10.0, help="s the recorder stays stopped")
    ap.add_argument("--lose-video-at", type=float, help="s into the run: move the video away")
    ap.add_argument("--lose-for", type=float, default=4.0, help="s the video stays away")
    ap.add_argument("--sender-only", action="store_true",
                    help="control run: only the virtual-camera sender, fed a fixed frame")
    args = ap.parse_args(argv)

    clip = Path(args.clip) if args.clip else data_path("cap13_edit2.mp4")
    scratch = None
    if args.lose_video_at is not None:  # a copy, so the fetched clip is never moved
        import shutil
        import tempfile

        scratch = tempfile.TemporaryDirectory(prefix="kf-soak-")
        clip = Path(shutil.copy(clip, Path(scratch.name) / clip.name))
    w, h = args.size
    period = 1.0 / args.fps
    hogs = [multiprocessing.Process(target=_hog, daemon=True) for _ in range(args.hog)]
    for p in hogs:
        p.start()

    vc = MemoryVcam(keep_last=1, name="kf_soak_mem")
    vc.register()
    previews = Counter()
    vcam = VirtualCameraSink(w, h, args.fps, backend=vc.name)
    preview = PreviewSink(lambda img, ts: previews.update(n=1))
    events: list = []
    cfg = SessionConfig(portrait=args.portrait, out_size=(w, h), fps=args.fps,
                        source_factory=lambda: VideoFileSource(clip, realtime=True, loop=True),
                        idle_motion=IdleMotion(seed=0))
    rec = RecorderSink(args.record, w, h, args.fps, realtime=True) if args.record else None
    session = (SenderOnly(vcam, w, h) if args.sender_only
               else Session(cfg, [vcam, preview] + ([rec] if rec else []), on_event=events.append))
    print(f"soak{' (sender only)' if args.sender_only else ''}: {args.minutes:g} min, {w}x{h} @ {args.fps:g} fps, hog {args.hog} core(s), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    gcw = GcWatch()
    gc.callbacks.append(gcw)
    session.start()
    t_start = time.monotonic()
    t_end = t_start + args.minutes * 60.0
    rows: list[dict] = []
    stopping = threading.Event()
    faults: list[dict] = []
    _schedule_faults(args, rec, clip, t_start, stopping, faults)
    try:
        with handle_termination(lambda signum: stopping.set(), include_sigint=True):
            _loop(args, session, vc, vcam, previews, events, rows, t_start, t_end, period,
                  stopping, gcw)
    finally:
        stopping.set()
        session.stop()
        vc.unregister()
        if scratch is not None:
            scratch.cleanup()
        for p in hogs:
            p.terminate()
    if not rows:
        return 1
    alive_ok = all(r["threads_ok"] for r in rows)
    largest_gap = max((r["vcam_max_gap_ms"] or 0) for r in rows) / 1000
    all_gaps_over_2 = sum(r["vcam_gaps_over_2"] for r in rows)
    crashed = not alive_ok
    tail_from = rows[-1]["t"] - min(600.0, rows[-1]["t"] / 2)
    tail = [r for r in rows if r["t"] >= tail_from]
    summary = {
        "minutes": rows[-1]["t"] / 60, "hog": args.hog, "size": f"{w}x{h}", "fps": args.fps,
        "rss_start_mb": rows[0]["rss_mb"], "rss_end_mb": rows[-1]["rss_mb"],
        "rss_growth_tail_mb": tail[-1]["rss_mb"] - tail[0]["rss_mb"],
        "tail_minutes": (tail[-1]["t"] - tail[0]["t"]) / 60,
        "vcam_fps_mean": float(np.mean([r["vcam_fps"] for r in rows])),
        "vcam_fps_worst_window": float(min(r["vcam_fps"] for r in rows)),
        "vcam_largest_gap_ms": largest_gap * 1000,
        "vcam_gaps_over_2_periods": all_gaps_over_2,
        "output_fps_mean": float(np.mean([r["output_fps"] for r in rows])),
        "preview_fps_mean": float(np.mean([r["preview_fps"] for r in rows])),
        "events": dict(Counter(f"{e.level}:{e.code}" for e in events)),
        "gaps_over_2_periods_at_s": [g for r in rows for g in r["gaps_at_s"]],
        "gc_full_passes": sum(r["gc_full"] for r in rows),
        "gc_longest_ms": max(r["gc_max_ms"] for r in rows),
        "sender_priority": vcam.stats().get("sender_priority"),
        "faults": faults,
        "recording": rec.stats() if rec else None,
        "recording_events": [e.message for e in events
                             if e.code in ("sink_stalled", "sink_removed", "sink_failed")],
        "source_lost_restored": [f"{e.code}: {e.message}" for e in events
                                 if e.code in ("source_lost", "source_restored")],
        "crashed": crashed or not vcam.stats()["frames_sent"] or vcam.failed,
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))
    return 1 if summary["crashed"] else 0


def _schedule_faults(args, rec, clip: Path, t_start: float, stopping: threading.Event,
                     faults: list[dict]) -> None:
    """Inject the faults asked for, each once, on a daemon thread."""
    import signal

    plan = []
    if args.stall_recorder_at is not None and rec is not None:
        plan.append((args.stall_recorder_at, "recorder_stopped", args.stall_for))
    if args.lose_video_at is not None:
        plan.append((args.lose_video_at, "video_moved_away", args.lose_for))

    def run() -> None:
        for at, what, length in sorted(plan):
            if stopping.wait(max(0.0, t_start + at - time.monotonic())):
                return
            faults.append({"t": round(time.monotonic() - t_start, 1), "fault": what,
                           "for_s": length})
            print(f"fault: {what} for {length:g} s", flush=True)
            if what == "recorder_stopped":
                proc = rec._proc
                if proc is None:
                    continue
                os.kill(proc.pid, signal.SIGSTOP)
                stopping.wait(length)
                try:
                    os.kill(proc.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass  # killed meanwhile: what the recorder does with a stalled child
            else:
                away = clip.with_name("." + clip.name + ".away")
                os.rename(clip, away)
                stopping.wait(length)
                os.rename(away, clip)

    threading.Thread(target=run, name="soak-faults", daemon=True).start()


def _loop(args, session, vc, vcam, previews, events, rows, t_start, t_end, period,
          stopping, gcw: GcWatch) -> None:
    last_send = None
    n_events = 0
    while time.monotonic() < t_end and not stopping.is_set():
        stopping.wait(min(args.every, max(0.0, t_end - time.monotonic())))
        now = time.monotonic()
        t_report = time.perf_counter()
        times = _drain_backend(vc)
        if last_send is not None:
            times = [last_send] + times
        gaps = np.diff(times) if len(times) >= 2 else np.array([])
        long_at = [round(float(times[i + 1]) - t_start, 2) for i in np.flatnonzero(gaps > 2 * period)]
        passes = gcw.drain()
        if len(times):
            last_send = times[-1]
        window = args.every if not rows else now - rows[-1]["t"] - t_start
        sent = len(gaps)
        snap = session.snapshot()
        new_events = events[n_events:]
        n_events = len(events)
        row = {
            "t": now - t_start,
            "rss_mb": rss_mb(),
            "output_fps": snap["fps"].get("output", 0.0),
            "engine_fps": snap["fps"].get("engine", 0.0),
            "vcam_fps": sent / window if window > 0 else 0.0,
            "vcam_max_gap_ms": float(gaps.max() * 1000) if len(gaps) else None,
            "vcam_gaps_over_2": int((gaps > 2 * period).sum()),
            "preview_fps": previews["n"] / window if window > 0 else 0.0,
            "shed": snap["counters"].get("shed_capture", 0),
            "events": [f"{e.level}:{e.code}" for e in new_events],
            "gaps_at_s": long_at,
            "gc_full": sum(1 for _, g, _ in passes if g == 2),
            "gc_max_ms": max((ms for _, _, ms in passes), default=0.0),
        }
        previews.clear()
        alive = {t.name for t in threading.enumerate()}
        need = {"vcam-sender"} if args.sender_only else {"kf-capture", "kf-engine", "kf-output",
                                                         "vcam-sender"}
        row["threads_ok"] = need <= alive
        # This report runs with the GIL like any stats reader in the app (the
        # GUI's status line): its cost is printed so a gap at a report time
        # can be told from one the stream made.
        row["report_ms"] = (time.perf_counter() - t_report) * 1000.0
        rows.append(row)
        print(f"{row['t']:7.0f} s  rss {row['rss_mb']:7.1f} MB  out {row['output_fps']:5.1f} "
              f"fps  vcam {row['vcam_fps']:5.1f} fps  max gap "
              f"{row['vcam_max_gap_ms'] or 0:6.1f} ms  >2T {row['vcam_gaps_over_2']:3d}  "
              f"preview {row['preview_fps']:5.1f} fps  gc2 {row['gc_full']} max {row['gc_max_ms']:.0f} ms  "
              f"report {row['report_ms']:.1f} ms  "
              f"{' '.join(row['events'])}"
              f"{'  gaps at ' + ', '.join(f'{g:.1f}' for g in long_at) + ' s' if long_at else ''}",
              flush=True)


def _drain_backend(vc: MemoryVcam) -> list[float]:
    """The send times the backend recorded since the last call (emptied, so
    a long soak does not grow a list)."""
    if not vc.instances:
        return []
    inst = vc.instances[-1]
    with inst._lock:
        out, inst.send_times = inst.send_times, []
    return out


if __name__ == "__main__":
    raise SystemExit(main())
