"""Smoke test of the training pipeline at CPU scale (issue 6): dataset build
from 60 real frames, a tiny model trained for a few dozen steps, loss goes
down, the checkpoint loads as trained, resume continues, held-out frames are
never sampled for training."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

pytest.importorskip("mediapipe")

from engine.training.data import WindowSampler, load_clips  # noqa: E402
from engine.training.trainer import TrainConfig, Trainer, model_and_stream_config  # noqa: E402
from engine.weights import load_model  # noqa: E402

CLIP = "cap13_edit2.mp4"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from kf_desktop.data import DataMissingError, data_path
    from kf_desktop.dataset_build import build_dataset

    try:
        data_path(CLIP)
    except DataMissingError:
        pytest.skip("clips not fetched (kf-desktop data fetch)")
    out = tmp_path_factory.mktemp("ds")
    torch.set_num_threads(1)
    build_dataset(out, size=16, clips=[CLIP], max_frames=60, progress=None)
    return out


def _tc(data, out, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), preset="tiny", steps=60, batch=4, lr=3e-3, warmup=5,
                device="cpu", log_every=10, ckpt_every=30, eval_batches=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_dataset_manifest_and_split(dataset):
    doc = json.loads((dataset / "manifest.json").read_text())
    (entry,) = doc["clips"]
    assert entry["frames"] == 60 and entry["n_train"] == 48 and entry["held_out"] == [48, 60]
    assert len(entry["source_sha256"]) == 64
    z = np.load(dataset / entry["file"])
    assert z["frames"].shape == (60, 16, 16, 3) and z["frames"].dtype == np.uint8
    assert z["landmarks"].shape == (60, 478, 2)
    # the crop box is stable: one size per clip, centre moves smoothly
    box = z["box"]
    assert np.ptp(box[:, 2]) == 0
    assert np.abs(np.diff(box[:, :2], axis=0)).max() < 0.02 * box[0, 2]
    # landmarks lie in the crop
    assert (z["landmarks"] > 0).all() and (z["landmarks"] < 16).all()


def test_dataset_records_the_crop_and_an_old_one_is_flagged(dataset, tmp_path):
    """The manifest records the app's head-crop geometry; a dataset from before
    it was widened (no record: 2.2 / 0.15) is told apart, which is how
    scripts/train_laptop.sh knows to rebuild it."""
    from kf_desktop.dataset_build import crop_matches, main
    from kf_desktop.portrait import CROP_FACTOR, CROP_UP_SHIFT

    doc = json.loads((dataset / "manifest.json").read_text())
    assert doc["crop"] == {"factor": CROP_FACTOR, "up_shift": CROP_UP_SHIFT}
    assert crop_matches(dataset)[0] and main(["--check-crop", str(dataset)]) == 0
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({k: v for k, v in doc.items() if k != "crop"}))
    assert crop_matches(old) == (False, "2.2 / 0.15")
    assert main(["--check-crop", str(old)]) == 1


def test_heldout_never_sampled(dataset):
    _, clips = load_clips(dataset)
    mc, sc = model_and_stream_config(_tc(dataset, "/tmp/unused"))
    s = WindowSampler(clips, sc, seed=3)
    assert max(i for _, i in s.frame_indices()) < clips[0].n_train
    for _ in range(200):
        for w in s.sample_batch(4):
            assert w.frames.max() < clips[0].n_train and w.ref < clips[0].n_train
            # running ahead: the reference is ahead of the chunk's last frame by 1..s+c+k
            ahead = w.t_pos[0] - w.t_pos[-1]
            assert 1 <= ahead <= sc.ref_step + sc.frames_per_chunk + sc.n_init


def test_train_lowers_loss_checkpoint_and_resume(dataset, tmp_path):
    torch.set_num_threads(1)
    t0 = time.monotonic()
    res = Trainer(_tc(dataset, tmp_path), log=lambda m: None).run()
    took = time.monotonic() - t0
    losses = res["losses"]
    assert len(losses) == 60 and res["stopped"] == "done"
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), (np.mean(losses[:10]), np.mean(losses[-10:]))
    ev = res["eval"]
    assert ev[-1]["loss"] < ev[0]["loss"]
    assert took < 90, took
    model, info = load_model(tmp_path / "model")
    assert info.trained and model.trained and info.training["steps"] == 60
    assert info.training["data"]["held_out"]["cap13_edit2"] == [48, 60]
    assert (tmp_path / "state" / "trainer.safetensors").is_file()
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))
    # resume continues from the saved step, with the saved optimizer state
    tr = Trainer(_tc(dataset, tmp_path, steps=70, resume=True, stage="self_forcing", sf_prob=1.0), log=lambda m: None)
    assert tr.step == 60
    assert len(tr.opt.state) == len(list(tr.model.parameters()))
    sd = load_model(tmp_path / "model")[0].state_dict()
    for n, p in tr.model.state_dict().items():
        torch.testing.assert_close(p, sd[n])
    res2 = tr.run()
    assert res2["step"] == 70 and len(res2["losses"]) == 10
    assert all(np.isfinite(res2["losses"]))
    assert load_model(tmp_path / "model")[1].training["steps"] == 70


def test_init_from_committed_weights_continues_the_record_with_a_residual_model(dataset, tmp_path):
    # the laptop recipe's shape in miniature: guide-residual prediction, CPU
    # bf16 autocast where the CPU has it, a second piece started from the
    # first piece's exported weights (what scripts/train_laptop.sh does with
    # resources/models/default)
    over = {"predict": "guide_residual"}
    a = Trainer(_tc(dataset, tmp_path / "a", steps=6, ckpt_every=0, model_overrides=over), log=lambda m: None)
    assert a.mcfg.predict == "guide_residual"
    a.run()
    first = json.loads((tmp_path / "a" / "model" / "config.json").read_text())["training"]
    assert first["steps"] == 6 and first["samples_seen"] == 24
    b = Trainer(_tc(dataset, tmp_path / "b", steps=4, ckpt_every=0, model_overrides=over,
                    init=str(tmp_path / "a" / "model")), log=lambda m: None)
    for (n, p), q in zip(b.model.state_dict().items(), a.model.state_dict().values()):
        torch.testing.assert_close(p, q.float(), msg=n)
    b.run()
    second = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["training"]
    assert second["steps"] == 10 and second["steps_this_run"] == 4 and second["samples_seen"] == 40


def test_masked_guide_target_is_the_guide_outside_mouth_and_eyes(dataset, tmp_path):
    from engine.training.augment import region_weights

    tr = Trainer(_tc(dataset, tmp_path / "m", target="masked_guide", p_flip=0.0, p_color=0.0, p_scale=0.0,
                     sample={"p_still": 0.0}), log=lambda m: None)
    wins = tr.sampler.sample_batch(2)
    b = tr.builder.build(wins, augment=False, fixed_sigma=0.5)
    _, ref_lms, im, lm = tr.builder.images(wins, augment=False)
    g = tr.builder.guides(tr.builder.images(wins, augment=False)[0], ref_lms, lm)
    n_ctx = b.n_ctx
    region = region_weights(lm[:, n_ctx:], im.shape[-1], 1.0) - 1.0  # (B, F, 1, S, S)
    outside = (region == 0).expand_as(b.target)
    inside = (region == 1).expand_as(b.target)
    assert outside.any() and inside.any()
    torch.testing.assert_close(b.target[outside], (g[:, n_ctx:] * 2 - 1)[outside], atol=1e-5, rtol=0)
    torch.testing.assert_close(b.target[inside], (im[:, n_ctx:] * 2 - 1)[inside], atol=1e-5, rtol=0)


def test_resume_is_refused_without_state_and_finds_a_state_a_kill_left(dataset, tmp_path):
    """--resume with nothing to resume is refused (it used to start over and
    replace model/); a fresh run over an old one is refused; a run killed
    between the checkpoint's two renames resumes from state.old/."""
    from engine.training.trainer import ResumeError

    with pytest.raises(ResumeError, match="no complete training state"):
        Trainer(_tc(dataset, tmp_path / "none", resume=True), log=lambda m: None)
    run = tmp_path / "run"
    Trainer(_tc(dataset, run, steps=4, ckpt_every=0), log=lambda m: None).run()
    with pytest.raises(ResumeError, match="already holds a training run"):
        Trainer(_tc(dataset, run, steps=4), log=lambda m: None)
    (run / "state").rename(run / "state.old")  # what a kill between the renames leaves
    tr = Trainer(_tc(dataset, run, steps=6, resume=True), log=lambda m: None)
    assert tr.step == 4
    assert tr.run()["step"] == 6


