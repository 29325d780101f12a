"""Shared fixtures. Tests use real components: real mediapipe on real faces,
real files fetched by `kf-desktop data fetch` (the test command runs it first)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def portrait_path() -> Path:
    """The default portrait (skimage astronaut, public domain)."""
    return REPO / "resources" / "portraits" / "astronaut.png"


@pytest.fixture(scope="session")
def data_file():
    """Return the path of a fetched data file, e.g. data_file('cap13_edit2.mp4')."""
    from kf_desktop.data import data_path

    return data_path
