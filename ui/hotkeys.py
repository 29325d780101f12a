"""Keyboard shortcuts: one table, shown in the menus, tooltips and the
side panel, overridable in the settings file (``[hotkeys] pause=Ctrl+Shift+P``).

They work while the window has focus. System-wide hotkeys (while the meeting
app is in front) need per-OS APIs and are left for later.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QWidget


@dataclass(frozen=True)
class Hotkey:
    id: str
    label: str
    default: str  # QKeySequence portable text


HOTKEYS: tuple[Hotkey, ...] = (
    Hotkey("start_stop", "Start / stop", "Ctrl+Return"),
    Hotkey("pause", "Pause (privacy frame)", "Ctrl+P"),
    Hotkey("reset_pose", "Reset neutral pose", "Ctrl+R"),
    Hotkey("mirror", "Mirror preview", "Ctrl+M"),
)


def native_text(seq: str) -> str:
    """How the key reads on this OS (Ctrl on Linux/Windows, ⌘ on macOS)."""
    return QKeySequence(seq).toString(QKeySequence.SequenceFormat.NativeText)


def make_actions(parent: QWidget, handlers: dict[str, Callable[[], None]],
                 lookup: Callable[[str, str], str] | None = None) -> dict[str, QAction]:
    """One QAction per hotkey, added to ``parent`` so the shortcut works
    anywhere in the window. ``lookup(id, default)`` returns the configured key."""
    actions: dict[str, QAction] = {}
    for hk in HOTKEYS:
        key = lookup(hk.id, hk.default) if lookup else hk.default
        act = QAction(hk.label, parent)
        act.setObjectName(f"action_{hk.id}")
        act.setShortcut(QKeySequence(key))
        act.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        act.setToolTip(f"{hk.label} ({native_text(key)})")
        if hk.id in handlers:
            act.triggered.connect(lambda _c=False, f=handlers[hk.id]: f())
        parent.addAction(act)
        actions[hk.id] = act
    return actions
