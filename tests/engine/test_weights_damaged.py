"""Issue 13 item 9: every damaged or hand-edited weights folder is a
WeightsError with the field's name (never a raw SafetensorError, ValueError
or AttributeError), and try_load_trained falls back to guide-only with a
message instead of raising."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import get_preset
from engine.weights import (WeightsError, load_model, random_model, save_model, sha256_file,
                            try_load_trained)

TINY = get_preset("tiny").model


@pytest.fixture
def weights(tmp_path) -> Path:
    model, _ = random_model(TINY, seed=1)
    save_model(model, tmp_path / "w", trained=True)
    return tmp_path / "w"


def _edit(folder: Path, fn) -> None:
    path = folder / "config.json"
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _damage_file(folder: Path, data: bytes) -> None:
    """Replace the weights and record the damaged file's sha256, as a bad
    copy tool or a hand-made checkpoint would: the hash check passes."""
    (folder / "model.safetensors").write_bytes(data)
    _edit(folder, lambda d: d["files"][0].update(sha256=sha256_file(folder / "model.safetensors")))


def _refused(folder: Path, needle: str) -> None:
    with pytest.raises(WeightsError) as e:
        load_model(folder)
    assert needle in e.value.message and e.value.hint
    res = try_load_trained(folder)
    assert res.model is None and "guide-only" in res.message and needle in res.message


def test_garbage_header_with_matching_sha256(weights):
    _damage_file(weights, b"\xff" * 8 + b"not a safetensors header at all" * 4)
    _refused(weights, "not a readable safetensors file")


def test_truncated_file_with_matching_sha256(weights):
    data = (weights / "model.safetensors").read_bytes()
    _damage_file(weights, data[: len(data) // 2])
    _refused(weights, "not a readable safetensors file")


def test_header_length_beyond_the_file(weights):
    _damage_file(weights, (10**9).to_bytes(8, "little") + b"{}")
    _refused(weights, "not a readable safetensors file")


@pytest.mark.parametrize("field,value,needle", [
    ("dim", "32", "model_config.dim must be an integer"),
    ("dim", 32.0, "model_config.dim must be an integer"),
    ("heads", True, "model_config.heads must be an integer"),
    ("qk_norm", "yes", "model_config.qk_norm must be true or false"),
    ("rope_theta", "10000", "model_config.rope_theta must be a finite number"),
    ("adaln", 3, "model_config.adaln must be a string"),
    ("rope_axes", "4,6,6", "model_config.rope_axes must be a list of integers"),
])
def test_model_config_of_wrong_types(weights, field, value, needle):
    _edit(weights, lambda d: d["model_config"].update({field: value}))
    _refused(weights, needle)


def test_model_config_that_is_not_an_object(weights):
    _edit(weights, lambda d: d.update(model_config=[1, 2, 3]))
    _refused(weights, "model_config must be an object")


def test_files_entries_that_are_strings(weights):
    _edit(weights, lambda d: d.update(files=["model.safetensors"]))
    _refused(weights, "files[0] must be an object")


def test_files_that_is_not_a_list(weights):
    _edit(weights, lambda d: d.update(files="model.safetensors"))
    _refused(weights, "files must be a list")


def test_trained_as_a_string_is_not_trained(weights):
    _edit(weights, lambda d: d.update(trained="false"))
    _refused(weights, "trained must be true or false")


def test_nan_in_a_float_field(weights):
    path = weights / "config.json"
    path.write_text(path.read_text().replace('"norm_eps": 1e-06', '"norm_eps": NaN'))
    _refused(weights, "model_config.norm_eps must be a finite number")


def test_an_intact_folder_still_loads(weights):
    model, info = load_model(weights)
    assert info.trained and model.trained
    assert try_load_trained(weights).model is not None


def test_verify_files_catches_damage_that_the_hash_does_not(weights):
    """What doctor and --mode auto check before loading: a sound header too."""
    from engine.weights import verify_files

    data = (weights / "model.safetensors").read_bytes()
    _damage_file(weights, data[: len(data) - 100])
    with pytest.raises(WeightsError, match="lies outside the file"):
        verify_files(weights)
