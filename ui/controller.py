"""Wires the main window to the session bridge, the device watcher, the
settings and the hotkeys. Everything here runs on the GUI thread and only
does quick things: slow work is the bridge's (worker thread)."""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QGuiApplication, QImage, QKeySequence
from PySide6.QtWidgets import QComboBox, QFileDialog, QMessageBox

from ui import diagnostics
from ui.device_pickers import DeviceWatcher
from ui.hotkeys import HOTKEYS, make_actions
from ui.logs import LogSetup
from ui.main_window import MainWindow
from ui.options import VIDEO_SUFFIXES, StreamOptions, is_video, uses_camera, uses_mic, video_entry
from ui.pause_frame import make_pause_still, qimage_to_rgb
from ui.services import Services
from ui.session_bridge import RUNNING, STOPPED, Notice, SessionBridge
from ui.settings_store import SettingsStore
from ui.vcam_slot import VcamStatus

log = logging.getLogger(__name__)

PLACEHOLDER_SIZE = 720
#: Notices the state label already says (logged only, no banner).
QUIET = {"started", "stopped", "source_ended"}
#: A notice that a problem is over takes down the banners of that problem.
RESOLVES = {
    "source_restored": ("source_lost", "camera_failed", "source_stalled", "source_hung",
                        "source_failed", "capture_error"),
    "mic_restored": ("mic_lost", "mic_failed"),
    "started": ("start_failed",),
    "overload_cleared": ("overloaded",),
    "sink_restored": ("sink_failed",),
    "resumed": ("paused",),
}


def fix_command(hint: str) -> str:
    """The shell command inside a hint ("... driver: sudo apt ... (then ...)"),
    or the whole hint when it has none."""
    m = re.search(r"((?:sudo|brew|winget|choco) .*?)(?:\s+\(then|$)", hint)
    return m.group(1).strip() if m else hint


def _select_data(combo: QComboBox, value: object) -> None:
    # findData() cannot compare Python tuples held in QVariants: compare here.
    for i in range(combo.count()):
        if combo.itemData(i) == value:
            combo.setCurrentIndex(i)
            return


