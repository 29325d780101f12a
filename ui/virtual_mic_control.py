"""The Output card's "Virtual microphone (in sync)" control (issue 11): the
checkbox, its status line and the A/V trim slider.

The status comes from the same places as the CLI's: before streaming, the
check `kf-desktop doctor` runs (``check_virtual_mic``: ready, or not
available with the fix); while streaming, the session snapshot's
``VirtualMicSink`` and held virtual camera stats (``vmic_summary``'s fields
and ``hold_summary``: live, the audio delay, the held video delay and its
jitter). Without a microphone in the input mode (webcam only) the control
says so and stays off; the user's choice is kept for when a mode with a
microphone comes back.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

NEEDS_MIC = ("Off: needs a microphone (webcam only has none); choose 'Webcam + microphone' "
             "or 'Microphone only'")
TRIM_STEP_MS = 5


def trim_text(ms: float) -> str:
    return f"{ms:+.0f} ms"


def snapshot_status(snap: dict) -> tuple[str, str] | None:
    """(state, text) of the running virtual microphone from a session
    snapshot, or None when the session has none."""
    from kf_desktop.audio.virtual_mic import vmic_summary
    from kf_desktop.av_delay import hold_summary

    vm = (snap.get("sinks") or {}).get("VirtualMicSink")
    if not isinstance(vm, dict):
        return None
    if vm.get("status") == "live":
        # the CLI status line's words: "+165 ms (trim +0), 0 underruns, drift +0 ppm"
        audio = (vmic_summary(snap) or "").removeprefix("virtual mic ")
        lines = [f"Live: {vm.get('device') or 'virtual microphone'}, audio {audio}"]
        hold = hold_summary(snap)
        if hold:
            lines.append(hold[0].upper() + hold[1:])
        return "on", "\n".join(lines)
    if vm.get("status") == "unavailable":
        text = f"Not available: {vm.get('detail') or 'the device could not be made'}"
        return "error", text + (f"\nFix: {vm['fix']}" if vm.get("fix") else "")
    return "off", f"Off: {vm.get('detail') or 'stopped'}"


class VirtualMicControl(QWidget):
    changed = Signal()  # the checkbox or the trim changed (by the user)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from kf_desktop.audio.virtual_mic import TRIM_MAX_MS, TRIM_MIN_MS, VMIC_DESCRIPTION

        self._wanted = False  # the user's choice, kept while the mode has no microphone
        self._mic_mode = True
        self._check_result: tuple[bool, str, str] | None = None
        self._running = False
        self.check = QCheckBox("Virtual microphone (in sync)")
        self.check.setObjectName("vmicCheck")
        self.check.setToolTip(
            f"Your microphone, delayed to match the avatar's lips, as the microphone "
            f"'{VMIC_DESCRIPTION}' for Zoom, Teams, Meet and OBS (the virtual camera then "
            "holds a constant delay)")
        self.status = QLabel("Off")
        self.status.setObjectName("vmicStatus")
        self.status.setProperty("state", "off")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.trim_slider = QSlider(Qt.Orientation.Horizontal)
        self.trim_slider.setObjectName("avTrimSlider")
        self.trim_slider.setRange(int(TRIM_MIN_MS), int(TRIM_MAX_MS))
        self.trim_slider.setSingleStep(TRIM_STEP_MS)
        self.trim_slider.setPageStep(25)
        self.trim_slider.setValue(0)
        self.trim_slider.setToolTip("Extra audio delay: right if the voice comes before the lips, "
                                    "left if after (default 0)")
        self.trim_label = QLabel(trim_text(0))
        self.trim_label.setMinimumWidth(56)
        trim_row = QHBoxLayout()
        trim_row.setSpacing(6)
        trim_row.addWidget(QLabel("A/V trim"))
        trim_row.addWidget(self.trim_slider, 1)
        trim_row.addWidget(self.trim_label)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(4)
        lay.addWidget(self.check)
        lay.addWidget(self.status)
        lay.addLayout(trim_row)
        self.check.toggled.connect(self._on_toggled)
        self.trim_slider.valueChanged.connect(self._on_trim)
        self._refresh()

    # -- values ---------------------------------------------------------------------
    @property
    def wanted(self) -> bool:
        """The user's choice (also while the mode has no microphone)."""
        return self._wanted

    def trim_ms(self) -> float:
        return float(self.trim_slider.value())

    def load(self, wanted: bool, trim_ms: float) -> None:
        """Settings in, without emitting ``changed``."""
        self._wanted = bool(wanted)
        self.check.blockSignals(True)
        self.check.setChecked(self._wanted and self._mic_mode)
        self.check.blockSignals(False)
        self.trim_slider.blockSignals(True)
        self.trim_slider.setValue(int(round(trim_ms)))
        self.trim_slider.blockSignals(False)
        self.trim_label.setText(trim_text(self.trim_ms()))
        self._refresh()

    def set_mic_mode(self, has_mic: bool) -> None:
        """The input mode has a microphone (or not: webcam only)."""
        self._mic_mode = bool(has_mic)
        self.check.blockSignals(True)
        self.check.setChecked(self._wanted and self._mic_mode)
        self.check.blockSignals(False)
        self.check.setEnabled(self._mic_mode)
        self._refresh()

    # -- status ---------------------------------------------------------------------
    def show_check(self, ok: bool, detail: str, fix: str) -> None:
        """The doctor's check (before streaming)."""
        self._check_result = (ok, detail, fix)
        if not self._running:
            self._refresh()

    def set_running(self, running: bool) -> None:
        self._running = bool(running)
        if not running:
            self._refresh()

    def show_snapshot(self, snap: dict) -> None:
        if not (self._running and self.check.isChecked()):
            return
        st = snapshot_status(snap)
        if st is None:  # asked for, but the session has no microphone
            st = ("off", "Off: no microphone in this stream")
        self._set(*st)

    def _refresh(self) -> None:
        if not self._mic_mode:
            self._set("off", NEEDS_MIC)
        elif not self.check.isChecked():
            self._set("off", "Off")
        elif self._check_result is None:
            self._set("off", "Checking…")
        else:
            ok, detail, fix = self._check_result
            if ok:
                self._set("off", f"Ready: {detail}" if detail else "Starts with the stream")
            else:
                self._set("error", f"Not available: {detail}" + (f"\nFix: {fix}" if fix else ""))
        self.trim_slider.setEnabled(self._mic_mode)

    def _set(self, state: str, text: str) -> None:
        self.status.setText(text)
        self.status.setToolTip(text)
        if self.status.property("state") != state:
            self.status.setProperty("state", state)
            self.status.style().unpolish(self.status)
            self.status.style().polish(self.status)

    # -- user -----------------------------------------------------------------------
    def _on_toggled(self, on: bool) -> None:
        self._wanted = bool(on)
        self._refresh()
        self.changed.emit()

    def _on_trim(self, value: int) -> None:
        self.trim_label.setText(trim_text(value))
        self.changed.emit()
