"""Weights that only ever produce non-finite values: the engine replaces
those frames by the guide and queues ``nonfinite_recovered`` events; the app
says so (render summary and exit 3 when no frame was the model's; the `run`
status line, and its exit 3 too). Real NaN weights through the real engine, the real CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine.config import get_preset
from engine.weights import random_model, save_model
from tests.conftest import REPO


@pytest.fixture(scope="module")
def nan_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w") / "nan"
    model, _ = random_model(get_preset("tiny").model, seed=0)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    save_model(model, d, trained=True)
    return d


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kf_desktop", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=300)


def test_render_says_the_model_never_made_a_frame_and_exits_3(nan_weights, data_file, tmp_path):
    out = tmp_path / "o.mp4"
    res = _cli("render", "--driver", str(data_file("cap13_edit2.mp4")), "--out", str(out),
               "--seconds", "0.6", "--size", "128x96", "--mode", "generator",
               "--weights", str(nan_weights))
    assert res.returncode == 3, res.stderr[-1500:]
    assert "produced non-finite values" in res.stderr
    assert "never produced a finite frame" in res.stderr and "Traceback" not in res.stderr
    assert "guide-only: knot-forcing produced no finite frame" in res.stdout
    assert out.stat().st_size > 0


def test_run_status_line_shows_non_finite_chunks_and_exits_3(nan_weights, data_file):
    res = _cli("run", "--video", str(data_file("cap13_edit2.mp4")), "--no-vcam", "--seconds", "3",
               "--size", "128x96", "--mode", "generator", "--weights", str(nan_weights))
    assert res.returncode == 3, res.stderr[-1500:]  # --mode generator, yet the stream was guide-only
    assert "never produced a finite frame" in res.stderr and "Traceback" not in res.stderr
    assert "[warning] the Knot Forcing model produced non-finite values" in res.stderr
    status = [ln for ln in res.stderr.splitlines() if ln.startswith("out ")]
    assert any("MODEL NON-FINITE" in ln for ln in status), res.stderr[-1500:]
