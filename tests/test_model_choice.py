"""Issue 13 item 16: no silent fallback. --weights that --mode auto will not
use is said; --mode generator with a refused model exits 3 after writing the
guide-only output; `run` says in its status line when the driver shows no
face. Real renders, real sessions, a real face-less clip made by ffmpeg."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.config import get_preset
from engine.weights import random_model, save_model, sha256_file

FAST = ["--size", "320x180", "--seconds", "0.4"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kf_desktop", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clip(data_file):
    return str(data_file("cap13_edit2.mp4"))


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("weights") / "tiny"
    model, _ = random_model(get_preset("tiny").model, seed=0)
    save_model(model, d, trained=True)
    return d


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, trained_tiny) -> Path:
    """Trained weights truncated after their sha256 was recorded."""
    d = tmp_path_factory.mktemp("weights") / "damaged"
    shutil.copytree(trained_tiny, d)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:200])
    doc = json.loads((d / "config.json").read_text())
    doc["files"][0]["sha256"] = sha256_file(f)
    (d / "config.json").write_text(json.dumps(doc))
    return d


def test_generator_mode_with_a_refused_model_exits_3(clip, portrait_path, damaged, tmp_path):
    out = tmp_path / "o.mp4"
    res = run_cli("render", "--portrait", str(portrait_path), "--driver", clip, "--out", str(out),
                  "--mode", "generator", "--weights", str(damaged), *FAST)
    assert res.returncode == 3, res.stderr[-800:]
    assert "Traceback" not in res.stderr
    assert "not a readable safetensors file" in res.stderr
    assert "--mode generator" in res.stderr and "guide-only" in res.stderr
    assert out.stat().st_size > 0  # the guide-only video is still written


def test_auto_mode_says_why_weights_are_not_used(clip, portrait_path, damaged, tmp_path):
    res = run_cli("render", "--portrait", str(portrait_path), "--driver", clip,
                  "--out", str(tmp_path / "o.mp4"), "--weights", str(damaged), *FAST)
    assert res.returncode == 0, res.stderr[-800:]
    assert f"--weights {damaged} is not used" in res.stderr
    assert "not a readable safetensors file" in res.stderr


def test_auto_mode_says_once_why_unevaluated_weights_are_not_used(clip, portrait_path,
                                                                  trained_tiny, tmp_path):
    res = run_cli("render", "--portrait", str(portrait_path), "--driver", clip,
                  "--out", str(tmp_path / "o.mp4"), "--weights", str(trained_tiny), *FAST)
    assert res.returncode == 0, res.stderr[-800:]
    assert res.stderr.count("is not used") == 1
    assert f"--weights {trained_tiny} is not used: the weights carry no evaluation" in res.stderr
    assert "--mode generator" in res.stderr and "guide-only)" in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's speed probe is the point")
def test_auto_mode_on_the_cpu_has_one_decision_and_one_message(clip, portrait_path,
                                                                trained_tiny, tmp_path):
    """Weights whose evaluation beats guide-only: on the CPU the speed probe
    decides, and the one message says what it decided (never "not used
    because this is the CPU" while the model then runs)."""
    d = tmp_path / "evaluated"
    shutil.copytree(trained_tiny, d)
    doc = json.loads((d / "config.json").read_text())
    doc["evaluation"] = {"beats_guide_only_mouth": True, "whole_crop_not_worse": True,
                         "generator_minus_guide_only": {"psnr_mouth": 0.5, "ssim_mouth": 0.01}}
    (d / "config.json").write_text(json.dumps(doc))
    res = run_cli("render", "--portrait", str(portrait_path), "--driver", clip,
                  "--out", str(tmp_path / "o.mp4"), "--weights", str(d), *FAST)
    assert res.returncode == 0, res.stderr[-800:]
    decided = [ln for ln in res.stderr.splitlines()
               if ln.startswith(("note: --mode auto", "warning: --weights"))]
    assert len(decided) == 1, res.stderr
    ran_model = "guide-only)" not in res.stdout
    assert ("Knot Forcing model on the CPU at" in decided[0]) == ran_model, (decided, res.stdout)
    assert "only on a CUDA GPU" not in res.stderr


@pytest.fixture(scope="module")
def faceless_clip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clips") / "noface.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=25:duration=3", "-pix_fmt", "yuv420p", str(out)],
                   check=True, timeout=60)
    return out


def test_run_says_when_the_driver_shows_no_face(faceless_clip, portrait_path):
    res = run_cli("run", "--video", str(faceless_clip), "--portrait", str(portrait_path),
                  "--no-vcam", "--size", "320x180", "--seconds", "4")
    assert res.returncode == 0, res.stderr[-800:]
    status = [ln for ln in res.stderr.splitlines() if ln.startswith("out ")]
    assert status and any("NO FACE" in ln for ln in status), res.stderr[-1500:]


def test_run_with_a_refused_model_says_so_and_exits_3(clip, portrait_path, damaged):
    res = run_cli("run", "--video", clip, "--portrait", str(portrait_path), "--no-vcam",
                  "--size", "320x180", "--seconds", "3", "--mode", "generator",
                  "--weights", str(damaged))
    assert res.returncode == 3, res.stderr[-800:]
    status = [ln for ln in res.stderr.splitlines() if ln.startswith("out ")]
    assert any("GUIDE-ONLY" in ln for ln in status), res.stderr[-1500:]
    assert "NO FACE" not in " ".join(status)  # the clip shows a face throughout
