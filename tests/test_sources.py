"""Frame sources on real clips; the camera path on a camera-less machine."""

from __future__ import annotations

import glob
import os
import time

import cv2
import numpy as np
import pytest

from kf_desktop.errors import DeviceError, UserError
from kf_desktop.frames import Frame
from kf_desktop.sources import (CameraInfo, CameraSource, FrameSource, SourceLost,
                                VideoFileSource, list_cameras)

CLIP = "cap13_edit2.mp4"  # 400x300, 25 fps, 765 frames
SHORT = "carphone_pristine.mp4"  # 176x144, 29.97 fps, ~4 s


def test_file_source_frames(data_file):
    path = data_file(CLIP)
    src = VideoFileSource(path, realtime=False)
    assert isinstance(src, FrameSource)
    with src:
        assert src.size == (400, 300)
        assert src.fps == pytest.approx(25.0)
        assert src.name == CLIP
        f = src.read()
        assert isinstance(f, Frame) and f.index == 0
        assert f.image.shape == (300, 400, 3) and f.image.dtype == np.uint8
        assert f.image.flags["C_CONTIGUOUS"]
        # RGB, not OpenCV's BGR
        ok, bgr = cv2.VideoCapture(str(path)).read()
        assert ok
        np.testing.assert_array_equal(f.image, bgr[:, :, ::-1])
    assert src.read() is None  # closed
    src.close()  # idempotent


def test_realtime_pacing(data_file):
    path = data_file(CLIP)
    with VideoFileSource(path, realtime=True) as src:
        t0 = time.monotonic()
        frames = [src.read() for _ in range(25)]
        realtime_s = time.monotonic() - t0
    assert 0.9 <= realtime_s <= 1.3, realtime_s
    ts = np.array([f.timestamp for f in frames])
    gaps = np.diff(ts)
    assert np.all(gaps > 0)
    assert np.median(gaps) == pytest.approx(0.04, abs=0.008)
    assert [f.index for f in frames] == list(range(25))

    with VideoFileSource(path, realtime=False) as src:
        t0 = time.monotonic()
        for _ in range(25):
            assert src.read() is not None
        fast_s = time.monotonic() - t0
    assert fast_s < realtime_s / 3, (fast_s, realtime_s)


def test_realtime_late_consumer_gets_frames_at_once(data_file):
    # A consumer slower than the file gets every frame immediately (nothing dropped).
    with VideoFileSource(data_file(CLIP), realtime=True) as src:
        src.read()
        time.sleep(0.2)  # 5 frame intervals late
        t0 = time.monotonic()
        f = src.read()
        assert time.monotonic() - t0 < 0.02
        assert f.index == 1


def test_end_of_stream_and_loop(data_file):
    path = data_file(SHORT)
    with VideoFileSource(path, realtime=False) as src:
        assert src.size == (176, 144)
        assert src.fps == pytest.approx(29.97, abs=0.01)
        n = 0
        while src.read() is not None:
            n += 1
        assert n == src.frame_count > 100
        assert src.read() is None

    with VideoFileSource(path, realtime=False, loop=True, max_frames=n + 40) as src:
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == n + 40 > n  # looped past the end, capped by max_frames
    assert src.loops == 1
    assert [f.index for f in frames] == list(range(n + 40))
    ts = [f.timestamp for f in frames]
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    # after the restart the first frame of the file comes again
    for k in range(5):
        np.testing.assert_array_equal(frames[n + k].image, frames[k].image)


def test_max_frames(data_file):
    with VideoFileSource(data_file(CLIP), realtime=False, max_frames=5) as src:
        assert len([f for f in iter(src.read, None)]) == 5


def test_missing_file(tmp_path):
    with pytest.raises(UserError) as ei:
        VideoFileSource(tmp_path / "nope.mp4").open()
    assert "not found" in ei.value.message and "nope.mp4" in ei.value.message
    assert ei.value.hint


