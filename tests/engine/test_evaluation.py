"""Evaluation metrics (unit) and a tiny end-to-end eval producing the table."""

from __future__ import annotations

import math

import pytest
import torch

from engine.evaluation.metrics import drift, landmark_error, psnr, seam_ratio, ssim
from engine.evaluation.variants import variant_config
from engine.config import get_preset


def test_psnr_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=g)
    assert psnr(a, a) == math.inf
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-5)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert 15 < psnr(a, b) < 25
    assert ssim(a, b) < 0.95
    assert psnr(a, (a + 0.01).clamp(0, 1)) > psnr(a, b)


def test_seam_ratio():
    ramp = torch.arange(30, dtype=torch.float32).view(30, 1, 1, 1).expand(30, 3, 4, 4) / 30
    assert seam_ratio(ramp, 3) == pytest.approx(1.0)
    jumps = ramp.clone()
    for i in range(0, 30, 3):
        jumps[i:] += 0.05  # a jump at every chunk start
    assert seam_ratio(jumps, 3) > 1.5


def test_landmark_error_and_drift():
    d = torch.zeros(4, 478, 2)
    d[:, 263, 0] = 10.0  # inter-ocular distance 10
    p = d.clone()
    p[..., 1] += 1.0
    assert landmark_error(p, d) == pytest.approx(0.1)
    p[0] = float("nan")
    assert landmark_error(p, d) == pytest.approx(0.1)
    assert drift([0.3] * 60 + [0.5] * 60, fps=1.0, window_s=60) == pytest.approx(0.2)


def test_fixed_ref_variant():
    cfg = get_preset("tiny").stream
    fixed = variant_config(cfg, "fixed_ref")
    assert {fixed.ref_position(i) for i in range(0, 60, 3)} == {cfg.n_init}
    assert variant_config(cfg, "no_knot").knot == 0


def test_tiny_end_to_end_eval(tmp_path):
    pytest.importorskip("mediapipe")
    from kf_desktop.data import DataMissingError, data_path

    try:
        data_path("cap13_edit2.mp4")
    except DataMissingError:
        pytest.skip("clips not fetched")
    from engine.training.trainer import TrainConfig, Trainer
    from kf_desktop.dataset_build import build_dataset
    from kf_desktop.evaluate import evaluate

    torch.set_num_threads(1)
    ds = tmp_path / "ds"
    build_dataset(ds, size=16, clips=["cap13_edit2.mp4"], max_frames=60, progress=None)
    run = tmp_path / "run"
    Trainer(TrainConfig(data=str(ds), out=str(run), preset="tiny", steps=30, batch=4, lr=3e-3, warmup=5,
                        device="cpu", eval_batches=1), log=lambda m: None).run()
    res = evaluate(ds, run / "model", tmp_path / "eval", max_frames=9, drift_seconds=2, progress=lambda m: None)
    table = (tmp_path / "eval" / "results.md").read_text()
    for v in ("generator", "guide_only", "no_knot", "fixed_ref"):
        assert f"| {v} |" in table
    m = res["metrics"]
    assert m["guide_only"]["psnr"] > 10 and math.isfinite(m["generator"]["psnr"])
    assert (tmp_path / "eval" / "contact_sheet.png").stat().st_size > 1000
