"""Portrait picker: the current photo, a file dialog, drag and drop, and the
recent photos as thumbnails.

The picker only *asks* for a portrait (``portrait_requested``); it shows a
new one as current when the bridge says the photo was accepted, so a photo
without a usable face never replaces the one in use. Thumbnails are decoded
off the GUI thread (a 20-megapixel JPEG takes a while).
"""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from kf_desktop.input_path import is_regular_file
from PySide6.QtCore import QObject, QSize, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QIcon, QImage, QImageReader, QPixmap
from PySide6.QtWidgets import (QFileDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem,
                               QPushButton, QSizePolicy, QVBoxLayout, QWidget)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
FILE_FILTER = "Photos (*.png *.jpg *.jpeg *.bmp *.webp *.tif *.tiff);;All files (*)"


def load_thumbnail(path: str, size: int) -> QImage:
    """Decode ``path`` scaled to fit ``size`` x ``size`` (any thread); a null
    image for anything that is not a regular file (a FIFO would block the
    decoding thread, and the window's shutdown that waits for it, for ever)."""
    if not is_regular_file(path):
        return QImage()
    reader = QImageReader(path)
    reader.setAutoTransform(True)  # EXIF rotation, as phones store portraits
    src = reader.size()
    if src.isValid() and max(src.width(), src.height()) > 2 * size:
        reader.setScaledSize(src.scaled(2 * size, 2 * size, Qt.AspectRatioMode.KeepAspectRatio))
    img = reader.read()
    if img.isNull():
        return img
    return img.scaled(size, size, Qt.AspectRatioMode.KeepAspectRatio,
                      Qt.TransformationMode.SmoothTransformation)


class ThumbnailLoader(QObject):
    loaded = Signal(str, int, QImage)  # path, size, image (null if unreadable)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ui-thumbs")
        self._cache: dict[tuple[str, int], QImage] = {}
        self._closed = False

    def request(self, path: str, size: int) -> None:
        key = (path, size)
        if key in self._cache:
            self.loaded.emit(path, size, self._cache[key])
            return

        def work() -> None:
            img = load_thumbnail(path, size)
            self._cache[key] = img
            if not self._closed:
                self.loaded.emit(path, size, img)

        if not self._closed:
            self._pool.submit(work)

    def shutdown(self) -> None:
        # Wait for a decode in progress (short), so nothing emits on a
        # deleted object after the window is gone.
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)


