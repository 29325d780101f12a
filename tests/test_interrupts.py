"""Two quick Ctrl-C during `run --record` (the documented "give up at once")
keep what was recorded under a visible ``.partial.mp4`` name and say so;
a real `kf-desktop` process, real signals, a real ffmpeg."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_sinks import _probe
from tests.test_stalled_sink import _children, _comm

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(os.name != "posix" or not shutil.which("ffprobe"),
                    reason="needs ffmpeg and POSIX signals")
def test_two_quick_ctrl_c_keep_the_recording_as_partial(data_file, portrait_path, tmp_path):
    out = tmp_path / "rec.mp4"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kf_desktop", "run", "--video", str(data_file("cap13_edit2.mp4")),
         "--no-vcam", "--record", str(out), "--size", "320x180", "--mode", "guide",
         "--device", "cpu", "--portrait", str(portrait_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        t_end = time.monotonic() + 240
        while not list(tmp_path.glob(".rec.*.tmp.mp4")) and time.monotonic() < t_end:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        time.sleep(5.0)  # a few seconds (two 2 s fragments) recorded
        # The encoder is made slow to finish (SIGSTOP), so the first Ctrl-C's
        # stop() is still waiting on it when the second one gives up; an
        # encoder that finishes within 50 ms would leave a complete rec.mp4
        # instead (the other branch of _keep_recordings).
        ffmpeg = [c for c in _children(proc.pid) if _comm(c) == "ffmpeg"]
        assert ffmpeg, "no ffmpeg child"
        os.kill(ffmpeg[0], signal.SIGSTOP)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        log, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, log
    assert "Traceback" not in log, log
    partial = tmp_path / "rec.partial.mp4"
    assert str(partial) in log and "interrupted" in log, log
    n, err = _probe(partial)
    assert err == "" and n >= 30, (n, err, log)
    assert [p.name for p in tmp_path.iterdir()] == ["rec.partial.mp4"], list(tmp_path.iterdir())
