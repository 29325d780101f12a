"""A recorder whose ffmpeg child stops reading (a real ffmpeg stopped with
SIGSTOP: what a hung network share, a sleeping USB disk or an encoder that
falls behind does) holds up no other output, is taken out with an event that
names what was kept, and neither ``stop()`` nor SIGTERM waits on it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from kf_desktop.errors import UserError
from kf_desktop.face import FaceAnalyzer
from kf_desktop.portrait import load_portrait
from kf_desktop.session import Session, SessionConfig
from kf_desktop.sinks import NullSink, RecorderSink
from tests.test_sinks import _probe
from tests.waiting import wait_for as _wait_for
from tests.waiting import kf_threads as _kf_threads

REPO = Path(__file__).resolve().parents[1]
OUT = (320, 180)

pytestmark = pytest.mark.skipif(
    os.name != "posix" or not (shutil.which("ffmpeg") and shutil.which("ffprobe")),
    reason="needs ffmpeg, ffprobe and POSIX signals")


@pytest.fixture(scope="module")
def portrait(portrait_path):
    with FaceAnalyzer(static=True, max_faces=2) as fa:
        return load_portrait(portrait_path, fa)


def _resume(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _catch(fn, raised: list) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the test looks at it
        raised.append(e)


def test_recorder_stop_is_bounded_when_ffmpeg_is_stopped(tmp_path):
    """stop() used to close ffmpeg's stdin and wait for ever."""
    rec = RecorderSink(tmp_path / "out.mp4", *OUT, 30)
    rec.STOP_GRACE_S = 1.0
    rec.start()
    pid = rec._proc.pid
    rng = np.random.default_rng(0)
    try:
        for _ in range(150):  # 5 s: two complete 2 s fragments
            rec.submit(rng.integers(0, 255, (OUT[1], OUT[0], 3), np.uint8), 0.0)
        time.sleep(1.0)  # let ffmpeg write what it has
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        raised: list[BaseException] = []
        stopper = threading.Thread(target=lambda: _catch(rec.stop, raised), daemon=True)
        stopper.start()
        stopper.join(15.0)
        took = time.monotonic() - t0
        assert not stopper.is_alive(), "stop() blocked on the stopped ffmpeg"
    finally:
        _resume(pid)
    assert took < 6.0, took
    assert not _alive(pid)
    assert len(raised) == 1 and isinstance(raised[0], UserError), raised
    msg = raised[0].message
    assert "did not finish" in msg and "out.partial.mp4" in msg, msg
    n, err = _probe(tmp_path / "out.partial.mp4")
    assert err == "" and n >= 30, (n, err)
    assert not (tmp_path / "out.mp4").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.partial.mp4"]


def test_a_stalled_recorder_does_not_freeze_the_other_outputs(portrait, tmp_path):
    rec = RecorderSink(tmp_path / "call.mp4", *OUT, 30, realtime=True)
    null = NullSink()
    cfg = SessionConfig(portrait=portrait, out_size=OUT, sink_stall_timeout=2.0)
    s = Session(cfg, [rec, null])
    s.start()
    pid = rec._proc.pid
    try:
        # 4 s written: at least one complete fragment (a keyframe every 2 s)
        assert _wait_for(lambda: rec.stats()["frames_written"] >= 130, timeout=60)
        time.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        n0 = null.stats()["frames"]
        t0 = time.monotonic()
        assert _wait_for(lambda: any(e.code == "sink_stalled" for e in s.events()), timeout=20)
        assert null.stats()["frames"] - n0 >= 5  # the rest kept streaming meanwhile
        assert _wait_for(lambda: any(e.code == "sink_removed" for e in s.events()), timeout=20)
        n1 = null.stats()["frames"]
        assert _wait_for(lambda: null.stats()["frames"] >= n1 + 10)
        t_stop = time.monotonic()
        s.stop()
        took = time.monotonic() - t_stop
    finally:
        _resume(pid)
        s.stop()
    assert took < 5.0, took
    assert not _alive(pid)
    assert not _kf_threads(), _kf_threads()
    stalled = next(e for e in s.events() if e.code == "sink_stalled")
    assert stalled.level == "warning" and "the recording" in stalled.message
    removed = next(e for e in s.events() if e.code == "sink_removed")
    assert "call.partial.mp4" in removed.message, removed
    n, err = _probe(tmp_path / "call.partial.mp4")
    assert err == "" and n >= 30, (n, err)
    assert time.monotonic() - t0 < 60
    codes = [e.code for e in s.events()]
    assert codes[-1] == "stopped" and "threads_hung" not in codes, codes


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_sigterm_ends_run_record_while_ffmpeg_is_stopped(data_file, portrait_path, tmp_path):
    """The reproduction: `run --video CLIP --record out.mp4`, `kill -STOP` the
    ffmpeg child, then `kill` the app. It used to keep running (SIGTERM
    ignored for 30 s+) and end with a RuntimeError traceback."""
    out = tmp_path / "out.mp4"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kf_desktop", "run", "--video", str(data_file("cap13_edit2.mp4")),
         "--no-vcam", "--record", str(out), "--size", "320x180", "--mode", "guide",
         "--device", "cpu", "--portrait", str(portrait_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ffmpeg = None
    try:
        t_end = time.monotonic() + 240
        while ffmpeg is None and time.monotonic() < t_end and proc.poll() is None:
            ffmpeg = next((c for c in _children(proc.pid) if _comm(c) == "ffmpeg"), None)
            time.sleep(0.2)
        assert ffmpeg is not None, "no ffmpeg child appeared"
        tmp = None
        while tmp is None and time.monotonic() < t_end:
            tmp = next((p for p in tmp_path.glob(".out.*.tmp.mp4") if p.stat().st_size > 0), None)
            time.sleep(0.2)
        time.sleep(5.0)  # a few seconds recorded
        os.kill(ffmpeg, signal.SIGSTOP)
        time.sleep(1.0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if ffmpeg is not None:
            _resume(ffmpeg)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 20.0, (took, log)
    assert "Traceback" not in log and "RuntimeError" not in log, log
    assert proc.returncode == 2, log  # the recording was not finished as asked
    assert "out.partial.mp4" in log, log
    assert not _alive(ffmpeg)
    n, err = _probe(tmp_path / "out.partial.mp4")
    assert err == "" and n >= 30, (n, err, log)
    assert not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())
