"""Issue 13 item 15: without a webcam the window can still be driven. The
fetched demo clip and any video file the user picks are offered as cameras
and drive the real session like `kf-desktop run --video` (real time,
looping, real mediapipe)."""

from __future__ import annotations

import shutil

from kf_desktop.sources import VideoFileSource
from tests.ui.conftest import file_services
from tests.ui.test_window_stream import START_TIMEOUT, _click, _wait_running


def _recording_open_video(opened: list):
    def open_video(path, opts):
        opened.append(path)
        return VideoFileSource(path, realtime=True, loop=True)
    return open_video


def test_no_webcam_the_demo_clip_is_offered_and_drives_the_avatar(qtbot, make_window, clip_path,
                                                                  mem_vcam):
    opened: list = []
    svc = file_services(clip_path, mem_vcam.name, cameras=[], demo_clip=lambda: str(clip_path),
                        open_video=_recording_open_video(opened))
    ctl = make_window(svc)
    w = ctl.window
    qtbot.waitUntil(lambda: w.camera_combo.selected() is not None
                    and w.camera_combo.selected().name == f"Demo clip ({clip_path.name})",
                    timeout=10_000)
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl, START_TIMEOUT)
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 15, timeout=30_000)
    assert [str(p) for p in opened] == [str(clip_path)]
    assert "no_camera" not in w.banners.codes()
    snap = ctl.bridge.snapshot()
    assert snap["source_ok"] and snap["fps"].get("capture", 0) > 3


def test_a_chosen_video_becomes_the_camera_and_is_remembered(qtbot, make_window, clip_path,
                                                             mem_vcam, tmp_path):
    video = tmp_path / "my talk.mp4"
    shutil.copy(clip_path, video)
    opened: list = []
    svc = file_services(clip_path, mem_vcam.name, demo_clip=lambda: None,
                        open_video=_recording_open_video(opened))
    ini = tmp_path / "kf.ini"
    ctl = make_window(svc, ini)
    w = ctl.window
    w.mode_combo.setCurrentIndex(w.mode_combo.findData("mic"))  # no camera in use
    qtbot.waitUntil(lambda: w.camera_combo.count() == 1, timeout=10_000)  # the test camera
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl, START_TIMEOUT)

    ctl.use_video(str(video))  # what the "Video…" button does after its file dialog
    assert w.camera_combo.selected().name == "Video: my talk.mp4"
    assert w.mode_combo.currentData() == "webcam+mic"  # a mode that uses the camera
    qtbot.waitUntil(lambda: str(video) in [str(p) for p in opened], timeout=START_TIMEOUT)
    _wait_running(qtbot, ctl, START_TIMEOUT)
    qtbot.waitUntil(lambda: ctl.bridge.snapshot().get("source_ok"), timeout=30_000)
    ctl.shutdown()

    ctl2 = make_window(svc, ini)
    w2 = ctl2.window
    qtbot.waitUntil(lambda: w2.camera_combo.count() == 2, timeout=10_000)
    assert w2.camera_combo.selected().name == "Video: my talk.mp4"
    assert w2.camera_combo.selected().key.path == str(video)
