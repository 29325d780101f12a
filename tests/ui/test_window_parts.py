"""The window without a running stream: settings, hotkeys, banners, device
pickers, diagnostics, the preview hand-off, and the import rule."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage
from PySide6.QtWidgets import QFrame

from tests.ui.conftest import REPO, TEST_CAMERA, file_services
from ui.banner import BannerArea
from ui.device_pickers import DeviceCombo, DeviceWatcher
from ui.options import DeviceEntry
from ui.pause_frame import make_pause_still, qimage_to_rgb
from ui.session_bridge import SessionBridge
from ui.settings_store import SettingsStore
from ui.vcam_slot import VcamSlot


# -- settings -------------------------------------------------------------------
def test_settings_survive_a_restart(qtbot, make_window, clip_path, portrait_path, tmp_path):
    ini = tmp_path / "kf.ini"
    cams = [DeviceEntry(0, "Cam A"), DeviceEntry(2, "Cam B")]
    mics = [DeviceEntry("USB Mic", "USB Mic"), DeviceEntry("Built-in", "Built-in")]
    svc = file_services(clip_path, None, cameras=cams, list_microphones=lambda: list(mics))
    ctl = make_window(svc, ini)
    w = ctl.window
    qtbot.waitUntil(lambda: w.camera_combo.count() == 2 and w.mic_combo.count() == 2)
    w.camera_combo.setCurrentIndex(1)
    w.mic_combo.setCurrentIndex(1)
    w.mode_combo.setCurrentIndex(w.mode_combo.findData("webcam"))
    w.generator_combo.setCurrentIndex(w.generator_combo.findData("generator"))
    w.device_combo.setCurrentIndex(w.device_combo.findData("cpu"))
    w.size_combo.setCurrentIndex(1)
    w.vcam_check.setChecked(False)
    w.output_mirror_check.setChecked(True)
    w.preview_mirror_check.setChecked(False)
    w.gains_panel.sliders["mouth"].setValue(150)
    w.gains_panel.sliders["smoothing"].setValue(20)
    ctl.bridge.portrait_accepted.emit(str(portrait_path))  # as after a successful check
    w.resize(1111, 733)
    ctl.shutdown()
    saved = SettingsStore.at(ini).geometry
    assert saved is not None

    ctl2 = make_window(svc, ini)
    w2 = ctl2.window
    qtbot.waitUntil(lambda: w2.camera_combo.count() == 2)
    assert w2.camera_combo.selected().name == "Cam B"
    assert w2.mic_combo.selected().name == "Built-in"
    assert w2.mode_combo.currentData() == "webcam"
    assert w2.generator_combo.currentData() == "generator"
    assert w2.device_combo.currentData() == "cpu"
    assert w2.size_combo.currentData() == (960, 540)
    assert not w2.vcam_check.isChecked()
    assert w2.output_mirror_check.isChecked() and not w2.preview_mirror_check.isChecked()
    assert not w2.preview.mirror
    assert w2.gains_panel.gains()["mouth"] == 1.5 and w2.gains_panel.gains()["smoothing"] == 0.2
    assert w2.portrait_picker.current == str(portrait_path)
    assert ctl2.bridge.portrait_path == str(portrait_path)
    # (the offscreen screen is 800 px wide: only the height survives unclamped)
    assert w2.height() == 733 and ctl2.settings.geometry == saved
    opts = ctl2.options()
    assert opts.camera.key == 2 and opts.out_size == (960, 540) and opts.gains["mouth"] == 1.5


def test_settings_store_survives_garbage(tmp_path):
    ini = tmp_path / "bad.ini"
    qs = QSettings(str(ini), QSettings.Format.IniFormat)
    for k, v in {"input/mode": "telepathy", "gains/head": "lots", "output/size": "huge",
                 "portrait/recent": "{not json", "output/vcam": "maybe", "engine/device": 3}.items():
        qs.setValue(k, v)
    qs.sync()
    s = SettingsStore.at(ini)
    assert s.mode == "webcam+mic" and s.gains["head"] == 1.0 and s.out_size == (1280, 720)
    assert s.recent_portraits == [] and s.vcam_enabled is False and s.compute_device == "auto"
    for i in range(12):
        s.add_recent(f"/p/{i}.png")
    s.add_recent("/p/3.png")
    assert s.recent_portraits[0] == "/p/3.png" and len(s.recent_portraits) == 8


def test_non_finite_or_out_of_range_numbers_fall_back_to_defaults(qtbot, make_window,
                                                                   clip_path, tmp_path, caplog):
    """`[gains] head=nan` (a hand-edited file) used to stop the window from
    opening at every start: ValueError in the gains panel, exit 1."""
    ini = tmp_path / "kf.ini"
    ini.write_text("[gains]\nhead=nan\nexpression=inf\nmouth=1.5\neyes=7\nsmoothing=-0.5\n"
                   "[output]\nav_trim_ms=nan\nsize=640x360\n")
    caplog.set_level("WARNING", logger="ui.settings_store")
    ctl = make_window(file_services(clip_path, None), ini)
    w = ctl.window
    assert w.isVisible()
    assert w.gains_panel.gains() == {"head": 1.0, "expression": 1.0, "mouth": 1.5, "eyes": 1.0,
                                     "smoothing": 0.5}
    assert w.vmic.trim_ms() == 0.0
    _ = ctl.settings.gains, ctl.settings.av_trim_ms, ctl.options()  # read again: no new lines
    lines = [r.getMessage() for r in caplog.records if r.name == "ui.settings_store"]
    for key in ("gains/head", "gains/expression", "gains/eyes", "gains/smoothing",
                "output/av_trim_ms"):
        assert sum(key in line for line in lines) == 1, (key, lines)
    assert len(lines) == 5, lines
    assert "using the default" in lines[0]
    # The panel itself never takes a NaN: defaults, and the nearest end of the range.
    w.gains_panel.set_gains({"head": float("nan"), "mouth": float("-inf"), "eyes": 9.0})
    g = w.gains_panel.gains()
    assert g["head"] == 1.0 and g["mouth"] == 1.0 and g["eyes"] == 2.0


# -- hotkeys ---------------------------------------------------------------------
def test_hotkeys_are_shown_and_work(qtbot, make_window, clip_path):
    ctl = make_window(file_services(clip_path, None))
    w = ctl.window
    keys = {hid: a.shortcut().toString() for hid, a in ctl.actions.items()}
    assert keys == {"start_stop": "Ctrl+Return", "pause": "Ctrl+P", "reset_pose": "Ctrl+R",
                    "mirror": "Ctrl+M"}
    # shown in the panel, the tooltips and the Stream menu
    from PySide6.QtWidgets import QLabel

    caps = {lbl.text() for lbl in w.findChildren(QLabel, "keycap")}
    assert {"Ctrl+Return", "Ctrl+P", "Ctrl+R", "Ctrl+M"} <= caps
    assert "Ctrl+P" in w.pause_button.toolTip() and "Ctrl+R" in w.reset_button.toolTip()
    assert ctl.actions["pause"] in w.menu_stream.actions()
    # the key itself
    w.activateWindow()
    qtbot.waitUntil(lambda: QGuiApplication.focusWindow() is not None, timeout=3000)
    before = w.preview_mirror_check.isChecked()
    qtbot.keyClick(w, Qt.Key.Key_M, Qt.KeyboardModifier.ControlModifier)
    assert w.preview_mirror_check.isChecked() is not before and w.preview.mirror is not before
    # pause does nothing while stopped (no still to send)
    ctl.actions["pause"].trigger()
    assert not ctl.bridge.paused and not w.pause_button.isChecked()


def test_hotkeys_can_be_remapped_in_settings(qtbot, make_window, clip_path, tmp_path):
    ini = tmp_path / "keys.ini"
    qs = QSettings(str(ini), QSettings.Format.IniFormat)
    qs.setValue("hotkeys/pause", "Ctrl+Shift+P")
    qs.sync()
    ctl = make_window(file_services(clip_path, None), ini)
    assert ctl.actions["pause"].shortcut().toString() == "Ctrl+Shift+P"
    assert "Ctrl+Shift+P" in ctl.window.pause_button.toolTip()


# -- banners ------------------------------------------------------------------------
def test_banner_area_replaces_by_code_caps_and_runs_actions(qtbot):
    area = BannerArea(max_banners=2, info_timeout_ms=100)
    qtbot.addWidget(area)
    clicked = []
    area.show_banner("warning", "a", "first", "do x", [("Fix", lambda: clicked.append(1))])
    area.show_banner("warning", "a", "second")
    assert area.codes() == ["a"] and area.banner("a").message_label.text() == "Second"
    qtbot.mouseClick(area.show_banner("error", "b", "boom", "", [("Fix", lambda: clicked.append(2))])
                     .buttons["Fix"], Qt.MouseButton.LeftButton)
    assert clicked == [2]
    area.show_banner("error", "c", "third")
    assert sorted(area.codes()) == ["b", "c"]  # oldest went
    area.show_banner("info", "i", "fyi")
    qtbot.waitUntil(lambda: "i" not in area.codes(), timeout=2000)  # info banners expire
    area.clear()
    assert area.codes() == [] and not area.isVisible()


def test_the_settings_panel_is_not_clipped(qtbot, make_window, clip_path):
    """At the smallest window and at 1280 px, every card of the right-hand
    panel fits its column (it used to run 40 px past the edge at 1280)."""
    from PySide6.QtWidgets import QScrollArea

    ctl = make_window(file_services(clip_path, None))
    w = ctl.window
    scroll = w.findChild(QScrollArea, "panelScroll")
    for size in ((w.minimumWidth(), w.minimumHeight()), (1280, 720)):
        w.resize(*size)
        qtbot.waitUntil(lambda: w.width() == size[0])
        panel = scroll.widget()
        assert panel.minimumSizeHint().width() <= scroll.viewport().width(), size
        for card in panel.findChildren(QFrame, "card"):
            right = card.mapTo(scroll.viewport(), card.rect().topRight()).x()
            assert right < scroll.viewport().width(), (size, right, scroll.viewport().width())


def test_a_problem_that_is_over_takes_its_banner_down(qtbot, make_window, clip_path):
    """source_stalled / overloaded / sink_failed / paused banners go when the
    session says the problem is over; unrelated banners stay."""
    from ui.session_bridge import Notice

    ctl = make_window(file_services(clip_path, None))
    banners = ctl.window.banners
    pairs = [("source_stalled", "source_restored"), ("source_hung", "source_restored"),
             ("capture_error", "source_restored"), ("overloaded", "overload_cleared"),
             ("sink_failed", "sink_restored"), ("mic_lost", "mic_restored")]
    for problem, over in pairs:
        ctl._on_notice(Notice("warning", problem, f"{problem} happened", "wait"))
        ctl._on_notice(Notice("error", "other_problem", "something else"))
        assert banners.banner(problem) is not None
        ctl._on_notice(Notice("info", over, "fine again"))
        assert banners.banner(problem) is None, (problem, over)
        assert banners.banner("other_problem") is not None


def test_unexpected_exception_becomes_a_banner_not_a_dialog(qtbot, make_window, clip_path):
    from ui.app import install_crash_reporting

    ctl = make_window(file_services(clip_path, None))
    old_hook, old_thread_hook = sys.excepthook, __import__("threading").excepthook
    install_crash_reporting(ctl.report_unexpected)
    try:
        import threading

        t = threading.Thread(target=lambda: 1 / 0, name="ui-test-crash")
        t.start()
        t.join()
        qtbot.waitUntil(lambda: ctl.window.banners.banner("unexpected_error") is not None)
    finally:
        sys.excepthook, threading.excepthook = old_hook, old_thread_hook
    b = ctl.window.banners.banner("unexpected_error")
    assert "ZeroDivisionError" in b.message and "Copy diagnostics" in b.buttons


# -- devices ------------------------------------------------------------------------
def test_device_pickers_follow_devices_and_keep_the_choice(qtbot):
    devices = [DeviceEntry(0, "Cam A"), DeviceEntry(1, "Cam B")]
    watcher = DeviceWatcher(lambda: list(devices), lambda: [], interval_ms=50)
    combo = DeviceCombo("No camera found")
    qtbot.addWidget(combo)
    watcher.cameras_changed.connect(combo.set_devices)
    watcher.start()
    try:
        qtbot.waitUntil(lambda: combo.count() == 2)
        combo.setCurrentIndex(1)
        assert combo.wanted_name == "Cam B"
        devices.pop(1)  # Cam B unplugged
        qtbot.waitUntil(lambda: combo.selected().key is None)
        assert combo.currentText() == "Cam B (not connected)"
        devices.append(DeviceEntry(5, "Cam B"))  # back, with another index
        qtbot.waitUntil(lambda: combo.selected().key == 5)
        assert combo.currentText() == "Cam B"
        devices.clear()
        combo.set_wanted("")
        qtbot.waitUntil(lambda: combo.currentText() == "No camera found")
        assert combo.selected() is None
    finally:
        watcher.shutdown()


def test_cameras_are_not_probed_on_a_timer_where_listing_opens_them(qtbot):
    calls = {"cams": 0, "mics": 0}

    def cams():
        calls["cams"] += 1
        return [TEST_CAMERA]

    def mics():
        calls["mics"] += 1
        return []

    watcher = DeviceWatcher(cams, mics, interval_ms=30, poll_cameras=False)  # Windows/macOS
    combo = DeviceCombo("No camera found")
    qtbot.addWidget(combo)
    combo.popup_opening.connect(watcher.refresh)
    watcher.start()
    try:
        qtbot.waitUntil(lambda: calls["mics"] >= 5)
        assert calls["cams"] == 1  # only the first listing
        combo.showPopup()
        qtbot.waitUntil(lambda: calls["cams"] == 2)
        combo.hidePopup()
    finally:
        watcher.shutdown()


def test_a_broken_device_list_does_not_break_the_window(qtbot):
    def boom():
        raise OSError("PortAudio exploded")

    watcher = DeviceWatcher(lambda: [TEST_CAMERA], boom, interval_ms=50)
    got = []
    watcher.cameras_changed.connect(got.append)
    watcher.start()
    try:
        qtbot.waitUntil(lambda: got == [[TEST_CAMERA]])
        assert "PortAudio" in watcher.errors["microphones"]
    finally:
        watcher.shutdown()


# -- diagnostics ---------------------------------------------------------------------
def test_copy_diagnostics(qtbot, make_window, clip_path):
    from ui.logs import setup_logging

    logs = setup_logging(None)
    try:
        ctl = make_window(file_services(clip_path, None))
        ctl.log_setup = logs
        import logging

        logging.getLogger("kf.test").warning("a line the report must contain")
        qtbot.waitUntil(lambda: ctl.watcher.cameras == [TEST_CAMERA])
        ctl.copy_diagnostics_action.trigger()
        qtbot.waitUntil(lambda: ctl.window.banners.banner("diagnostics") is not None, timeout=10_000)
    finally:
        logs.close()
    text = QGuiApplication.clipboard().text()
    for part in ("kf-desktop 0.", "## Packages", "PySide6-Essentials", "## GPU", "## Devices",
                 "Test clip camera", "## Stream", "state: stopped", "a line the report must contain",
                 "platform plugin: offscreen"):
        assert part in text, part


def test_rotating_log_file(tmp_path):
    import logging

    from ui.logs import setup_logging

    logs = setup_logging(tmp_path / "logs", max_bytes=2000, backups=2)
    try:
        for i in range(200):
            logging.getLogger("kf.test").warning("line %d %s", i, "x" * 40)
    finally:
        logs.close()
    files = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert files == ["kf-desktop.log", "kf-desktop.log.1", "kf-desktop.log.2"]
    assert "line 199" in (tmp_path / "logs" / "kf-desktop.log").read_text()
    assert logs.recent.lines(1)[0].endswith("line 199 " + "x" * 40)


# -- preview hand-off and pause ---------------------------------------------------
def test_preview_frames_are_dropped_when_the_gui_is_behind(qtbot):
    bridge = SessionBridge()
    emitted = []
    bridge.frame_ready.connect(lambda: emitted.append(1))
    frames = [np.full((36, 64, 3), i, np.uint8) for i in range(5)]
    # The output thread hands over 5 frames while the GUI thread is busy.
    import threading

    t = threading.Thread(target=lambda: [bridge._on_preview(f, time.monotonic()) for f in frames])
    t.start()
    t.join()
    qtbot.waitUntil(lambda: emitted == [1])  # one notification, not five queued
    frame = bridge.take_frame()
    assert frame.image.pixelColor(0, 0) == QColor(4, 4, 4)  # the newest one
    assert bridge.preview_frames == 5 and bridge.preview_dropped == 4
    assert bridge.take_frame() is None
    bridge._on_preview(frames[0], time.monotonic())
    qtbot.waitUntil(lambda: len(emitted) == 2)
    bridge.shutdown()


def test_pause_still_and_vcam_slot():
    src = QImage(320, 180, QImage.Format.Format_RGB888)
    src.fill(QColor(250, 250, 250))
    still = make_pause_still(src, (640, 360))
    rgb = qimage_to_rgb(still)
    assert rgb.shape == (360, 640, 3) and rgb.dtype == np.uint8
    assert rgb[10, 10].max() < 130  # blurred source, dimmed
    assert rgb[150:200, 250:390].max() > 200  # the "Paused" text

    class Sink:
        def __init__(self, mirror):
            self.mirror, self.got, self.started, self.stopped = mirror, [], 0, 0

        def start(self):
            self.started += 1

        def stop(self):
            self.stopped += 1

        def submit(self, img, ts):
            self.got.append(img)

        def stats(self):
            return {"device": "/dev/video9", "backend": "v4l2loopback", "last_error": None}

    made = []
    slot = VcamSlot(lambda mirror: made.append(Sink(mirror)) or made[-1])
    live = np.zeros((360, 640, 3), np.uint8)
    slot.submit(live, 0.0)  # closed: dropped
    slot.start()  # the session's start/stop do not open or close it
    assert not made
    st = slot.open()
    assert st.state == "on" and st.text == "Live on /dev/video9"
    sink = made[0]
    slot.submit(live, 0.0)
    assert len(sink.got) == 1
    slot.pause(rgb)
    assert sink.got[-1] is rgb or np.array_equal(sink.got[-1], rgb)
    slot.submit(live, 0.0)
    assert len(sink.got) == 2  # live frames held back while paused
    slot.set_mirror(True)
    assert sink.mirror and np.array_equal(sink.got[-1], rgb[:, ::-1])  # pre-flipped: readable
    slot.resume()
    slot.submit(live, 0.0)
    assert sink.got[-1] is live
    slot.stop()
    assert sink.stopped == 0
    slot.close()
    assert sink.stopped == 1 and not slot.is_open


# -- the import rule and `gui --check` -------------------------------------------------
def _clean_env(tmp_path: Path) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", HOME=str(tmp_path),
               XDG_CONFIG_HOME=str(tmp_path / "config"), XDG_DATA_HOME=str(tmp_path / "data"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), PYTHONPATH=str(REPO))
    (tmp_path / "run").mkdir(mode=0o700, exist_ok=True)
    return env


def test_window_never_imports_torch_or_mediapipe(tmp_path):
    for path in (REPO / "ui").glob("*.py"):
        text = path.read_text()
        for mod in ("torch", "mediapipe"):
            assert f"import {mod}" not in text and f"from {mod}" not in text, (path, mod)
    code = (
        "import sys\n"
        "from ui.app import create_application\n"
        "from ui.controller import Controller\n"
        "from ui.services import Services\n"
        "from ui.settings_store import SettingsStore\n"
        "app = create_application()\n"
        "ctl = Controller(Services(list_cameras=lambda: [], list_microphones=lambda: []),\n"
        f"                 SettingsStore.at({str(tmp_path / 's.ini')!r}))\n"
        "ctl.window.show(); app.processEvents()\n"
        "ctl.copy_diagnostics(); import time; t = time.time()\n"
        "while time.time() - t < 3 and not hasattr(ctl, 'last_diagnostics'): app.processEvents()\n"
        "ctl.shutdown()\n"
        "print(sorted(m for m in ('torch', 'mediapipe') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=_clean_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout


def test_run_app_check_opens_a_window(tmp_path):
    code = ("import argparse, sys\nfrom ui.app import run_app\n"
            "sys.exit(run_app(argparse.Namespace(check=True)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=_clean_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stderr
    logs = list((tmp_path / "data").rglob("kf-desktop.log"))
    assert logs and "starting the desktop window" in logs[0].read_text()
    r = subprocess.run([sys.executable, "-m", "kf_desktop", "gui", "--check"], capture_output=True,
                       text=True, timeout=60, env=_clean_env(tmp_path), cwd=REPO)
    assert r.returncode == 0, r.stderr
    # No display at all: a message and a fix, not a Qt abort.
    env = {k: v for k, v in _clean_env(tmp_path).items()
           if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "kf_desktop", "gui"], capture_output=True,
                       text=True, timeout=60, env=env, cwd=REPO)
    assert r.returncode == 2 and "no display" in r.stderr and "QT_QPA_PLATFORM=offscreen" in r.stderr
    assert "Traceback" not in r.stderr
