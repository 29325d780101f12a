"""Non-blocking banners: a message, what to do about it, and buttons that do
it. They stack above the preview, one per code (a repeat replaces the old
one), and never take focus or stop the stream. No traceback dialogs."""

from __future__ import annotations

from typing import Callable

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy,
                               QToolButton, QVBoxLayout, QWidget)

Action = tuple[str, Callable[[], None]]

_ICONS = {"error": "\u2716", "warning": "\u26a0", "info": "\u2139"}


def _sentence(text: str) -> str:
    text = text.strip()
    return text[:1].upper() + text[1:] if text else text


class Banner(QFrame):
    dismissed = Signal(str)  # code
    expired = Signal(object)  # self, when its expiry timer ran out

    def __init__(self, level: str, code: str, message: str, hint: str = "",
                 actions: list[Action] | None = None, parent: QWidget | None = None,
                 detail: str = "") -> None:
        super().__init__(parent)
        self.level, self.code, self.message, self.hint = level, code, message, hint
        self.setObjectName("banner")
        self.setProperty("level", level)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)
        self.setFocusPolicy(Qt.FocusPolicy.NoFocus)

        icon = QLabel(_ICONS.get(level, _ICONS["info"]))
        icon.setObjectName("bannerIcon")
        icon.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignHCenter)
        icon.setFixedWidth(22)

        text = QVBoxLayout()
        text.setSpacing(2)
        self.message_label = QLabel(_sentence(message))
        self.message_label.setObjectName("bannerMessage")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail = detail
        if detail:
            self.message_label.setToolTip(detail)
        text.addWidget(self.message_label)
        self.hint_label = QLabel(_sentence(hint))
        self.hint_label.setObjectName("bannerHint")
        self.hint_label.setWordWrap(True)
        self.hint_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_label.setVisible(bool(hint))
        text.addWidget(self.hint_label)

        row = QHBoxLayout(self)
        row.setContentsMargins(12, 8, 8, 8)
        row.setSpacing(10)
        row.addWidget(icon)
        row.addLayout(text, 1)
        self.buttons: dict[str, QPushButton] = {}
        for label, callback in actions or []:
            b = QPushButton(label)
            b.setObjectName("bannerAction")
            b.setFocusPolicy(Qt.FocusPolicy.NoFocus)
            b.setCursor(Qt.CursorShape.PointingHandCursor)
            b.clicked.connect(lambda _checked=False, f=callback: f())  # not clicked's bool
            row.addWidget(b, 0, Qt.AlignmentFlag.AlignVCenter)
            self.buttons[label] = b
        close = QToolButton()
        close.setObjectName("bannerClose")
        close.setText("\u2715")
        close.setToolTip("Dismiss")
        close.setAutoRaise(True)
        close.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        close.clicked.connect(lambda: self.dismissed.emit(self.code))
        row.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)

    def expire_after(self, ms: int) -> None:
        # A child timer dies with the banner, so it can never fire for a
        # banner that is gone (a context-object singleShot has been seen to).
        timer = QTimer(self)
        timer.setSingleShot(True)
        timer.timeout.connect(self._on_expired)
        timer.start(ms)

    def _on_expired(self) -> None:
        self.expired.emit(self)


class BannerArea(QWidget):
    """A vertical stack of banners, newest on top, at most ``max_banners``."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None, max_banners: int = 3,
                 info_timeout_ms: int = 4000) -> None:
        super().__init__(parent)
        self.setObjectName("bannerArea")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(6)
        self._banners: dict[str, Banner] = {}
        self.max_banners = max_banners
        self.info_timeout_ms = info_timeout_ms
        self.setVisible(False)

    def show_banner(self, level: str, code: str, message: str, hint: str = "",
                    actions: list[Action] | None = None, detail: str = "") -> Banner:
        old = self._banners.get(code)
        if old is not None and (old.level, old.message, old.hint) == (level, message, hint):
            return old  # a repeat (e.g. every frame): keep the one on screen
        self.dismiss(code)
        b = Banner(level, code, message, hint, actions, self, detail)
        b.dismissed.connect(self.dismiss)
        self._layout.insertWidget(0, b)
        self._banners[code] = b
        while len(self._banners) > self.max_banners:
            # make room: the oldest passing note first, then the oldest problem
            infos = [c for c, x in self._banners.items() if x.level == "info" and c != code]
            self.dismiss(infos[0] if infos else next(iter(self._banners)))
        if level == "info" and self.info_timeout_ms > 0:
            b.expired.connect(self._expire)
            b.expire_after(self.info_timeout_ms)
        self.setVisible(True)
        self.changed.emit()
        return b

    def _expire(self, b: Banner) -> None:
        if self._banners.get(b.code) is b:
            self.dismiss(b.code)

    def dismiss(self, code: str) -> None:
        b = self._banners.pop(code, None)
        if b is None:
            return
        b.hide()
        self._layout.removeWidget(b)
        b.deleteLater()
        self.setVisible(bool(self._banners))
        self.changed.emit()

    def clear(self) -> None:
        for code in list(self._banners):
            self.dismiss(code)

    def banner(self, code: str) -> Banner | None:
        return self._banners.get(code)

    def codes(self) -> list[str]:
        return list(self._banners)
