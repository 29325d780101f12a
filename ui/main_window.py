"""The main window's layout: widgets and where they sit, nothing else.
``ui.controller.Controller`` wires them to the session bridge and settings."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QFrame, QHBoxLayout, QLabel,
                               QMainWindow, QPushButton, QScrollArea, QSizePolicy, QVBoxLayout,
                               QWidget)

from ui.banner import BannerArea
from ui.device_pickers import DeviceCombo
from ui.gains_panel import GainsPanel
from ui.hotkeys import HOTKEYS, native_text
from ui.options import COMPUTE_DEVICES, GENERATORS, MODES, OUTPUT_SIZES
from ui.portrait_picker import PortraitPicker, is_image_path
from ui.preview_widget import PreviewWidget
from ui.virtual_mic_control import VirtualMicControl

PANEL_WIDTH = 360


def _section(title: str, body: QWidget | QFormLayout | QVBoxLayout) -> QFrame:
    card = QFrame()
    card.setObjectName("card")
    lay = QVBoxLayout(card)
    lay.setContentsMargins(14, 12, 14, 14)
    lay.setSpacing(10)
    head = QLabel(title.upper())
    head.setObjectName("cardTitle")
    lay.addWidget(head)
    if isinstance(body, QWidget):
        lay.addWidget(body)
    else:
        lay.addLayout(body)
    return card


def _form() -> QFormLayout:
    f = QFormLayout()
    f.setContentsMargins(0, 0, 0, 0)
    f.setHorizontalSpacing(12)
    f.setVerticalSpacing(8)
    f.setLabelAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    f.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    return f


class MainWindow(QMainWindow):
    file_dropped = Signal(str)
    closing = Signal(QCloseEvent)

    def __init__(self, hotkey_text: dict[str, str] | None = None) -> None:
        super().__init__()
        self.setObjectName("mainWindow")
        self.setWindowTitle("kf-desktop")
        self.setAcceptDrops(True)
        self.setMinimumSize(960, 620)
        keys = {hk.id: native_text((hotkey_text or {}).get(hk.id, hk.default)) for hk in HOTKEYS}
        self.hotkey_text = keys

        # -- left: banners, preview, transport ----------------------------------
        self.banners = BannerArea()
        self.preview = PreviewWidget()
        self.start_button = QPushButton("Start")
        self.start_button.setObjectName("startButton")
        self.start_button.setToolTip(f"Start or stop the stream ({keys['start_stop']})")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setObjectName("pauseButton")
        self.pause_button.setCheckable(True)
        self.pause_button.setToolTip(
            f"Privacy: the meeting sees a still 'Paused' frame ({keys['pause']})")
        self.reset_button = QPushButton("Reset neutral pose")
        self.reset_button.setToolTip(
            f"Look straight at the camera with a relaxed face, then press ({keys['reset_pose']})")
        self.preview_mirror_check = QCheckBox("Mirror preview")
        self.preview_mirror_check.setToolTip(
            f"Flip only what you see here, like a meeting app's self-view ({keys['mirror']})")

        transport = QHBoxLayout()
        transport.setSpacing(8)
        transport.addWidget(self.start_button)
        transport.addWidget(self.pause_button)
        transport.addWidget(self.reset_button)
        transport.addStretch(1)
        transport.addWidget(self.preview_mirror_check)

        left = QVBoxLayout()
        left.setContentsMargins(16, 16, 8, 16)
        left.setSpacing(10)
        left.addWidget(self.banners)
        left.addWidget(self.preview, 1)
        left.addLayout(transport)

        # -- right: settings panel ---------------------------------------------
        self.portrait_picker = PortraitPicker()

        self.mode_combo = QComboBox()
        for mid, label in MODES:
            self.mode_combo.addItem(label, mid)
        self.camera_combo = DeviceCombo("No camera found")
        self.camera_combo.setObjectName("cameraCombo")
        self.mic_combo = DeviceCombo("No microphone found")
        self.mic_combo.setObjectName("micCombo")
        self.video_button = QPushButton("Video…")
        self.video_button.setObjectName("videoButton")
        self.video_button.setToolTip("Drive the avatar with a video file instead of a webcam "
                                     "(it loops); the fetched demo clip is in the camera list")
        camera_row = QHBoxLayout()
        camera_row.setSpacing(6)
        camera_row.addWidget(self.camera_combo, 1)
        camera_row.addWidget(self.video_button)
        inp = _form()
        inp.addRow("Mode", self.mode_combo)
        inp.addRow("Camera", camera_row)
        inp.addRow("Microphone", self.mic_combo)

        self.vcam_check = QCheckBox("Virtual camera")
        self.vcam_check.setToolTip("Publish the avatar as a webcam for Zoom, Teams, Meet and OBS")
        self.vcam_status = QLabel("Off")
        self.vcam_status.setObjectName("vcamStatus")
        self.vcam_status.setProperty("state", "off")
        self.vcam_status.setWordWrap(True)
        self.vcam_fix_button = QPushButton("How to install…")
        self.vcam_fix_button.setObjectName("linkButton")
        self.vcam_fix_button.setVisible(False)
        self.output_mirror_check = QCheckBox("Mirror output")
        self.output_mirror_check.setToolTip(
            "Flip what the meeting receives. Usually off: meeting apps mirror only your self-view")
        self.size_combo = QComboBox()
        for w, h in OUTPUT_SIZES:
            self.size_combo.addItem(f"{w} × {h}", (w, h))
        status = QVBoxLayout()
        status.setSpacing(2)
        status.addWidget(self.vcam_status)
        status.addWidget(self.vcam_fix_button, 0, Qt.AlignmentFlag.AlignLeft)
        out = _form()
        out.addRow(self.vcam_check)
        out.addRow("Status", status)
        out.addRow("Resolution", self.size_combo)
        out.addRow(self.output_mirror_check)
        self.vmic = VirtualMicControl()
        out.addRow(self.vmic)

        self.gains_panel = GainsPanel()

        self.generator_combo = QComboBox()
        for gid, label in GENERATORS:
            self.generator_combo.addItem(label, gid)
        self.generator_combo.setToolTip(
            "Knot Forcing: the neural generator. Guide only: the motion warp alone, "
            "real time on any CPU")
        self.device_combo = QComboBox()
        for did, label in COMPUTE_DEVICES:
            self.device_combo.addItem(label, did)
        eng = _form()
        eng.addRow("Generator", self.generator_combo)
        eng.addRow("Compute", self.device_combo)

        keys_form = _form()
        keys_form.setVerticalSpacing(4)
        for hk in HOTKEYS:
            cap = QLabel(keys[hk.id])
            cap.setObjectName("keycap")
            keys_form.addRow(hk.label, cap)

        panel = QWidget()
        panel.setObjectName("panel")
        pl = QVBoxLayout(panel)
        pl.setContentsMargins(8, 16, 16, 16)
        pl.setSpacing(12)
        pl.addWidget(_section("Portrait", self.portrait_picker))
        pl.addWidget(_section("Input", inp))
        pl.addWidget(_section("Output", out))
        pl.addWidget(_section("Motion", self.gains_panel))
        pl.addWidget(_section("Engine", eng))
        pl.addWidget(_section("Shortcuts", keys_form))
        pl.addStretch(1)
        # Combos size to their longest item by default ("Webcam + microphone",
        # a long camera name), which made the panel wider than its fixed
        # column and clipped its right edge: let them elide instead.
        for combo in panel.findChildren(QComboBox):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(8)
        scroll = QScrollArea()
        scroll.setObjectName("panelScroll")
        scroll.setWidget(panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # Never narrower than the panel's own minimum (fonts and styles vary
        # by platform): a fixed column narrower than its content clips it.
        scroll.setFixedWidth(max(PANEL_WIDTH, panel.minimumSizeHint().width()
                                 + scroll.verticalScrollBar().sizeHint().width()))
        scroll.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Expanding)

        central = QWidget()
        central.setObjectName("central")
        row = QHBoxLayout(central)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(0)
        row.addLayout(left, 1)
        row.addWidget(scroll)
        self.setCentralWidget(central)

        # -- status bar ---------------------------------------------------------
        self.state_label = QLabel("Stopped")
        self.state_label.setObjectName("stateLabel")
        self.stats_label = QLabel("")
        self.stats_label.setObjectName("muted")
        self.vcam_label = QLabel("Virtual camera: off")
        self.vcam_label.setObjectName("muted")
        sb = self.statusBar()
        sb.setSizeGripEnabled(False)
        sb.addWidget(self.state_label)
        sb.addWidget(self.stats_label, 1)
        sb.addPermanentWidget(self.vcam_label)

        self.menu_file = self.menuBar().addMenu("&File")
        self.menu_stream = self.menuBar().addMenu("&Stream")
        self.menu_help = self.menuBar().addMenu("&Help")

    # -- view helpers ---------------------------------------------------------
    def add_menu_actions(self, menu_name: str, actions: list[QAction | None]) -> None:
        menu = {"file": self.menu_file, "stream": self.menu_stream, "help": self.menu_help}[menu_name]
        for a in actions:
            if a is None:
                menu.addSeparator()
            else:
                menu.addAction(a)

    def set_state_text(self, state: str) -> None:
        running = state in ("running", "starting")
        self.start_button.setText({"starting": "Starting…", "stopping": "Stopping…"}.get(
            state, "Stop" if running else "Start"))
        self.start_button.setProperty("running", running)
        self.start_button.setEnabled(state != "stopping")
        self.start_button.style().unpolish(self.start_button)
        self.start_button.style().polish(self.start_button)
        self.state_label.setText(state.capitalize())
        self.pause_button.setEnabled(state == "running")
        self.reset_button.setEnabled(state == "running")

    def set_vcam_text(self, state: str, text: str, detail: str = "") -> None:
        self.vcam_status.setText(text)
        self.vcam_status.setToolTip(detail or text)
        self.vcam_status.setProperty("state", state)
        self.vcam_status.style().unpolish(self.vcam_status)
        self.vcam_status.style().polish(self.vcam_status)
        self.vcam_fix_button.setVisible(state == "error")
        self.vcam_label.setText(f"Virtual camera: {text}")

    # -- drag and drop anywhere in the window ----------------------------------
    def _drop_path(self, event: QDragEnterEvent | QDropEvent) -> str:
        md = event.mimeData()
        for url in md.urls() if md.hasUrls() else []:
            if url.isLocalFile() and is_image_path(url.toLocalFile()):
                return url.toLocalFile()
        return ""

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._drop_path(event):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = self._drop_path(event)
        if path:
            event.acceptProposedAction()
            self.file_dropped.emit(path)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.closing.emit(event)
        super().closeEvent(event)
