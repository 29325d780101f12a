"""Weights I/O: safetensors + config.json + sha256; refusals with clear messages."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from engine.config import get_preset
from engine.stream import KnotForcingStream, UntrainedModelError
from engine.weights import (
    WeightsError,
    load_model,
    random_model,
    read_config,
    save_model,
    try_load_trained,
)

TINY = get_preset("tiny").model


def _out(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.rand(1, 2, TINY.frame_channels, TINY.height, TINY.width, generator=g)
    with torch.no_grad():
        return model.forward_full(frames, torch.tensor([[0.0, 0.5]]), torch.tensor([0.0, 1.0]))


def test_roundtrip_trained(tmp_path):
    model, info = random_model(TINY, seed=3)
    assert info.trained is False and model.trained is False
    saved = save_model(model, tmp_path / "w", trained=True, training={"steps": 10, "data": "unit test"})
    doc = json.loads((tmp_path / "w" / "config.json").read_text())
    assert doc["trained"] is True and doc["files"][0]["name"] == "model.safetensors"
    assert len(doc["files"][0]["sha256"]) == 64 and doc["model_config"]["dim"] == TINY.dim
    loaded, linfo = load_model(tmp_path / "w")
    assert linfo.trained and loaded.trained and linfo.training["steps"] == 10
    assert linfo.files == saved.files and linfo.config == TINY
    torch.testing.assert_close(_out(loaded), _out(model), rtol=0, atol=0)
    # a trained model is accepted by a stream without opt-in
    KnotForcingStream(loaded)


def test_sharded_half_precision(tmp_path):
    model, _ = random_model(TINY, seed=4)
    save_model(model, tmp_path, trained=True, dtype=torch.float16, max_shard_bytes=16 * 1024)
    doc = read_config(tmp_path)
    assert len(doc["files"]) > 1 and doc["dtype"] == "float16"
    assert all(f["bytes"] <= 16 * 1024 + 4096 for f in doc["files"])
    loaded, info = load_model(tmp_path)
    ref = model.half().float()  # the values that survive fp16
    torch.testing.assert_close(_out(loaded), _out(ref), rtol=1e-5, atol=1e-5)


def test_untrained_stays_untrained(tmp_path):
    model, _ = random_model(TINY)
    save_model(model, tmp_path, trained=False)
    loaded, info = load_model(tmp_path)
    assert info.trained is False and loaded.trained is False
    assert "UNTRAINED" in info.describe()
    with pytest.raises(UntrainedModelError):
        KnotForcingStream(loaded)
    res = try_load_trained(tmp_path)
    assert res.model is None and "guide-only" in res.message and "untrained" in res.message


def test_missing_weights_means_guide_only(tmp_path):
    res = try_load_trained(tmp_path / "nothing")
    assert res.model is None and "no model weights" in res.message and "guide-only" in res.message
    with pytest.raises(WeightsError, match="no model weights") as e:
        load_model(tmp_path / "nothing")
    assert "guide-only" in e.value.hint


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".bin"])
def test_pickle_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps({"weight": [1.0]}))
    for target in (path, tmp_path):  # the file itself, or a folder with only a pickle in it
        with pytest.raises(WeightsError, match="pickle") as e:
            load_model(target)
        assert "safetensors" in e.value.hint
    assert isinstance(e.value, ValueError)


def test_hash_mismatch_refused(tmp_path):
    model, _ = random_model(TINY)
    save_model(model, tmp_path, trained=True)
    f = tmp_path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt or modified") as e:
        load_model(tmp_path)
    assert "re-download" in e.value.hint and "re-train" in e.value.hint
    assert "corrupt" in try_load_trained(tmp_path).message


def test_config_tensor_mismatch_refused(tmp_path):
    model, _ = random_model(TINY)
    save_model(model, tmp_path, trained=True)
    doc = json.loads((tmp_path / "config.json").read_text())
    doc["model_config"]["dim"] = 48  # heads 2 -> head_dim 24, still a valid config
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=r"config does not match the tensors: patch_embed.weight") as e:
        load_model(tmp_path)
    assert "(48," in e.value.message and "(32," in e.value.message
    doc["model_config"]["dim"] = TINY.dim
    doc["model_config"]["depth"] = TINY.depth + 1
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=r"blocks.2.*missing"):
        load_model(tmp_path)
    doc["model_config"]["depth"] = TINY.depth - 1
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(WeightsError, match=r"unexpected tensor blocks.1"):
        load_model(tmp_path)


def test_bad_config_json_refused(tmp_path):
    model, _ = random_model(TINY)
    save_model(model, tmp_path, trained=True)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="not valid JSON"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(WeightsError, match="not a kf-desktop weights config"):
        load_model(tmp_path)
