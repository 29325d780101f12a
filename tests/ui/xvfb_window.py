"""Run the real window on a real X server (Xvfb + xcb) and save screenshots.

    DISPLAY=:99 QT_QPA_PLATFORM=xcb python -m tests.ui.xvfb_window OUT_DIR

1. window-live.png: streaming the fetched clip through the real session to an
   in-memory virtual camera, with the fps / latency overlay;
2. window-paused.png: the privacy pause;
3. window-banners.png: no webcam and no virtual-camera driver (the real
   pyvirtualcam on this machine), i.e. the banners a new user may meet.
Prints one JSON line with what it measured. Used by test_xvfb_screenshot.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from PySide6.QtGui import QGuiApplication

from kf_desktop.data import data_path
from kf_desktop.vcam_memory import MemoryVcam
from tests.ui.conftest import CLIP, file_services
from ui.app import create_application
from ui.controller import Controller
from ui.settings_store import SettingsStore


def pump(app, seconds: float, until=None) -> bool:
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        app.processEvents()
        if until is not None and until():
            return True
        time.sleep(0.01)
    return until is None


def grab(ctl: Controller, path: Path) -> None:
    # grabWindow reads the pixels back from the X server: what the user sees.
    img = QGuiApplication.primaryScreen().grabWindow(ctl.window.winId()).toImage()
    img.save(str(path))


def recent_photos(tmp: Path, clip: Path) -> list[str]:
    """Two more portraits for the 'recent' row: the astronaut flipped and a
    frame of the driving clip."""
    import cv2

    from ui.services import DEFAULT_PORTRAIT

    flipped = tmp / "astronaut-flipped.png"
    cv2.imwrite(str(flipped), cv2.imread(str(DEFAULT_PORTRAIT))[:, ::-1])
    cap = cv2.VideoCapture(str(clip))
    cap.set(cv2.CAP_PROP_POS_FRAMES, 60)
    ok, frame = cap.read()
    cap.release()
    still = tmp / "presenter.png"
    if ok:
        cv2.imwrite(str(still), frame)
    return [str(p) for p in (still, flipped) if p.exists()]


def make(services, tmp: Path, name: str, recent: list[str] = ()) -> Controller:
    store = SettingsStore.at(tmp / f"{name}.ini")
    store.out_size = (1280, 720)
    for p in recent:
        store.add_recent(p)
    store.sync()
    ctl = Controller(services, store, device_poll_ms=500)
    ctl.window.setGeometry(0, 0, 1280, 800)
    ctl.window.show()
    return ctl


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    app = create_application()
    clip = data_path(CLIP)
    vc = MemoryVcam(name="kf_xvfb_mem", device_name="/dev/video10")
    vc.register()
    result: dict = {"platform": app.platformName()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_p = Path(tmp)
        ctl = make(file_services(clip, vc.name), tmp_p, "live", recent_photos(tmp_p, clip))
        ctl.bridge.start()
        ok = pump(app, 90, lambda: ctl.window.preview.frames_shown >= 40)
        pump(app, 1.5)  # let the overlay and the status bar settle
        grab(ctl, out / "window-live.png")
        result.update(live_ok=ok, frames_shown=ctl.window.preview.frames_shown,
                      preview_fps=round(ctl.window.preview.fps(), 1),
                      vcam_frames=vc.last.count if vc.instances else 0,
                      overlay=ctl.window.preview.overlay_text(),
                      stats=ctl.window.stats_label.text())
        ctl.set_paused(True)
        pump(app, 0.5)
        grab(ctl, out / "window-paused.png")
        ctl.set_paused(False)
        ctl.shutdown()
        vc.unregister()  # pyvirtualcam tries every registered backend: leave only the OS's

        ctl = make(file_services(clip, None, cameras=[]), tmp_p, "banners")
        ctl.bridge.start()
        pump(app, 90, lambda: ctl.bridge.state == "running"
             and ctl.window.preview.frames_shown >= 10)
        pump(app, 1.0)
        grab(ctl, out / "window-banners.png")
        result["banners"] = ctl.window.banners.codes()
        ctl.shutdown()
    print(json.dumps(result))
    return 0 if result["live_ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
