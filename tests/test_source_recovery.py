"""A source that fails is a lost source, reopened with back-off, and said
once: a real looping video file that disappears for a few seconds (a network
share reconnecting), and a real file source whose reads keep failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kf_desktop.face import FaceAnalyzer
from kf_desktop.portrait import load_portrait
from kf_desktop.session import Session, SessionConfig
from kf_desktop.sinks import NullSink
from kf_desktop.sources import VideoFileSource
from tests.waiting import wait_for as _wait_for

REPO = Path(__file__).resolve().parents[1]
OUT = (320, 180)
needs_ffmpeg = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg")


@pytest.fixture(scope="module")
def portrait(portrait_path):
    with FaceAnalyzer(static=True, max_faces=2) as fa:
        return load_portrait(portrait_path, fa)


@pytest.fixture
def short_clip(data_file, tmp_path):
    """1 s of the test clip: it loops every second."""
    clip = tmp_path / "share" / "clip.mp4"
    clip.parent.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(data_file("cap13_edit2.mp4")),
                    "-t", "1", "-vf", "scale=320:-2", "-c:v", "libx264", "-an", str(clip)],
                   check=True)
    return clip


def _codes(s):
    return [e.code for e in s.events()]


@needs_ffmpeg
def test_a_looping_video_that_disappears_for_a_while_is_reopened(portrait, short_clip):
    """It used to end as "the driving video ended": idle motion for the rest
    of the run although the file was back."""
    made: list[VideoFileSource] = []

    def factory():
        made.append(VideoFileSource(short_clip, realtime=True, loop=True))
        return made[-1]

    away = short_clip.with_name(".away.mp4")
    cfg = SessionConfig(portrait=portrait, out_size=OUT, source_factory=factory,
                        reopen_interval=0.5)
    with Session(cfg, [NullSink()]) as s:
        assert _wait_for(lambda: made[0].loops >= 1)
        os.rename(short_clip, away)  # the share drops
        assert _wait_for(lambda: "source_lost" in _codes(s), timeout=10)
        assert not s.snapshot()["source_ok"]
        time.sleep(4.0)
        os.rename(away, short_clip)  # and is back
        assert _wait_for(lambda: "source_restored" in _codes(s), timeout=20), s.events()
        assert s.snapshot()["source_ok"]
        assert _wait_for(lambda: s.snapshot()["fps"].get("source", 0) > 5)
    codes = _codes(s)
    assert "source_ended" not in codes, s.events()
    assert codes.count("source_lost") == 1, s.events()
    lost = next(e for e in s.events() if e.code == "source_lost")
    assert "clip.mp4" in lost.message and "looped" in lost.message, lost


class FailingReads:
    """A real file source that opens fine but whose every read fails (a
    camera whose driver returns an error for each buffer)."""

    def __init__(self, path) -> None:
        self._inner = VideoFileSource(path, realtime=True, loop=True)
        self.opens = 0
        self.open_times: list[float] = []

    def open(self):
        self.opens += 1
        self.open_times.append(time.monotonic())
        self._inner.open()

    def read(self):
        raise OSError(5, "Input/output error")

    def close(self):
        self._inner.close()

    fps = property(lambda self: self._inner.fps)
    size = property(lambda self: self._inner.size)
    name = property(lambda self: "camera 0")


@needs_ffmpeg
def test_a_source_whose_read_keeps_failing_is_reported_once_then_still_trying(portrait,
                                                                               short_clip):
    """It used to repeat its warning at every retry (every 2 s, for ever)."""
    src = FailingReads(short_clip)
    cfg = SessionConfig(portrait=portrait, out_size=OUT, source_factory=lambda: src,
                        reopen_interval=0.1)
    s = Session(cfg, [NullSink()])
    s.STILL_TRYING_S = 2.0
    with s:
        time.sleep(7.0)
    codes = _codes(s)
    assert codes.count("source_lost") == 1, s.events()
    assert 1 <= codes.count("source_retrying") <= 3, s.events()
    retry = next(e for e in s.events() if e.code == "source_retrying")
    assert retry.level == "info" and "still trying" in retry.message
    gaps = [b - a for a, b in zip(src.open_times, src.open_times[1:])]
    assert len(gaps) >= 4 and max(gaps) > 3 * min(gaps), gaps  # it backs off


@needs_ffmpeg
def test_run_says_it_in_its_own_words_when_the_video_is_gone(portrait_path, short_clip):
    """The reproduction through the real command: no raw OpenCV lines."""
    away = short_clip.with_name(".away.mp4")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("KF_DEBUG", None)
    env.pop("OPENCV_LOG_LEVEL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kf_desktop", "run", "--video", str(short_clip), "--no-vcam",
         "--seconds", "14", "--size", "320x180", "--mode", "guide", "--device", "cpu",
         "--portrait", str(portrait_path)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        assert _wait_for(lambda: any(line.startswith("out ") for line in lines), timeout=240)
        time.sleep(1.5)
        os.rename(short_clip, away)
        time.sleep(4.0)
        os.rename(away, short_clip)
        proc.wait(timeout=120)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = "".join(lines)
    assert proc.returncode == 0, log
    assert "[ WARN" not in log and "[ERROR" not in log and "global cap" not in log, log
    assert "the driving video ended" not in log, log
    assert log.count("could not be read again") == 1, log
    assert "clip.mp4 is back" in log, log