class Controller(QObject):
    _diagnostics_ready = Signal(str)
    _unexpected = Signal(str)
    #: The window was closed (the app quits on it: see ``_on_close``).
    closed = Signal()

    def __init__(self, services: Services | None = None, settings: SettingsStore | None = None,
                 log_setup: LogSetup | None = None, device_poll_ms: int = 3000,
                 portrait: str | None = None) -> None:
        super().__init__()
        self.services = services or Services()
        self.settings = settings or SettingsStore()
        self.log_setup = log_setup
        s = self.settings
        self.window = w = MainWindow({hk.id: s.hotkey(hk.id, hk.default) for hk in HOTKEYS})
        self.bridge = SessionBridge(self.services, parent=self)
        # Video files (the fetched demo clip, files the user chose) are offered
        # after the webcams, as cameras: a user without one can drive the avatar.
        self._videos = [v for v in s.video_files if Path(v).is_file()]
        self.watcher = DeviceWatcher(self._list_inputs, self.services.list_microphones,
                                     interval_ms=device_poll_ms, parent=self)
        self._vcam_hint = ""
        self._closed = False
        self._load_settings()
        self.bridge.update_options(self.options())

        # -- widgets -> settings + bridge
        w.start_button.clicked.connect(self.bridge.toggle)
        w.pause_button.clicked.connect(self._on_pause_clicked)
        w.reset_button.clicked.connect(self.bridge.reset_neutral)
        w.preview_mirror_check.toggled.connect(self._on_preview_mirror)
        w.portrait_picker.portrait_requested.connect(self.request_portrait)
        w.portrait_picker.forget_requested.connect(self._forget_portrait)
        w.portrait_picker.thumbs.loaded.connect(self._on_thumb)
        w.file_dropped.connect(self.request_portrait)
        w.mode_combo.currentIndexChanged.connect(self._on_option_widget)
        w.camera_combo.selection_changed.connect(self._on_option_widget)
        w.mic_combo.selection_changed.connect(self._on_option_widget)
        w.vcam_check.toggled.connect(self._on_option_widget)
        w.output_mirror_check.toggled.connect(self._on_option_widget)
        w.size_combo.currentIndexChanged.connect(self._on_option_widget)
        w.generator_combo.currentIndexChanged.connect(self._on_option_widget)
        w.device_combo.currentIndexChanged.connect(self._on_option_widget)
        w.gains_panel.gains_changed.connect(self._on_option_widget)
        w.vmic.changed.connect(self._on_vmic_widget)
        w.vcam_fix_button.clicked.connect(self._show_vcam_fix)
        w.video_button.clicked.connect(self.choose_video)
        w.closing.connect(self._on_close)

        # -- bridge -> widgets
        b = self.bridge
        b.state_changed.connect(self._on_state)
        b.busy.connect(w.preview.set_busy)
        b.notice.connect(self._on_notice)
        b.frame_ready.connect(self._on_frame)
        b.portrait_checking.connect(w.portrait_picker.set_checking)
        b.portrait_accepted.connect(self._on_portrait_accepted)
        b.portrait_rejected.connect(lambda p, m, h: w.portrait_picker.set_rejected(p, m))
        b.vcam_changed.connect(self._on_vcam)
        b.stats_updated.connect(self._on_stats)
        b.vmic_checked.connect(w.vmic.show_check)
        self.watcher.cameras_changed.connect(self._on_cameras)
        w.camera_combo.popup_opening.connect(self.watcher.refresh)
        w.mic_combo.popup_opening.connect(self.watcher.refresh)
        self.watcher.microphones_changed.connect(self._on_microphones)
        self._diagnostics_ready.connect(self._on_diagnostics)
        self._unexpected.connect(self._on_unexpected)

        # -- hotkeys and menus
        self.actions = make_actions(w, {
            "start_stop": self.bridge.toggle,
            "pause": self.toggle_pause,
            "reset_pose": self.bridge.reset_neutral,
            "mirror": w.preview_mirror_check.toggle,
        }, lookup=s.hotkey)
        open_act = self._action("Open portrait…", w.portrait_picker.choose_file, "Ctrl+O")
        quit_act = self._action("Quit", w.close, "Ctrl+Q")
        w.add_menu_actions("file", [open_act, None, quit_act])
        w.add_menu_actions("stream", [self.actions["start_stop"], self.actions["pause"],
                                      self.actions["reset_pose"], None, self.actions["mirror"]])
        self.copy_diagnostics_action = self._action("Copy diagnostics", self.copy_diagnostics)
        w.add_menu_actions("help", [
            self.copy_diagnostics_action,
            self._action("Open log folder", self.open_log_folder),
            None,
            self._action("About kf-desktop", self._about),
        ])

        self._on_state(STOPPED)
        self._on_vcam(VcamStatus("off"))
        self._update_enabled()
        self.watcher.start()
        self.bridge.probe_vcam()
        if w.vmic.wanted:
            self.bridge.probe_vmic()
        if portrait:  # `kf-desktop gui PHOTO`, "Open with" on a photo
            self.request_portrait(str(portrait))

    # -- construction helpers -------------------------------------------------
    def _action(self, text: str, slot: Callable, key: str = "") -> QAction:
        a = QAction(text, self.window)
        if key:
            a.setShortcut(QKeySequence(key))
        a.triggered.connect(lambda _c=False: slot())
        self.window.addAction(a)
        return a

    def _load_settings(self) -> None:
        s, w = self.settings, self.window
        portrait = s.portrait
        if not portrait or not Path(portrait).exists():
            if portrait:
                s.remove_recent(portrait)
            portrait = self.services.default_portrait
        self.bridge.set_portrait_path(portrait)
        w.portrait_picker.set_current(portrait)
        w.portrait_picker.set_recent([p for p in s.recent_portraits if Path(p).exists()])
        w.portrait_picker.thumbs.request(portrait, PLACEHOLDER_SIZE)
        for combo, value in ((w.mode_combo, s.mode), (w.generator_combo, s.generator),
                             (w.device_combo, s.compute_device), (w.size_combo, s.out_size)):
            combo.blockSignals(True)
            _select_data(combo, value)
            combo.blockSignals(False)
        w.camera_combo.set_wanted(s.camera)
        w.mic_combo.set_wanted(s.microphone)
        for check, value in ((w.vcam_check, s.vcam_enabled), (w.output_mirror_check, s.output_mirror),
                             (w.preview_mirror_check, s.preview_mirror)):
            check.blockSignals(True)
            check.setChecked(value)
            check.blockSignals(False)
        w.preview.set_mirror(s.preview_mirror)
        w.vmic.set_mic_mode(uses_mic(w.mode_combo.currentData()))
        w.vmic.load(s.virtual_mic, s.av_trim_ms)
        w.gains_panel.set_gains(s.gains)
        if s.geometry is not None:
            w.restoreGeometry(s.geometry)
        else:
            w.resize(1240, 780)
        if s.window_state is not None:
            w.restoreState(s.window_state)

    def options(self) -> StreamOptions:
        w = self.window
        return StreamOptions(
            portrait=self.bridge.portrait_path,
            mode=w.mode_combo.currentData(),
            camera=w.camera_combo.selected(),
            mic=w.mic_combo.selected(),
            generator=w.generator_combo.currentData(),
            device=w.device_combo.currentData(),
            out_size=tuple(w.size_combo.currentData()),
            vcam_enabled=w.vcam_check.isChecked(),
            output_mirror=w.output_mirror_check.isChecked(),
            virtual_mic=w.vmic.wanted,
            av_trim_ms=w.vmic.trim_ms(),
            gains=w.gains_panel.gains(),
        )

    # -- user changes ----------------------------------------------------------
    def _on_option_widget(self, *_args) -> None:
        w, s = self.window, self.settings
        s.mode = w.mode_combo.currentData()
        s.camera = w.camera_combo.wanted_name
        s.microphone = w.mic_combo.wanted_name
        s.vcam_enabled = w.vcam_check.isChecked()
        s.output_mirror = w.output_mirror_check.isChecked()
        s.out_size = w.size_combo.currentData()
        s.generator = w.generator_combo.currentData()
        s.compute_device = w.device_combo.currentData()
        s.gains = w.gains_panel.gains()
        s.virtual_mic = w.vmic.wanted
        s.av_trim_ms = w.vmic.trim_ms()
        self._update_enabled()
        vcam_was = self.bridge.options.vcam_enabled
        if not w.vcam_check.isChecked():
            self.window.banners.dismiss("vcam_missing")
        self.bridge.update_options(self.options())
        if self.bridge.state == STOPPED and w.vcam_check.isChecked() != vcam_was:
            self._on_vcam(VcamStatus("off"))
            self.bridge.probe_vcam()

    def _on_vmic_widget(self) -> None:
        was = self.bridge.options.virtual_mic
        self._on_option_widget()
        if self.window.vmic.wanted and not was:
            self.bridge.probe_vmic()  # the doctor's check, for the status line

    # -- video files as cameras (worker thread for _list_inputs) ---------------
    def _list_inputs(self) -> list:
        return [*self.services.list_cameras(), *self._video_entries()]

    def _video_entries(self) -> list:
        demo = self.services.demo_clip()
        entries = [video_entry(demo, demo=True)] if demo else []
        return entries + [video_entry(v) for v in list(self._videos) if v != demo]

    def choose_video(self) -> None:
        start = self._videos[0] if self._videos else (self.services.demo_clip() or "")
        pattern = " ".join(f"*{x}" for x in VIDEO_SUFFIXES)
        path, _ = QFileDialog.getOpenFileName(self.window, "Drive with a video file",
                                              str(Path(start).parent) if start else "",
                                              f"Videos ({pattern});;All files (*)")
        if path:
            self.use_video(path)

    def use_video(self, path: str) -> None:
        """Make the video file the camera (and the input mode one that uses it)."""
        path = str(Path(path).resolve())
        if not Path(path).is_file():
            self._banner(Notice("warning", "video_missing", f"{Path(path).name} is not there",
                                "choose another video file"))
            return
        self.settings.add_video(path)
        self._videos = [v for v in self.settings.video_files if Path(v).is_file()]
        entry = video_entry(path, demo=path == self.services.demo_clip())
        w = self.window
        if not uses_camera(w.mode_combo.currentData()):
            w.mode_combo.blockSignals(True)
            _select_data(w.mode_combo, "webcam+mic")
            w.mode_combo.blockSignals(False)
        cams = [d for d in (self.watcher.cameras or []) if not is_video(d)]
        w.camera_combo.set_devices([*cams, *self._video_entries()])
        w.camera_combo.set_wanted(entry.name)
        self._on_option_widget()
        self.watcher.refresh()

    def _on_cameras(self, devices: list) -> None:
        self.window.camera_combo.set_devices(devices)
        self.bridge.update_options(self.options())  # a camera that came back is used again

    def _on_microphones(self, devices: list) -> None:
        self.window.mic_combo.set_devices(devices)
        self.bridge.update_options(self.options())

    def _update_enabled(self) -> None:
        w = self.window
        mode = w.mode_combo.currentData()
        w.camera_combo.setEnabled(uses_camera(mode))
        w.mic_combo.setEnabled(uses_mic(mode))
        w.vmic.set_mic_mode(uses_mic(mode))

    def _on_preview_mirror(self, on: bool) -> None:
        self.window.preview.set_mirror(on)
        self.settings.preview_mirror = on

    def request_portrait(self, path: str) -> None:
        self.window.banners.dismiss("portrait_rejected")
        self.bridge.request_portrait(path)

    def _forget_portrait(self, path: str) -> None:
        self.settings.remove_recent(path)
        self.window.portrait_picker.set_recent(self.settings.recent_portraits)
        self._banner(Notice("warning", "portrait_missing", f"{Path(path).name} is no longer there",
                            "it was moved or deleted; removed from the recent list"))

    def set_mode(self, mode: str) -> None:
        _select_data(self.window.mode_combo, mode)

    def set_generator(self, gen: str) -> None:
        _select_data(self.window.generator_combo, gen)

    # -- pause -----------------------------------------------------------------
    def toggle_pause(self) -> None:
        self.set_paused(not self.bridge.paused)

    def _on_pause_clicked(self, checked: bool) -> None:
        self.set_paused(checked)

    def set_paused(self, paused: bool) -> None:
        w = self.window
        if paused and self.bridge.state != RUNNING:
            w.pause_button.setChecked(False)
            return
        if paused:
            src = w.preview.current_image or self._placeholder_image()
            still = make_pause_still(src, self.options().out_size)
            self.bridge.set_paused(True, qimage_to_rgb(still))
            w.preview.set_paused(True, still)
        else:
            self.bridge.set_paused(False)
            w.preview.set_paused(False)
        w.pause_button.setChecked(paused)
        w.pause_button.setText("Resume" if paused else "Pause")

    def _placeholder_image(self) -> QImage | None:
        return self.window.preview.placeholder

    # -- bridge events -----------------------------------------------------------
    def _on_state(self, state: str) -> None:
        w = self.window
        w.set_state_text(state)
        w.preview.set_live(state == RUNNING)
        w.vmic.set_running(state == RUNNING)
        if state == STOPPED:
            if self.bridge.paused:
                self.set_paused(False)
            w.stats_label.setText("")
            w.preview.set_busy("")
            key = self.window.hotkey_text["start_stop"]
            w.preview.set_idle_text(f"Press Start ({key}) to go live")

    def _on_frame(self) -> None:
        frame = self.bridge.take_frame()
        if frame is not None and self.bridge.state == RUNNING and not self.bridge.paused:
            self.window.preview.set_frame(frame.image, frame.capture_ts)

    def _on_portrait_accepted(self, path: str) -> None:
        picker = self.window.portrait_picker
        picker.set_current(path)
        self.settings.portrait = path
        picker.set_recent([p for p in self.settings.recent_portraits if Path(p).exists()])
        picker.thumbs.request(path, PLACEHOLDER_SIZE)
        self._banner(Notice("info", "portrait_switched", f"Portrait: {Path(path).name}"))

    def _on_thumb(self, path: str, size: int, img: QImage) -> None:
        if size == PLACEHOLDER_SIZE and path == self.bridge.portrait_path and not img.isNull():
            self.window.preview.set_placeholder(img)

    def _on_vcam(self, st: VcamStatus) -> None:
        w = self.window
        if st.state == "error":
            self._vcam_hint = st.hint
            w.set_vcam_text("error", "Not available", f"{st.message}\n\nFix: {st.hint}")
        elif st.state == "on":
            w.banners.dismiss("vcam_missing")
            w.banners.dismiss("vcam_failed")
            w.set_vcam_text("on", st.text, f"{st.device} ({st.backend})")
        elif w.vcam_check.isChecked():
            w.set_vcam_text("off", st.text if st.device else "Starts with the stream",
                            "opens when the stream starts")
        else:
            w.set_vcam_text("off", "Off")

    def _on_stats(self, snap: dict) -> None:
        w = self.window
        fps = snap.get("fps") or {}
        lat = (snap.get("ms") or {}).get("latency") or {}
        w.preview.set_engine_fps(fps.get("engine"))
        parts = []
        if "output" in fps:
            parts.append(f"output {fps['output']:.1f} fps")
        if lat.get("p50") is not None:
            parts.append(f"latency p50 {lat['p50']:.0f} ms, p95 {lat.get('p95', 0):.0f} ms")
        vc = snap.get("vcam") or {}
        if vc.get("open") and vc.get("send_fps"):
            parts.append(f"virtual camera {vc['send_fps']:.1f} fps")
        w.stats_label.setText("   ·   ".join(parts))
        w.vmic.show_snapshot(snap)

    def _on_notice(self, n: Notice) -> None:
        for code in RESOLVES.get(n.code, ()):
            self.window.banners.dismiss(code)
        if n.code in QUIET:
            return
        self._banner(n)

    def notify(self, level: str, code: str, message: str, hint: str = "") -> None:
        """Show a banner from outside the controller (the app's start-up checks)."""
        self._banner(Notice(level, code, message, hint))

    def _banner(self, n: Notice) -> None:
        self.window.banners.show_banner(n.level, n.code, n.message, n.hint, self._actions_for(n),
                                        getattr(n, "detail", ""))

    def _actions_for(self, n: Notice) -> list[tuple[str, Callable[[], None]]]:
        w = self.window
        diag = ("Copy diagnostics", self.copy_diagnostics)
        choose_cam = ("Choose camera", lambda: (w.camera_combo.setFocus(), w.camera_combo.showPopup()))
        choose_mic = ("Choose microphone", lambda: (w.mic_combo.setFocus(), w.mic_combo.showPopup()))
        return {
            "no_camera": [("Use a video file…", self.choose_video),
                          ("Use microphone only", lambda: self.set_mode("mic")),
                          ("Check again", self.watcher.refresh)],
            "camera_failed": [choose_cam],
            "source_lost": [choose_cam],
            "no_mic": [("Check again", self.watcher.refresh)],
            "mic_failed": [choose_mic],
            "mic_lost": [choose_mic],
            "engine_failed": [("Use guide only", lambda: self.set_generator("guide")), diag],
            "capture_crashed": [diag],
            "sink_failed": [diag],
            "vcam_missing": [("Copy fix", lambda: self._copy(fix_command(n.hint),
                                                             "Fix copied to the clipboard")),
                             ("Retry", self.bridge.retry_vcam)],
            "vcam_failed": [("Retry", self.bridge.retry_vcam)],
            "portrait_rejected": [("Choose another photo", w.portrait_picker.choose_file)],
            "generator_unavailable": [("Use guide only", lambda: self.set_generator("guide"))],
            "start_failed": [diag],
            "internal_error": [diag],
            "unexpected_error": [diag],
        }.get(n.code, [])

    def _show_vcam_fix(self) -> None:
        self._banner(Notice("warning", "vcam_missing", "No virtual camera driver",
                            self._vcam_hint or self.services.vcam_fix()))

    def _copy(self, text: str, done: str) -> None:
        QGuiApplication.clipboard().setText(text)
        self._banner(Notice("info", "copied", done))

    # -- diagnostics ---------------------------------------------------------------
    def diagnostics_input(self) -> diagnostics.DiagnosticsInput:
        w = self.window
        opts = self.options()
        snap = self.bridge.snapshot() if self.bridge.state == RUNNING else {}
        from PySide6 import __version__ as pyside_version
        from PySide6.QtCore import qVersion

        return diagnostics.DiagnosticsInput(
            cameras=[d.name for d in w.camera_combo.devices()],
            microphones=[d.name for d in w.mic_combo.devices()],
            selected_camera=w.camera_combo.wanted_name or (opts.camera.name if opts.camera else ""),
            selected_mic=w.mic_combo.wanted_name or (opts.mic.name if opts.mic else ""),
            options={"mode": opts.mode, "generator": opts.generator, "device": opts.device,
                     "out_size": opts.out_size, "vcam": opts.vcam_enabled,
                     "output_mirror": opts.output_mirror, "gains": opts.gains,
                     "virtual_mic": opts.virtual_mic, "av_trim_ms": opts.av_trim_ms,
                     "portrait": opts.portrait},
            state=self.bridge.state, vcam=w.vcam_status.text(), snapshot=snap,
            log_lines=self.log_setup.recent.lines() if self.log_setup else [],
            log_path=str(self.log_setup.path) if self.log_setup and self.log_setup.path else "",
            qt=f"Qt {qVersion()}, PySide6 {pyside_version}",
            platform_plugin=QGuiApplication.platformName())

    def copy_diagnostics(self) -> None:
        inp = self.diagnostics_input()

        def work() -> None:
            try:
                text = diagnostics.collect(inp)
            except Exception as e:
                log.exception("collecting diagnostics failed")
                text = f"collecting diagnostics failed: {e}"
            if not self._closed:
                self._diagnostics_ready.emit(text)

        threading.Thread(target=work, name="ui-diagnostics", daemon=True).start()

    def _on_diagnostics(self, text: str) -> None:
        self.last_diagnostics = text
        QGuiApplication.clipboard().setText(text)
        self._banner(Notice("info", "diagnostics", "Diagnostics copied to the clipboard",
                            "paste them into your bug report"))

    def open_log_folder(self) -> None:
        if self.log_setup and self.log_setup.path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.log_setup.path.parent)))

    def _about(self) -> None:
        from kf_desktop import __version__

        QMessageBox.about(self.window, "About kf-desktop",
                          f"<b>kf-desktop {__version__}</b><br>One portrait photo becomes a live, "
                          "talking virtual webcam.<br>Apache-2.0")

    # -- unexpected errors (any thread) -----------------------------------------------
    def report_unexpected(self, text: str) -> None:
        self._unexpected.emit(text)

    def _on_unexpected(self, text: str) -> None:
        self._banner(Notice("error", "unexpected_error", text,
                            "the stream keeps running; the details are in the log"))

    # -- shutdown -------------------------------------------------------------------
    def _on_close(self, event: QCloseEvent) -> None:
        # Never wait here for the stream. A start still in flight (loading
        # torch, mediapipe, the portrait: seconds) used to be waited for
        # inside the close event, and Qt's own quit-on-last-window-closed
        # was then lost: no window, the process for ever in app.exec(). The
        # stop is only requested here; ``closed`` makes the app quit, and
        # run_app waits for the stop (bounded) after its event loop.
        self.shutdown(wait=False)
        self.closed.emit()

    def shutdown(self, wait: bool = True) -> None:
        """Save the settings, hide the window and stop the stream; with
        ``wait`` block (bounded) until it has stopped. Idempotent."""
        w, s = self.window, self.settings
        if not self._closed:
            self._closed = True
            s.geometry = w.saveGeometry()
            s.window_state = w.saveState()
            s.sync()
            w.hide()
            self.watcher.shutdown()
            w.portrait_picker.thumbs.shutdown()
        if wait:
            self.bridge.shutdown()
        else:
            self.bridge.begin_shutdown()
        s.sync()
