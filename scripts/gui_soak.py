#!/usr/bin/env python
"""Run the real window for N minutes on a real X server and report (issue 13).

    xvfb-run -a -s "-screen 0 1280x800x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python scripts/gui_soak.py --minutes 10 --out /tmp/gui_soak

Streams the fetched demo clip through the real session to an in-memory
virtual camera, with the preview painting live. Prints once a minute the
frames painted, the preview and virtual-camera rate, RSS and the refcount
of None (the PySide6 6.12 leak killed the window at ~80 s); saves a final
screenshot. Exit 0 when the window is alive and still painting at the end.

``--early-close N``: instead, N times the real app (`run_app`, a scratch
HOME) is started, Start pressed and the window closed 0-1 s later (random);
each must end within 30 s. Prints one JSON line per try; exit 1 if one hung.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="/tmp/gui_soak")
    ap.add_argument("--early-close", type=int, default=0, metavar="N",
                    help="close the window 0-1 s after Start, N times (each a fresh app)")
    a = ap.parse_args()
    if a.early_close:
        return _early_close(a.early_close)
    from kf_desktop.data import data_path
    from kf_desktop.vcam_memory import MemoryVcam
    from tests.ui.conftest import CLIP, file_services
    from tests.ui.xvfb_window import grab, make, pump
    from ui.app import create_application

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    app = create_application()
    vc = MemoryVcam(name="kf_gui_soak", device_name="/dev/video10")
    vc.register()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ctl = make(file_services(data_path(CLIP), vc.name), Path(tmp), "soak")
        ctl.bridge.start()
        t0 = time.monotonic()
        last_frames, last_vcam, last_t = 0, 0, t0
        while time.monotonic() - t0 < a.minutes * 60:
            pump(app, 60.0 if a.minutes >= 1 else a.minutes * 60)
            now = time.monotonic()
            frames = ctl.window.preview.frames_shown
            vcam = vc.last.count if vc.instances else 0
            row = {"t_min": round((now - t0) / 60, 1), "painted": frames,
                   "preview_fps": round((frames - last_frames) / (now - last_t), 1),
                   "vcam_fps": round((vcam - last_vcam) / (now - last_t), 1),
                   "rss_mb": round(_rss_mb(), 1), "none_refs": sys.getrefcount(None),
                   "state": ctl.bridge.state}
            rows.append(row)
            print(json.dumps(row), flush=True)
            last_frames, last_vcam, last_t = frames, vcam, now
        grab(ctl, out / "window-after-soak.png")
        alive = ctl.bridge.state == "running" and rows and rows[-1]["preview_fps"] > 1
        ctl.shutdown()
    vc.unregister()
    print(json.dumps({"alive": bool(alive), "minutes": a.minutes, "screenshot": str(out / "window-after-soak.png")}))
    return 0 if alive else 1


def _early_close(tries: int) -> int:
    import os
    import random
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    hung = 0
    with tempfile.TemporaryDirectory() as home:
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=f"{home}/.config",
                   XDG_DATA_HOME=f"{home}/.local/share", PYTHONPATH=str(repo))
        for i in range(tries):
            delay = round(random.uniform(0.0, 1.0), 2)
            try:
                r = subprocess.run([sys.executable, "-m", "tests.ui.early_close", str(delay)],
                                   cwd=repo, env=env, capture_output=True, text=True, timeout=30)
                row = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else \
                    {"delay": delay, "rc": r.returncode, "stderr": r.stderr[-500:]}
            except subprocess.TimeoutExpired:
                row = {"delay": delay, "hung": True}
                hung += 1
            print(json.dumps({"try": i + 1, **row}), flush=True)
    print(json.dumps({"early_close_tries": tries, "hung": hung}))
    return 1 if hung else 0


if __name__ == "__main__":
    sys.exit(main())
