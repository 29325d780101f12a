"""The real app (``ui.app.run_app``, as `kf-desktop gui` runs it) on a real X
server: press Start, close the window DELAY seconds later, and measure how
long the process takes to get out of its event loop and to finish.

    DISPLAY=:99 QT_QPA_PLATFORM=xcb python -m tests.ui.early_close DELAY

Prints one JSON line. Used by test_early_close.py and scripts/gui_soak.py
--early-close; run it with HOME pointing at a scratch folder (it uses the
real settings, devices and log folder, like the user's app).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from ui.app import create_application, run_app


def main(delay: float) -> int:
    create_application()  # run_app reuses it
    marks: dict[str, object] = {}

    def window():
        return next(w for w in QApplication.topLevelWidgets() if w.objectName() == "mainWindow")

    def press_start() -> None:
        marks["start"] = time.monotonic()
        window().start_button.click()  # what the user's click does
        QTimer.singleShot(int(delay * 1000), close)

    def close() -> None:
        marks["close"] = time.monotonic()
        marks["state_at_close"] = window().windowTitle() and _state()
        window().close()  # the title bar's close button sends the same close event

    def _state() -> str:
        w = window()
        return w.start_button.text()

    QTimer.singleShot(1500, press_start)  # once the window is up
    rc = run_app(argparse.Namespace())
    done = time.monotonic()
    close_t = marks.get("close")
    print(json.dumps({"delay": delay, "rc": rc, "button_at_close": marks.get("state_at_close"),
                      "run_app_after_close_s": round(done - close_t, 2) if close_t else None}),
          flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