def is_image_path(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


class PortraitPicker(QWidget):
    portrait_requested = Signal(str)
    forget_requested = Signal(str)

    THUMB = 88
    RECENT = 52

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self._current = ""
        self._pending = ""
        self._recent: list[str] = []
        self.thumbs = ThumbnailLoader(self)
        self.thumbs.loaded.connect(self._on_thumb)

        self.thumb_label = QLabel()
        self.thumb_label.setObjectName("portraitThumb")
        self.thumb_label.setFixedSize(self.THUMB, self.THUMB)
        self.thumb_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.name_label = QLabel("No portrait")
        self.name_label.setObjectName("portraitName")
        self.name_label.setWordWrap(True)
        self.status_label = QLabel("Drop a photo here")
        self.status_label.setObjectName("muted")
        self.status_label.setWordWrap(True)
        self.choose_button = QPushButton("Choose photo…")
        self.choose_button.setToolTip("Pick a photo with one clearly visible face (Ctrl+O)")
        self.choose_button.clicked.connect(self.choose_file)

        info = QVBoxLayout()
        info.setSpacing(4)
        info.addWidget(self.name_label)
        info.addWidget(self.status_label)
        info.addStretch(1)
        info.addWidget(self.choose_button, 0, Qt.AlignmentFlag.AlignLeft)
        top = QHBoxLayout()
        top.setSpacing(12)
        top.addWidget(self.thumb_label)
        top.addLayout(info, 1)

        self.recent_list = QListWidget()
        self.recent_list.setObjectName("recentPortraits")
        self.recent_list.setViewMode(QListWidget.ViewMode.IconMode)
        self.recent_list.setFlow(QListWidget.Flow.LeftToRight)
        self.recent_list.setWrapping(False)
        self.recent_list.setMovement(QListWidget.Movement.Static)
        self.recent_list.setIconSize(QSize(self.RECENT, self.RECENT))
        self.recent_list.setGridSize(QSize(self.RECENT + 8, self.RECENT + 8))
        self.recent_list.setFixedHeight(self.RECENT + 12)
        self.recent_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.recent_list.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.recent_list.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.recent_list.setToolTip("Recent portraits: click to use one again")
        self.recent_list.itemClicked.connect(self._on_recent_clicked)
        self.recent_caption = QLabel("Recent")
        self.recent_caption.setObjectName("caption")

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(8)
        lay.addLayout(top)
        lay.addWidget(self.recent_caption)
        lay.addWidget(self.recent_list)

    # -- API -----------------------------------------------------------------
    @property
    def current(self) -> str:
        return self._current

    def set_current(self, path: str) -> None:
        """The portrait in use (after the bridge accepted it)."""
        self._current = path
        self._pending = ""
        self.name_label.setText(Path(path).name if path else "No portrait")
        self.name_label.setToolTip(path)
        self.status_label.setText("Drop a photo here to switch")
        self.choose_button.setEnabled(True)
        if path:
            self.thumbs.request(path, self.THUMB)

    def set_checking(self, path: str) -> None:
        self._pending = path
        self.status_label.setText(f"Checking {Path(path).name}…")

    def set_rejected(self, path: str, reason: str) -> None:
        self._pending = ""
        self.status_label.setText(f"{Path(path).name} was not used")
        self.status_label.setToolTip(reason)

    def set_recent(self, paths: list[str]) -> None:
        self._recent = list(paths)
        self.recent_list.clear()
        for p in paths:
            item = QListWidgetItem()
            item.setData(Qt.ItemDataRole.UserRole, p)
            item.setToolTip(p)
            item.setSizeHint(QSize(self.RECENT + 8, self.RECENT + 8))
            self.recent_list.addItem(item)
            self.thumbs.request(p, self.RECENT)
        self.recent_caption.setVisible(bool(paths))
        self.recent_list.setVisible(bool(paths))

    def choose_file(self) -> None:
        start = str(Path(self._current).parent) if self._current else str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Choose a portrait photo", start, FILE_FILTER)
        if path:
            self.portrait_requested.emit(path)

    # -- thumbnails ------------------------------------------------------------
    def _on_thumb(self, path: str, size: int, img: QImage) -> None:
        if size == self.THUMB and path == self._current:
            if img.isNull():
                self.thumb_label.setText("?")
            else:
                self.thumb_label.setPixmap(QPixmap.fromImage(img))
        elif size == self.RECENT:
            for i in range(self.recent_list.count()):
                item = self.recent_list.item(i)
                if item.data(Qt.ItemDataRole.UserRole) == path and not img.isNull():
                    item.setIcon(QIcon(QPixmap.fromImage(img)))

    def _on_recent_clicked(self, item: QListWidgetItem) -> None:
        path = item.data(Qt.ItemDataRole.UserRole)
        if path and path != self._current:
            if not Path(path).exists():
                self.forget_requested.emit(path)
                return
            self.portrait_requested.emit(path)

    # -- drag and drop ---------------------------------------------------------
    @staticmethod
    def _dropped_path(event: QDragEnterEvent | QDropEvent) -> str:
        md = event.mimeData()
        if md.hasUrls():
            for url in md.urls():
                if url.isLocalFile() and is_image_path(url.toLocalFile()):
                    return url.toLocalFile()
        return ""

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._dropped_path(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        path = self._dropped_path(event)
        if path:
            event.acceptProposedAction()
            self.portrait_requested.emit(path)