def test_garbage_file(tmp_path):
    p = tmp_path / "garbage.mp4"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(UserError) as ei:
        VideoFileSource(p).open()
    assert "garbage.mp4" in ei.value.message
    assert "not a video" in ei.value.message or "corrupt" in ei.value.message


def test_empty_file_and_folder(tmp_path):
    p = tmp_path / "empty.mp4"
    p.write_bytes(b"")
    with pytest.raises(UserError, match="empty"):
        VideoFileSource(p).open()
    with pytest.raises(UserError, match="folder"):
        VideoFileSource(tmp_path).open()


def test_truncated_mp4(data_file, tmp_path):
    # The first 20 KB hold the moov box and a few frames: FFmpeg opens it and
    # decodes 7 frames, so only the container check catches it.
    p = tmp_path / "cut.mp4"
    p.write_bytes(data_file(CLIP).read_bytes()[:20_000])
    with pytest.raises(UserError) as ei:
        VideoFileSource(p).open()
    assert "truncated" in ei.value.message and "cut.mp4" in ei.value.message


def test_missing_camera():
    if os.path.exists("/dev/video7"):
        pytest.skip("this machine has a /dev/video7")
    src = CameraSource(index=7)
    with pytest.raises(DeviceError) as ei:
        src.open()
    msg = str(ei.value)
    assert "camera 7 not found" in msg
    assert "available cameras:" in msg
    assert "kf-desktop doctor" in ei.value.hint
    src.close()  # safe after a failed open


def test_list_cameras_here():
    cams = list_cameras()
    assert isinstance(cams, list)
    if not glob.glob("/dev/video*"):
        assert cams == []


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="sysfs enumeration is Linux-only")
def test_list_cameras_sysfs_layout(tmp_path):
    # Same layout as /sys/class/video4linux: a UVC camera has a capture node
    # (index 0) and a metadata node (index 1); our own loopback is excluded.
    def node(n, name, index=None):
        d = tmp_path / f"video{n}"
        d.mkdir()
        (d / "name").write_text(name + "\n")
        if index is not None:
            (d / "index").write_text(f"{index}\n")

    node(0, "Integrated Camera: Integrated C", 0)
    node(1, "Integrated Camera: Integrated C", 1)
    node(4, "kf-desktop", 0)
    node(10, "USB Cam")
    cams = list_cameras(sysfs_root=str(tmp_path))
    assert cams == [CameraInfo(0, "Integrated Camera: Integrated C", "/dev/video0"),
                    CameraInfo(10, "USB Cam", "/dev/video10")]


class _FileBackedCamera(CameraSource):
    """The real CameraSource logic on a cv2.VideoCapture that reads a file
    (no webcam on CI): format requests are refused, reads end at EOF."""

    def __init__(self, path, **kw):
        super().__init__(0, **kw)
        self._path = str(path)

    def _open_capture(self):
        return cv2.VideoCapture(self._path)


def test_camera_logic_on_file_capture(data_file):
    path = data_file(SHORT)
    cam = _FileBackedCamera(path, size=(1280, 720), fps=30, max_failures=3, timeout_s=1.0)
    with cam:
        assert cam.size == (176, 144)  # what the "device" granted, not what was asked
        frames = []
        for _ in range(12):
            frames.append(cam.read())
            time.sleep(0.05)  # a consumer at ~20 fps: that is the delivered rate
        assert cam.fps == pytest.approx(20, rel=0.25)
        f = frames[3]
        assert f.image.shape == (144, 176, 3) and f.image.dtype == np.uint8
        ts = [fr.timestamp for fr in frames]
        assert all(b > a for a, b in zip(ts, ts[1:]))
        assert [fr.index for fr in frames] == list(range(12))
        ok, bgr = cv2.VideoCapture(str(path)).read()
        np.testing.assert_array_equal(frames[0].image, bgr[:, :, ::-1])
        # the "device" runs dry: consecutive failed reads -> SourceLost
        with pytest.raises(SourceLost) as ei:
            while True:
                cam.read()
        assert isinstance(ei.value, DeviceError)
        assert "stopped delivering" in ei.value.message
    assert cam.read() is None  # closed
    cam.close()
