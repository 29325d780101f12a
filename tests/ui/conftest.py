"""Fixtures for the window tests: the real window and session, driven by the
fetched talking-head clip instead of a webcam and by an in-memory
pyvirtualcam backend instead of a virtual-camera driver."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from ui.options import DeviceEntry  # noqa: E402
from ui.services import Services, make_vcam, probe_vcam  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLIP = "cap13_edit2.mp4"
TEST_CAMERA = DeviceEntry(0, "Test clip camera", "cap13_edit2.mp4")


@pytest.fixture
def mem_vcam():
    from kf_desktop.vcam_memory import MemoryVcam

    vc = MemoryVcam(keep_last=8, name=f"kf_ui_mem_{os.getpid()}")
    vc.register()
    yield vc
    vc.unregister()


@pytest.fixture(scope="session")
def clip_path() -> Path:
    from kf_desktop.data import data_path

    return data_path(CLIP)


def file_services(clip: Path, vcam_backend: str | None, *,
                  cameras: list[DeviceEntry] | None = None,
                  source: Callable | None = None, **overrides) -> Services:
    """Services whose 'webcam' is the clip and whose virtual camera uses
    ``vcam_backend`` (an in-memory backend; None = whatever this OS has)."""
    from kf_desktop.sources import VideoFileSource

    cams = [TEST_CAMERA] if cameras is None else cameras
    kw = dict(
        list_cameras=lambda: list(cams),
        list_microphones=lambda: [],
        open_camera=source or (lambda entry, opts: VideoFileSource(clip, realtime=True, loop=True)),
        make_vcam=lambda opts, mirror: make_vcam(opts, mirror, backend=vcam_backend),
        probe_vcam=lambda opts: probe_vcam(opts, backend=vcam_backend),
        demo_clip=lambda: None,  # only the listed cameras, unless a test offers the clip
    )
    kw.update(overrides)
    return Services(**kw)


@pytest.fixture
def make_window(qtbot, tmp_path):
    """make_window(services, settings_path=None) -> Controller, shown, with
    its settings in an INI file under tmp_path; shut down after the test."""
    from ui.app import create_application
    from ui.controller import Controller
    from ui.settings_store import SettingsStore

    create_application()  # style, names; pytest-qt's QApplication is reused
    made: list[Controller] = []

    def make(services: Services, settings_path: Path | None = None,
             out_size: tuple[int, int] | None = (640, 360), portrait: str | None = None) -> Controller:
        path = settings_path or tmp_path / "settings.ini"
        store = SettingsStore.at(path)
        if out_size is not None and not path.exists():
            store.out_size = out_size
            store.sync()
        ctl = Controller(services, store, device_poll_ms=300, portrait=portrait)
        qtbot.addWidget(ctl.window)
        ctl.window.show()
        made.append(ctl)
        return ctl

    yield make
    for ctl in made:
        ctl.shutdown()
    stray = [t.name for t in threading.enumerate() if t.name.startswith("kf-") and t.is_alive()]
    assert not stray, f"session threads left running: {stray}"


@pytest.fixture
def xvfb():
    """A real X server (Xvfb) for the test: its DISPLAY, e.g. ':3'."""
    import shutil
    import subprocess

    exe = shutil.which("Xvfb")
    if exe is None:
        pytest.skip("Xvfb is not installed (apt install xvfb)")
    r, w = os.pipe()
    proc = subprocess.Popen([exe, "-displayfd", str(w), "-screen", "0", "1280x800x24",
                             "-nolisten", "tcp"], pass_fds=(w,), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(w)
    with os.fdopen(r) as f:
        display = f.readline().strip()  # Xvfb writes the display number once it is ready
    if not display:
        proc.kill()
        pytest.skip("Xvfb did not start")
    yield f":{display}"
    proc.terminate()
    proc.wait(10)