def test_bad_dataset_folder_is_a_clean_refusal(tmp_path, capsys):
    """train on a folder without (or with a broken) manifest: exit 2, the fix
    named, no run folder left behind; a manifest pointing outside its folder
    is refused."""
    from engine.training.cli import main
    from engine.training.data import DatasetError

    out = tmp_path / "run"
    assert main(["--data", str(tmp_path), "--out", str(out)]) == 2
    assert "kf-desktop dataset" in capsys.readouterr().err and not out.exists()
    (tmp_path / "manifest.json").write_text("{not json")
    assert main(["--data", str(tmp_path), "--out", str(out)]) == 2
    assert not out.exists()
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"format": "kf-desktop-dataset/1", "size": 16, "clips": [{"name": "x", "file": "../../etc/passwd"}]}))
    with pytest.raises(DatasetError, match="not a file inside"):
        load_clips(tmp_path)


def test_gradient_loss_charges_blur_not_a_flat_offset():
    """TrainConfig.grad: a prediction off by a constant keeps the target's
    edges (no extra loss); a blurred one loses them and pays for it."""
    import torch.nn.functional as F

    from engine.training.trainer import TrainConfig, chunk_loss

    torch.manual_seed(0)
    target = (torch.rand(1, 2, 3, 16, 24) > 0.5).float()  # (B, F, C, H, W) sharp edges
    weight = torch.ones(1, 2, 1, 16, 24)
    blurred = F.avg_pool2d(target.flatten(0, 1), 3, stride=1, padding=1,
                           count_include_pad=False).view_as(target)
    off, on = TrainConfig(data="", out=""), TrainConfig(data="", out="", grad=1.0)
    shifted = target + 0.1
    assert chunk_loss(shifted, target, weight, on) == pytest.approx(float(chunk_loss(shifted, target, weight, off)))
    extra = float(chunk_loss(blurred, target, weight, on) - chunk_loss(blurred, target, weight, off))
    assert extra > 0.2, extra
    pred = blurred.clone().requires_grad_(True)
    chunk_loss(pred, target, weight, on).backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
