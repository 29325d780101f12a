"""`kf-desktop gui`: the QApplication, logging, crash reporting, the window.

An exception that escapes anywhere (a slot, a thread) is logged with its
traceback and shown as a banner; the user never sees a traceback dialog and
the stream keeps running.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import traceback
from pathlib import Path

from PySide6.QtCore import QStandardPaths, Qt, QTimer
from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from ui import qt_guard
from ui.logs import LogSetup, setup_logging
from ui.style import apply_style

log = logging.getLogger(__name__)

APP_NAME = "kf-desktop"
ICON_DIR = Path(__file__).resolve().parent.parent / "resources" / "icons"


def log_dir() -> Path:
    """~/.local/share/kf-desktop/logs, %LOCALAPPDATA%\\kf-desktop\\logs,
    ~/Library/Application Support/kf-desktop/logs."""
    base = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.GenericDataLocation)
    return Path(base or Path.home() / ".local" / "share") / APP_NAME / "logs"


def app_icon() -> QIcon:
    icon = QIcon()
    for name in ("kf-desktop.svg", "kf-desktop-256.png", "kf-desktop-64.png", "kf-desktop-32.png"):
        p = ICON_DIR / name
        if p.exists():
            icon.addFile(str(p))
    return icon


def create_application(argv: list[str] | None = None) -> QApplication:
    app = QApplication.instance()
    if app is None:
        app = QApplication(argv if argv is not None else sys.argv[:1])
    from kf_desktop import __version__

    app.setOrganizationName(APP_NAME)
    app.setApplicationName(APP_NAME)
    app.setApplicationDisplayName("kf-desktop")
    app.setApplicationVersion(__version__)
    app.setDesktopFileName(APP_NAME)  # matches packaging/kf-desktop.desktop (Wayland icon)
    app.setWindowIcon(app_icon())
    apply_style(app)
    return app


def install_crash_reporting(report) -> None:
    """Log uncaught exceptions (GUI thread and other threads) and hand a
    one-line summary to ``report`` (thread-safe), instead of a dialog."""

    def hook(exc_type, exc, tb) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            QApplication.quit()
            return
        log.error("uncaught exception:\n%s", "".join(traceback.format_exception(exc_type, exc, tb)))
        try:
            report(f"unexpected error: {exc_type.__name__}: {exc}")
        except Exception:
            pass

    sys.excepthook = hook
    threading.excepthook = lambda a: hook(a.exc_type, a.exc_value, a.exc_traceback)


def _check_display() -> None:
    """Without a display Qt aborts the process (qFatal); say what to do instead."""
    env = os.environ
    if sys.platform.startswith("linux") and not (env.get("QT_QPA_PLATFORM") or env.get("DISPLAY")
                                                 or env.get("WAYLAND_DISPLAY")):
        from kf_desktop.errors import UserError

        raise UserError("there is no display to open the window on (no DISPLAY or WAYLAND_DISPLAY)",
                        "run it inside a desktop session; for a headless check set "
                        "QT_QPA_PLATFORM=offscreen; for streaming without a window use "
                        "`kf-desktop run`")


def guard_binding() -> tuple[bool, str, str]:
    """Check the Qt binding (ui.qt_guard); on a leaking one, keep None alive
    so the window cannot abort, and say which version to install."""
    ok, detail, fix = qt_guard.check_binding()
    if not ok:
        protected = qt_guard.protect_none()
        log.error("%s; %s (fix: %s)", detail,
                  "None's reference count was raised out of its reach" if protected
                  else "nothing to protect on this Python", fix)
    return ok, detail, fix


def run_app(args: argparse.Namespace | None = None) -> int:
    from kf_desktop.opencv_quiet import quiet_opencv
    from ui.controller import Controller

    quiet_opencv()
    if QApplication.instance() is None:
        _check_display()
    app = create_application()
    logs: LogSetup = setup_logging(log_dir())
    log.info("starting the desktop window (Qt platform %s)", app.platformName())
    binding_ok, binding_detail, binding_fix = guard_binding()
    ctl = Controller(log_setup=logs, portrait=getattr(args, "portrait", None))
    # Quit on the close itself, not on Qt's last-window-closed logic (see
    # Controller._on_close); queued: after the close event has returned.
    ctl.closed.connect(app.quit, Qt.ConnectionType.QueuedConnection)
    install_crash_reporting(ctl.report_unexpected)
    if not binding_ok:
        ctl.notify("warning", "qt_binding", binding_detail, binding_fix)
    ctl.window.show()
    check = bool(getattr(args, "check", False))
    quit_after = float(os.environ.get("KF_GUI_QUIT_AFTER", "0") or 0)
    if check:
        # Prove that a window can be created and painted, then leave.
        app.processEvents()
        ok = ctl.window.isVisible()
        ctl.shutdown()
        logs.close()
        return 0 if ok else 1
    if quit_after > 0:
        QTimer.singleShot(int(quit_after * 1000), ctl.window.close)
    try:
        rc = app.exec()
    finally:
        ctl.shutdown()
        logs.close()
    return rc
