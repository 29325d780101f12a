"""The live session with real components: a real clip through real mediapipe,
the guide, paste-back and a real pyvirtualcam.Camera on an in-memory backend."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from kf_desktop.errors import UserError
from kf_desktop.face import FaceAnalyzer
from kf_desktop.portrait import load_portrait
from kf_desktop.session import Session, SessionConfig
from kf_desktop.sinks import NullSink, VirtualCameraSink
from kf_desktop.sources import SourceLost, VideoFileSource
from tests.helpers_vcam import mem_vcam  # noqa: F401  (fixture)

OUT = (320, 180)


@pytest.fixture(scope="module")
def portrait(portrait_path):
    with FaceAnalyzer(static=True, max_faces=2) as fa:
        return load_portrait(portrait_path, fa)


class FlakySource:
    """A real VideoFileSource that 'unplugs' after ``lose_after`` frames and
    refuses to reopen until ``back_at`` (monotonic time), like a USB camera
    pulled out and plugged back in."""

    def __init__(self, path, lose_after: int, down_for: float) -> None:
        self._inner = VideoFileSource(path, realtime=True, loop=True)
        self.lose_after = lose_after
        self.down_for = down_for
        self.reads = 0
        self.back_at = None
        self.opens = 0
        self.closed = 0

    def open(self):
        if self.back_at is not None and time.monotonic() < self.back_at:
            raise UserError("camera 0 not found", "plug it in")
        self.opens += 1
        self._inner.open()

    def read(self):
        self.reads += 1
        if self.back_at is None and self.reads > self.lose_after:
            self.back_at = time.monotonic() + self.down_for
            raise SourceLost("camera 0 stopped delivering frames", "reconnect it")
        return self._inner.read()

    def close(self):
        self.closed += 1
        self._inner.close()

    fps = property(lambda self: self._inner.fps)
    size = property(lambda self: self._inner.size)
    name = property(lambda self: "flaky camera")


def _wait_for(pred, timeout=20.0, step=0.05):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(step)
    return False


def _kf_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("kf-") and t.is_alive()]


def test_start_stream_stop(portrait, data_file, mem_vcam):
    clip = data_file("cap13_edit2.mp4")
    vcam = VirtualCameraSink(*OUT, fps=30, backend=mem_vcam.name)
    null = NullSink()
    cfg = SessionConfig(portrait=portrait, out_size=OUT,
                        source_factory=lambda: VideoFileSource(clip, realtime=True, loop=True))
    session = Session(cfg, [vcam, null])
    session.start()
    try:
        assert _wait_for(lambda: null.stats()["frames"] >= 20), session.snapshot()
        snap = session.snapshot()
    finally:
        session.stop()
    assert not _kf_threads()
    cam = mem_vcam.last
    assert cam.closed and cam.count > 0
    assert cam.frames[-1].shape == (OUT[1], OUT[0], 3)
    for stage in ("capture", "face", "guide", "paste", "output", "latency"):
        assert snap["ms"][stage]["p50"] > 0, stage
    assert snap["fps"]["output"] > 5
    # The avatar is not a black frame: the portrait is letterboxed into it.
    assert cam.frames[-1].mean() > 20
    codes = [e.code for e in session.events()]
    assert codes[0] == "started" and codes[-1] == "stopped"


def test_source_lost_keeps_output_running_and_recovers(portrait, data_file, mem_vcam):
    src = FlakySource(data_file("cap13_edit2.mp4"), lose_after=10, down_for=1.5)
    vcam = VirtualCameraSink(*OUT, fps=30, backend=mem_vcam.name)
    null = NullSink()
    cfg = SessionConfig(portrait=portrait, out_size=OUT, source_factory=lambda: src,
                        reopen_interval=0.5)
    session = Session(cfg, [vcam, null])
    session.start()
    try:
        assert _wait_for(lambda: any(e.code == "source_lost" for e in session.events()))
        n0 = null.stats()["frames"]
        time.sleep(0.8)  # camera is unplugged: the engine keeps producing frames
        assert null.stats()["frames"] - n0 >= 10
        assert not session.snapshot()["source_ok"]
        assert _wait_for(lambda: any(e.code == "source_restored" for e in session.events()))
        reads = src.reads
        assert _wait_for(lambda: src.reads > reads + 5)
    finally:
        session.stop()
    lost = next(e for e in session.events() if e.code == "source_lost")
    assert lost.level == "warning" and "stopped delivering" in lost.message
    assert src.opens >= 2 and src.closed >= 2
    assert not _kf_threads()


def test_switch_portrait_while_running(portrait, portrait_path, data_file, tmp_path):
    flipped = tmp_path / "flipped.png"
    img = cv2.imread(str(portrait_path))
    cv2.imwrite(str(flipped), img[:, ::-1])
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300, 3), 200, np.uint8))

    null = NullSink()
    clip = data_file("cap13_edit2.mp4")
    cfg = SessionConfig(portrait=portrait, out_size=OUT,
                        source_factory=lambda: VideoFileSource(clip, realtime=True, loop=True))
    session = Session(cfg, [null])
    session.start()
    try:
        assert _wait_for(lambda: null.stats()["frames"] >= 5)
        before = session._renderer.portrait
        done = []
        session.switch_portrait(flipped, on_done=done.append).join(30)
        assert done == [None]
        n = null.stats()["frames"]
        assert _wait_for(lambda: session._renderer.portrait is not before)
        assert _wait_for(lambda: null.stats()["frames"] > n + 5)  # still streaming
        switched = session._renderer.portrait
        # The face moved to the mirrored side of the photo.
        assert switched.crop_box.x0 != pytest.approx(before.crop_box.x0, abs=5)

        session.switch_portrait(blank, on_done=done.append).join(30)
        assert isinstance(done[-1], UserError)
        time.sleep(0.2)
        assert session._renderer.portrait is switched  # the previous one stays
    finally:
        session.stop()
    codes = [e.code for e in session.events()]
    assert "portrait_switched" in codes and "portrait_rejected" in codes


def test_start_failure_releases_everything(portrait, tmp_path, mem_vcam):
    vcam = VirtualCameraSink(*OUT, fps=30, backend=mem_vcam.name)
    cfg = SessionConfig(portrait=portrait, out_size=OUT,
                        source_factory=lambda: VideoFileSource(tmp_path / "missing.mp4"))
    session = Session(cfg, [vcam])
    with pytest.raises(UserError):
        session.start()
    assert not session.running and not _kf_threads()
    assert not mem_vcam.instances  # the sink was never opened


def test_no_source_runs_idle(portrait):
    null = NullSink()
    session = Session(SessionConfig(portrait=portrait, out_size=OUT), [null])
    with session:
        assert _wait_for(lambda: null.stats()["frames"] >= 10)
    assert not _kf_threads()


def test_pause_closes_the_camera_and_resume_reopens(portrait, data_file):
    src = FlakySource(data_file("cap13_edit2.mp4"), lose_after=10**9, down_for=0)
    null = NullSink()
    cfg = SessionConfig(portrait=portrait, out_size=OUT, source_factory=lambda: src)
    with Session(cfg, [null]) as s:
        assert _wait_for(lambda: null.stats()["frames"] >= 5)
        s.set_paused(True)
        assert _wait_for(lambda: src.closed >= 1)
        time.sleep(0.3)
        n, reads = null.stats()["frames"], src.reads
        time.sleep(0.5)
        assert src.reads == reads and null.stats()["frames"] <= n + 2  # camera off, engine idle
        s.set_paused(False)
        assert _wait_for(lambda: src.opens >= 2 and null.stats()["frames"] > n + 5)
    assert [e.code for e in s.events()].count("paused") == 1


def test_switch_source_without_restart(portrait, data_file, tmp_path):
    clip = data_file("cap13_edit2.mp4")
    first = FlakySource(clip, lose_after=10**9, down_for=0)
    second = FlakySource(data_file("carphone_pristine.mp4"), lose_after=10**9, down_for=0)
    null = NullSink()
    cfg = SessionConfig(portrait=portrait, out_size=OUT, source_factory=lambda: first)
    with Session(cfg, [null]) as s:
        assert _wait_for(lambda: first.reads >= 5)
        s.switch_source(lambda: second)
        assert _wait_for(lambda: second.reads >= 5)
        assert first.closed >= 1
        n = null.stats()["frames"]
        s.switch_source(lambda: VideoFileSource(tmp_path / "missing.mp4"))
        assert _wait_for(lambda: any(e.code == "source_failed" for e in s.events()))
        assert _wait_for(lambda: null.stats()["frames"] > n + 10)  # still streaming (idle)
        assert second.closed >= 1
    assert s.running is False
