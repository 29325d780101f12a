"""Issue 13 item 14: launching. `kf-desktop` alone opens the window where
there is a display (a real X server here) and says what to run where there
is none; `kf-desktop gui PHOTO` and `kf-desktop-gui PHOTO` (the menu entry,
"Open with") open the window with that portrait."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import cv2

from tests.ui.conftest import REPO, file_services


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    home = tmp_path / "home"
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"), PYTHONPATH=str(REPO), **extra)
    return env


def _kf(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kf_desktop", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_no_arguments_without_a_display_says_what_to_run(tmp_path):
    res = _kf(env=_env(tmp_path))
    assert res.returncode == 2
    assert "no display" in res.stderr
    for cmd in ("kf-desktop demo", "kf-desktop run", "kf-desktop --help"):
        assert cmd in res.stderr
    assert "Traceback" not in res.stderr


def test_no_arguments_with_a_display_opens_the_window(tmp_path, xvfb):
    env = _env(tmp_path, DISPLAY=xvfb, QT_QPA_PLATFORM="xcb", KF_GUI_QUIT_AFTER="3")
    res = _kf(env=env)
    assert res.returncode == 0, res.stderr[-1500:]
    assert "opening the window" in res.stderr
    logs = list((tmp_path / "home" / ".local" / "share" / "kf-desktop" / "logs").glob("*.log"))
    assert logs and "starting the desktop window (Qt platform xcb)" in logs[0].read_text()


def test_gui_accepts_a_photo(tmp_path, portrait_path):
    env = _env(tmp_path, QT_QPA_PLATFORM="offscreen")
    res = _kf("gui", str(portrait_path), "--check", env=env)
    assert res.returncode == 0, res.stderr[-1500:]
    res = _kf("gui", str(tmp_path / "missing.png"), "--check", env=env)
    assert res.returncode == 2 and "no portrait photo at" in res.stderr


def test_the_menu_entry_command_exists_and_takes_the_photo(tmp_path, portrait_path):
    desktop = (REPO / "packaging" / "kf-desktop.desktop").read_text().splitlines()
    assert "Exec=kf-desktop-gui %f" in desktop
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["gui-scripts"]
    assert scripts["kf-desktop-gui"] == "kf_desktop.cli:gui_main"
    code = ("import sys; sys.argv[1:] = [sys.argv[1], '--check']; "
            "from kf_desktop.cli import gui_main; sys.exit(gui_main())")
    res = subprocess.run([sys.executable, "-c", code, str(portrait_path)], cwd=REPO,
                         env=_env(tmp_path, QT_QPA_PLATFORM="offscreen"),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]


def test_the_window_opens_with_the_photo_it_was_given(qtbot, make_window, clip_path,
                                                      portrait_path, tmp_path):
    other = tmp_path / "astronaut-flipped.png"
    cv2.imwrite(str(other), cv2.imread(str(portrait_path))[:, ::-1])
    ctl = make_window(file_services(clip_path, None), portrait=str(other))
    qtbot.waitUntil(lambda: ctl.settings.portrait == str(other), timeout=90_000)
    assert ctl.bridge.portrait_path == str(other)
    assert ctl.window.portrait_picker.current == str(other)
