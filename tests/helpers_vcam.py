"""The in-memory pyvirtualcam backend as a pytest fixture (DESIGN section 7).

    def test_x(mem_vcam):
        sink = VirtualCameraSink(320, 240, 30, backend=mem_vcam.name)
        ...
        cam = mem_vcam.last            # the backend instance pyvirtualcam made
        cam.count, cam.frames[-1], cam.send_times, cam.closed
"""

from __future__ import annotations

import pytest

from kf_desktop.vcam_memory import MemoryVcam

__all__ = ["MemoryVcam", "mem_vcam"]


@pytest.fixture
def mem_vcam():
    """A registered MemoryVcam; set ``.fail_after`` before starting a sink."""
    vc = MemoryVcam()
    vc.register()
    yield vc
    vc.unregister()
