"""The real window on a real X server: Xvfb + the xcb platform plugin (not
offscreen), streaming, with screenshots saved under out/ui/ for a person to
look at."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PySide6.QtGui import QImage

from tests.ui.conftest import REPO
from ui.pause_frame import qimage_to_rgb

OUT = REPO / "out" / "ui"


def _image(path):
    return qimage_to_rgb(QImage(str(path)))


def test_real_window_under_xvfb_saves_screenshots(xvfb):
    env = dict(os.environ, DISPLAY=xvfb, QT_QPA_PLATFORM="xcb", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "tests.ui.xvfb_window", str(OUT)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["platform"] == "xcb"
    assert result["frames_shown"] >= 40 and result["vcam_frames"] >= 40
    assert "fps" in result["overlay"]
    assert {"no_camera", "vcam_missing"} <= set(result["banners"]) or \
        result["banners"] == ["no_camera"]  # a machine with a real virtual camera driver
    for name in ("window-live.png", "window-paused.png", "window-banners.png"):
        img = _image(OUT / name)
        assert img.shape == (800, 1280, 3), name
        assert img.std() > 20, name  # a rendered window, not a blank grab
    live = _image(OUT / "window-live.png")
    preview = live[120:600, 100:800]
    assert preview.std() > 30  # the avatar is in the preview
