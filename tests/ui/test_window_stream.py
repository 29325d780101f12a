"""The real window with the real session: the fetched clip stands in for the
webcam (through the same Services seam the camera uses), an in-memory
pyvirtualcam backend for the virtual-camera driver, real mediapipe, real
guide and paste-back. pytest-qt drives the widgets."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from PySide6.QtCore import Qt

from kf_desktop.errors import UserError
from kf_desktop.sources import SourceLost, VideoFileSource
from tests.ui.conftest import file_services
from ui.pause_frame import qimage_to_rgb

START_TIMEOUT = 60_000  # ms; the first start imports torch and loads mediapipe


def _flipped_portrait(portrait_path, tmp_path):
    out = tmp_path / "flipped.png"
    cv2.imwrite(str(out), cv2.imread(str(portrait_path))[:, ::-1])
    return out


def _click(qtbot, button):
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _wait_running(qtbot, ctl, timeout=START_TIMEOUT):
    """Wait for the stream to run; fail at once, with the banner's text, if
    it could not start (instead of waiting out the timeout)."""
    banners = ctl.window.banners
    # (a bool, not None: pytest-qt treats a callback returning None as an assertion)
    qtbot.waitUntil(lambda: ctl.bridge.state == "running"
                    or banners.banner("start_failed") is not None, timeout=timeout)
    failed = banners.banner("start_failed")
    assert failed is None, f"the stream did not start: {failed.message} ({failed.hint})"


def test_start_preview_vcam_switch_gains_pause_stop(qtbot, make_window, clip_path, mem_vcam,
                                                    portrait_path, tmp_path):
    ctl = make_window(file_services(clip_path, mem_vcam.name))
    w, bridge = ctl.window, ctl.bridge
    assert w.start_button.text() == "Start" and not w.pause_button.isEnabled()
    # probed at start-up, before streaming
    qtbot.waitUntil(lambda: w.vcam_status.text() == "Ready (kf-mem-cam)", timeout=10_000)

    # -- start: frames reach the preview and the virtual camera -------------
    _click(qtbot, w.start_button)
    assert w.start_button.text() == "Starting…"  # returned at once; the work is off-thread
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 15 and mem_vcam.instances
                    and mem_vcam.last.count >= 15, timeout=30_000)
    assert w.start_button.text() == "Stop"
    img = w.preview.current_image
    assert (img.width(), img.height()) == (640, 360)
    frame = mem_vcam.last.frames[-1]
    assert frame.shape == (360, 640, 3) and frame.mean() > 20  # the portrait, not black
    assert w.vcam_status.property("state") == "on" and "kf-mem-cam" in w.vcam_status.text()
    qtbot.waitUntil(lambda: "fps" in w.stats_label.text(), timeout=5_000)
    assert w.preview.fps() > 3 and w.preview.latency_ms() is not None
    assert "fps" in w.preview.overlay_text() and " ms" in w.preview.overlay_text()
    assert w.banners.codes() == []

    # -- switch portrait while running ----------------------------------------
    flipped = _flipped_portrait(portrait_path, tmp_path)
    shown = w.preview.frames_shown
    ctl.request_portrait(str(flipped))
    qtbot.waitUntil(lambda: w.portrait_picker.current == str(flipped), timeout=30_000)
    assert bridge.state == "running"
    assert ctl.settings.portrait == str(flipped)
    assert ctl.settings.recent_portraits[0] == str(flipped)
    assert w.banners.banner("portrait_switched").level == "info"  # a passing note
    qtbot.waitUntil(lambda: w.preview.frames_shown > shown + 10, timeout=10_000)

    # -- gains reach the running session ---------------------------------------
    w.gains_panel.sliders["head"].setValue(50)
    w.gains_panel.sliders["smoothing"].setValue(80)
    gains = bridge.session.config.gains
    assert (gains.head, gains.smoothing) == (0.5, 0.8)
    assert ctl.settings.gains["head"] == 0.5

    # -- output mirror is the virtual camera's, not the preview's ------------
    w.output_mirror_check.setChecked(True)
    assert mem_vcam.instances and bridge.vcam.stats()["mirror"] is True
    assert not w.preview.mirror or w.preview_mirror_check.isChecked()

    # -- privacy pause: the camera keeps sending, but a still --------------
    w.output_mirror_check.setChecked(False)
    _click(qtbot, w.pause_button)
    assert bridge.paused and w.pause_button.text() == "Resume"
    still = qimage_to_rgb(w.preview.current_image)
    assert still.shape == (360, 640, 3)
    cam = mem_vcam.last
    qtbot.waitUntil(lambda: np.array_equal(cam.frames[-1], still), timeout=5_000)
    sent = cam.count
    qtbot.waitUntil(lambda: cam.count > sent + 5, timeout=5_000)  # still sending (repeats)
    assert np.array_equal(cam.frames[-1], still)
    _click(qtbot, w.pause_button)
    assert not bridge.paused
    qtbot.waitUntil(lambda: not np.array_equal(cam.frames[-1], still), timeout=5_000)

    # -- stop ------------------------------------------------------------------
    _click(qtbot, w.start_button)
    qtbot.waitUntil(lambda: bridge.state == "stopped", timeout=15_000)
    assert cam.closed and w.start_button.text() == "Start"
    assert bridge.session is None
    problems = [c for c in w.banners.codes() if w.banners.banner(c).level != "info"]
    assert problems == []


def test_no_face_portrait_is_refused_and_previous_stays(qtbot, make_window, clip_path, mem_vcam,
                                                        tmp_path):
    ctl = make_window(file_services(clip_path, mem_vcam.name))
    w = ctl.window
    before = w.portrait_picker.current
    blank = tmp_path / "wall.png"
    yy, xx = np.mgrid[0:240, 0:320]
    cv2.imwrite(str(blank), np.dstack([xx % 256, yy % 256, (xx + yy) % 256]).astype(np.uint8))

    ctl.request_portrait(str(blank))
    qtbot.waitUntil(lambda: w.banners.banner("portrait_rejected") is not None, timeout=30_000)
    b = w.banners.banner("portrait_rejected")
    assert b.level == "error"
    assert "face" in b.message.lower()
    assert b.hint and "Choose another photo" in b.buttons
    assert w.portrait_picker.current == before
    assert ctl.bridge.portrait_path == before
    assert ctl.settings.portrait != str(blank)
    assert str(blank) not in ctl.settings.recent_portraits
    assert "was not used" in w.portrait_picker.status_label.text()


def test_no_camera_and_no_vcam_driver_banners_stream_still_runs(qtbot, make_window, clip_path):
    # No webcam, and the real pyvirtualcam with whatever driver this machine
    # has (none on CI: no v4l2loopback, no OBS).
    ctl = make_window(file_services(clip_path, None, cameras=[]))
    w, bridge = ctl.window, ctl.bridge
    qtbot.waitUntil(lambda: ctl.watcher.cameras == [], timeout=5_000)
    assert w.camera_combo.currentText() == "No camera found"
    # Before streaming, the probe already says the virtual camera is missing
    # (status + "How to install…"), without a banner yet.
    qtbot.waitUntil(lambda: w.vcam_status.property("state") in ("error", "off")
                    and w.vcam_status.text() != "Starts with the stream", timeout=10_000)
    if w.vcam_status.property("state") == "error":
        assert w.vcam_status.text() == "Not available" and w.vcam_fix_button.isVisible()
        assert w.banners.banner("vcam_missing") is None
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl)

    no_cam = w.banners.banner("no_camera")
    assert no_cam is not None and no_cam.level == "warning", w.banners.codes()
    assert "no camera" in no_cam.message.lower() and "Use microphone only" in no_cam.buttons
    assert "Use a video file…" in no_cam.buttons and "Video…" in no_cam.hint
    # The stream runs on idle motion: frames keep reaching the preview.
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 10, timeout=30_000)

    if bridge.vcam.is_open:
        pytest.skip("this machine has a virtual camera driver; the missing-driver banner "
                    "cannot be shown")
    vb = w.banners.banner("vcam_missing")
    assert vb is not None, w.banners.codes()
    assert "virtual camera" in vb.message.lower()
    assert "v4l2loopback" in vb.hint  # the Linux fix, with the command
    assert {"Copy fix", "Retry"} <= set(vb.buttons)
    assert w.vcam_status.property("state") == "error" and w.vcam_fix_button.isVisible()
    _click(qtbot, vb.buttons["Copy fix"])
    from PySide6.QtGui import QGuiApplication

    copied = QGuiApplication.clipboard().text()
    assert copied.startswith("sudo apt install v4l2loopback-dkms && sudo modprobe v4l2loopback")
    assert "then check" not in copied  # only the command

    # "Use microphone only" switches the mode and the stream goes on.
    _click(qtbot, no_cam.buttons["Use microphone only"])
    assert w.mode_combo.currentData() == "mic" and ctl.settings.mode == "mic"
    shown = w.preview.frames_shown
    qtbot.waitUntil(lambda: bridge.state == "running" and w.preview.frames_shown > shown + 10,
                    timeout=30_000)


class UnpluggedCamera:
    """The clip, 'unplugged' after ``lose_after`` frames and back after ``down_for`` s."""

    def __init__(self, path, lose_after: int = 15, down_for: float = 1.0) -> None:
        self._inner = VideoFileSource(path, realtime=True, loop=True)
        self.lose_after, self.down_for = lose_after, down_for
        self.reads = 0
        self.back_at: float | None = None

    def open(self) -> None:
        if self.back_at is not None and time.monotonic() < self.back_at:
            raise UserError("camera 0 not found", "plug it in")
        self._inner.open()

    def read(self):
        self.reads += 1
        if self.back_at is None and self.reads > self.lose_after:
            self.back_at = time.monotonic() + self.down_for
            raise SourceLost("Test clip camera stopped delivering frames",
                             "check the cable, then it reconnects by itself")
        return self._inner.read()

    def close(self) -> None:
        self._inner.close()

    fps = property(lambda self: self._inner.fps)
    size = property(lambda self: self._inner.size)
    name = property(lambda self: "Test clip camera")


def test_camera_unplugged_mid_stream_banner_and_stream_continues(qtbot, make_window, clip_path,
                                                                 mem_vcam):
    cams: list[UnpluggedCamera] = []

    def source(entry, opts):
        cams.append(UnpluggedCamera(clip_path))
        return cams[-1]

    ctl = make_window(file_services(clip_path, mem_vcam.name, source=source))
    w, bridge = ctl.window, ctl.bridge
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: w.banners.banner("source_lost") is not None, timeout=30_000)
    b = w.banners.banner("source_lost")
    assert b.level == "warning" and "stopped delivering" in b.message
    assert "Choose camera" in b.buttons
    # The avatar keeps streaming to the preview and the virtual camera.
    shown, sent = w.preview.frames_shown, mem_vcam.last.count
    qtbot.waitUntil(lambda: w.preview.frames_shown > shown + 10 and mem_vcam.last.count > sent + 10,
                    timeout=10_000)
    assert bridge.state == "running"
    # Plugged back in: the session reopens it and the banner goes away.
    qtbot.waitUntil(lambda: w.banners.banner("source_lost") is None, timeout=15_000)
    reads = cams[0].reads
    qtbot.waitUntil(lambda: cams[0].reads > reads + 5, timeout=5_000)  # reading again
    assert len(cams) == 1  # reopened by the session, not restarted by the window


def test_generator_and_gpu_unavailable_fall_back_with_banners(qtbot, make_window, clip_path,
                                                              mem_vcam, tmp_path):
    from ui.settings_store import SettingsStore

    ini = tmp_path / "gen.ini"
    store = SettingsStore.at(ini)
    store.out_size = (640, 360)
    store.generator, store.compute_device = "generator", "cuda"
    store.sync()

    def no_model(mode, device):
        raise UserError("no trained Knot Forcing weights in resources/models",
                        "run the training, or choose 'Guide only'")

    ctl = make_window(file_services(clip_path, mem_vcam.name, make_generator=no_model), ini)
    w, bridge = ctl.window, ctl.bridge
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 10, timeout=30_000)
    gb = w.banners.banner("generator_unavailable")
    assert gb is not None and "guide" in gb.message and "Use guide only" in gb.buttons
    import torch  # the test may; the window may not

    if not torch.cuda.is_available():
        db = w.banners.banner("device_fallback")
        assert db is not None and "CPU" in db.message
    _click(qtbot, gb.buttons["Use guide only"])  # switches the combo -> the session restarts
    assert w.generator_combo.currentData() == "guide" and ctl.settings.generator == "guide"
    shown = w.preview.frames_shown
    qtbot.waitUntil(lambda: bridge.state == "running" and w.preview.frames_shown > shown + 10,
                    timeout=30_000)


def test_microphone_only_mode_with_a_wav_backed_mic(qtbot, make_window, clip_path, mem_vcam,
                                                    tmp_path):
    """Mic only: no camera is opened, the speech drives the mouth, frames flow.
    A microphone that will not open costs only itself (banner, stream runs)."""
    from kf_desktop.audio.wav import WavSource
    from kf_desktop.data import data_path
    from kf_desktop.errors import DeviceError
    from ui.options import DeviceEntry
    from ui.settings_store import SettingsStore

    speech = data_path("librivox_0870.wav")
    mics = [DeviceEntry("speech", "Test speech mic"), DeviceEntry("broken", "Broken mic")]
    opened = {"cams": 0}

    def open_camera(entry, opts):
        opened["cams"] += 1
        return VideoFileSource(clip_path, realtime=True, loop=True)

    class BrokenMic:
        def open(self):
            raise DeviceError("microphone 'Broken mic' not found", "plug it in")

        def close(self):
            pass

    def open_mic(entry, opts):
        return WavSource(speech, realtime=True, loop=True) if entry.key == "speech" else BrokenMic()

    ini = tmp_path / "mic.ini"
    store = SettingsStore.at(ini)
    store.out_size, store.mode = (640, 360), "mic"
    store.sync()
    ctl = make_window(file_services(clip_path, mem_vcam.name, source=open_camera,
                                    list_microphones=lambda: list(mics), open_mic=open_mic), ini)
    w, bridge = ctl.window, ctl.bridge
    qtbot.waitUntil(lambda: w.mic_combo.count() == 2)
    assert not w.camera_combo.isEnabled() and w.mic_combo.isEnabled()
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 10, timeout=30_000)
    assert opened["cams"] == 0
    assert bridge.session.config.audio_factory is not None
    assert "audio" in bridge.session.snapshot()  # the session reads the microphone
    assert w.banners.codes() == [] or all(w.banners.banner(c).level == "info"
                                          for c in w.banners.codes())

    w.mic_combo.setCurrentIndex(1)  # the broken one: the session restarts without it
    qtbot.waitUntil(lambda: w.banners.banner("mic_failed") is not None, timeout=30_000)
    b = w.banners.banner("mic_failed")
    assert "without the microphone" in b.message and "Choose microphone" in b.buttons
    _wait_running(qtbot, ctl)
    shown = w.preview.frames_shown
    qtbot.waitUntil(lambda: w.preview.frames_shown > shown + 10, timeout=30_000)


def test_changing_camera_swaps_the_source_without_restarting(qtbot, make_window, clip_path,
                                                              mem_vcam):
    from kf_desktop.sources import VideoFileSource
    from tests.ui.conftest import TEST_CAMERA
    from ui.options import DeviceEntry

    other = DeviceEntry(1, "Second camera", "carphone")
    opened = []

    def open_camera(entry, opts):
        opened.append(entry.name)
        return VideoFileSource(clip_path, realtime=True, loop=True)

    ctl = make_window(file_services(clip_path, mem_vcam.name, cameras=[TEST_CAMERA, other],
                                    source=open_camera))
    w, bridge = ctl.window, ctl.bridge
    qtbot.waitUntil(lambda: w.camera_combo.count() == 2, timeout=10_000)
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl)
    session = bridge._session
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 5, timeout=30_000)
    idx = next(i for i in range(w.camera_combo.count())
               if w.camera_combo.itemText(i) == "Second camera")
    w.camera_combo.setCurrentIndex(idx)
    qtbot.waitUntil(lambda: any(e.code == "source_switched" for e in session.events()),
                    timeout=15_000)
    assert bridge._session is session  # the same stream: no restart
    assert opened[-1] == "Second camera"
    shown = w.preview.frames_shown
    qtbot.waitUntil(lambda: w.preview.frames_shown >= shown + 5, timeout=15_000)


def test_weights_that_only_make_non_finite_values_show_a_banner(qtbot, make_window, clip_path,
                                                                mem_vcam, tmp_path):
    """Issue 19 item 12: real NaN weights through the real engine; the window
    says the model failed (a warning banner) and the preview keeps showing
    the motion guide."""
    import torch  # the test may; the window may not

    from engine.config import get_preset
    from engine.weights import random_model, save_model
    from kf_desktop.generators import make_generator
    from ui.settings_store import SettingsStore

    model, _ = random_model(get_preset("tiny").model, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_model(model, tmp_path / "nan", trained=True)
    ini = tmp_path / "nan.ini"
    store = SettingsStore.at(ini)
    store.out_size = (640, 360)
    store.generator, store.compute_device = "generator", "cpu"
    store.sync()
    ctl = make_window(file_services(clip_path, mem_vcam.name,
                                    make_generator=lambda mode, device: make_generator(
                                        "generator", "cpu", weights=tmp_path / "nan")), ini)
    w = ctl.window
    _click(qtbot, w.start_button)
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: w.banners.banner("nonfinite_recovered") is not None, timeout=60_000)
    b = w.banners.banner("nonfinite_recovered")
    assert b.level == "warning" and "non-finite" in b.message, (b.level, b.message)
    shown = w.preview.frames_shown
    qtbot.waitUntil(lambda: w.preview.frames_shown > shown + 10, timeout=30_000)
