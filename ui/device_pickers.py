"""Camera and microphone pickers that follow devices as they come and go.

``DeviceWatcher`` asks the device layer for the lists every few seconds on a
worker thread and emits only when something changed. Listing cameras is
cheap on Linux (sysfs) but means opening each one on Windows/macOS, which
must not happen every few seconds while a camera is streaming: there the
cameras are listed at start, when the camera list is opened, and on "Check
again" (``poll_cameras=False``). ``DeviceCombo``
shows devices by name and keeps the user's choice by name: indices move
when devices are plugged in, names mostly do not. A remembered device that is
not connected stays selected, marked "(not connected)", so unplugging a
camera never silently switches to another one.
"""

from __future__ import annotations

import concurrent.futures
import logging
import platform
from typing import Callable

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QComboBox, QWidget

from ui.options import DeviceEntry

log = logging.getLogger(__name__)

ListFn = Callable[[], list[DeviceEntry]]


class DeviceWatcher(QObject):
    cameras_changed = Signal(list)
    microphones_changed = Signal(list)

    def __init__(self, list_cameras: ListFn, list_microphones: ListFn,
                 interval_ms: int = 3000, parent: QObject | None = None,
                 poll_cameras: bool | None = None) -> None:
        super().__init__(parent)
        self.poll_cameras = platform.system() == "Linux" if poll_cameras is None else poll_cameras
        self._list_cameras = list_cameras
        self._list_microphones = list_microphones
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ui-devices")
        self._in_flight = False
        self._again: str | None = None  # a refresh asked for while one ran
        self._closed = False
        self.cameras: list[DeviceEntry] | None = None
        self.microphones: list[DeviceEntry] | None = None
        self.errors: dict[str, str] = {}
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self._polled.connect(self._on_polled)

    _polled = Signal(object, object)  # internal: worker -> GUI thread

    def start(self) -> None:
        self.refresh()
        self.timer.start()

    def refresh(self, cameras: bool = True) -> None:
        """List devices now (on the worker thread); if a listing is running,
        right after it."""
        if self._closed:
            return
        if self._in_flight:
            if cameras or not self._again:
                self._again = "cameras" if cameras else "mics"
            return
        self._in_flight = True
        self._pool.submit(self._poll, cameras)

    def _tick(self) -> None:
        self.refresh(cameras=self.poll_cameras)

    def _poll(self, cameras: bool = True) -> None:
        cams = self._safe("cameras", self._list_cameras) if cameras else None
        mics = self._safe("microphones", self._list_microphones)
        if not self._closed:
            self._polled.emit(cams, mics)

    def _safe(self, what: str, fn: ListFn) -> list[DeviceEntry] | None:
        try:
            result = list(fn())
        except Exception as e:  # a broken driver must not take the window down
            if self.errors.get(what) != str(e):
                log.warning("listing %s failed: %s", what, e)
            self.errors[what] = str(e)
            return None
        self.errors.pop(what, None)
        return result

    def _on_polled(self, cams: list | None, mics: list | None) -> None:
        self._in_flight = False
        if self._again:
            again, self._again = self._again, None
            self.refresh(cameras=again == "cameras")
        if cams is not None and cams != self.cameras:
            self.cameras = cams
            self.cameras_changed.emit(cams)
        if mics is not None and mics != self.microphones:
            self.microphones = mics
            self.microphones_changed.emit(mics)

    def shutdown(self) -> None:
        """Stop polling; waits for a listing in progress (at most a second or
        two) so it cannot report to a window that is gone."""
        self._closed = True
        self.timer.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)


class DeviceCombo(QComboBox):
    """A combo of DeviceEntry items, selection remembered by name."""

    selection_changed = Signal(object)  # DeviceEntry | None
    popup_opening = Signal()  # a chance to refresh the list first

    def __init__(self, none_text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.none_text = none_text
        self._wanted = ""  # the name the user chose (or the settings remembered)
        self._devices: list[DeviceEntry] = []
        self._updating = False
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        self.currentIndexChanged.connect(self._on_index)
        self.set_devices([])

    @property
    def wanted_name(self) -> str:
        return self._wanted

    def set_wanted(self, name: str) -> None:
        self._wanted = name or ""
        self.set_devices(self._devices)

    def set_devices(self, devices: list[DeviceEntry]) -> None:
        before = self.selected()
        self._devices = list(devices)
        self._updating = True
        try:
            self.clear()
            if not devices and not self._wanted:
                self.addItem(self.none_text, None)
            for d in devices:
                self.addItem(d.name, d)
                self.setItemData(self.count() - 1, d.detail or d.name, 3)  # ToolTipRole
            names = [d.name for d in devices]
            if self._wanted and self._wanted not in names:
                # Keep the choice: key None means "remembered, not plugged in".
                self.addItem(f"{self._wanted} (not connected)",
                             DeviceEntry(None, self._wanted, "not connected"))
                self.setCurrentIndex(self.count() - 1)
            elif self._wanted:
                self.setCurrentIndex(names.index(self._wanted))
            else:
                self.setCurrentIndex(0)
        finally:
            self._updating = False
        after = self.selected()
        if (after and after.name) != (before and before.name):
            self.selection_changed.emit(after)

    def selected(self) -> DeviceEntry | None:
        """The chosen device; ``key`` is None when it is remembered but not
        connected; None when there is nothing to choose."""
        d = self.currentData()
        return d if isinstance(d, DeviceEntry) else None

    def devices(self) -> list[DeviceEntry]:
        return list(self._devices)

    def showPopup(self) -> None:
        self.popup_opening.emit()
        super().showPopup()

    def _on_index(self, _index: int) -> None:
        if self._updating:
            return
        d = self.selected()
        if d is not None:
            self._wanted = d.name
        self.selection_changed.emit(d)
