"""Layering rules of DESIGN section 2, checked in fresh interpreters."""

import subprocess
import sys


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_engine_imports_no_qt_no_devices_no_app():
    mods = _modules_after("import engine")
    assert not mods & {"PySide6", "cv2", "mediapipe", "sounddevice", "pyvirtualcam",
                       "kf_desktop", "ui"}


def test_ui_window_imports_no_torch_or_mediapipe():
    mods = _modules_after("import ui.main_window, ui.session_bridge")
    assert "torch" not in mods and "mediapipe" not in mods
