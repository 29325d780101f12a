"""Every problem in a weights folder's config.json is the same clean refusal
(engine/weights_config.py via read_config) in every mode: --mode generator
falls back to guide-only with exit 3 naming the config, --mode auto runs
guide-only and says why; never a TypeError, AttributeError, RecursionError
or PermissionError. Real weights written by save_model, then damaged."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from engine.config import get_preset
from engine.weights import WeightsError, random_model, read_config, save_model
from kf_desktop.cli import main
from kf_desktop.generators import GuideOnlyGenerator, make_generator


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("w") / "tiny"
    model, _ = random_model(get_preset("tiny").model, seed=0)
    save_model(model, d, trained=True, training={"stream_config":
                                                 get_preset("tiny").stream.to_dict()})
    # an evaluation that beats guide-only, so --mode auto goes as far as loading them
    _edit(d, lambda doc: doc.update(evaluation={
        "beats_guide_only_mouth": True, "whole_crop_not_worse": True,
        "generator_minus_guide_only": {"psnr_mouth": 0.5, "ssim_mouth": 0.01}}))
    return d


def _edit(d: Path, fn) -> None:
    doc = json.loads((d / "config.json").read_text())
    fn(doc)
    (d / "config.json").write_text(json.dumps(doc))


def _sc(**kw):
    return lambda doc: doc["training"]["stream_config"].update(kw)


CASES = {
    "unknown-key": (_sc(bogus=1), "unknown keys ['bogus']"),
    "string": (lambda doc: doc["training"].update(stream_config="fast"),
               "training.stream_config must be an object"),
    "chunk-str": (_sc(chunk="3"), "training.stream_config.chunk must be an integer"),
    "chunk-0": (_sc(chunk=0), "chunk (c) must be >= 1"),
    "evaluation-oops": (lambda doc: doc["evaluation"].update(generator_minus_guide_only="oops"),
                        "evaluation.generator_minus_guide_only must be an object"),
    "evaluation-flag": (lambda doc: doc["evaluation"].update(beats_guide_only_mouth="yes"),
                        "evaluation.beats_guide_only_mouth must be true or false"),
    "depth-20000": (lambda doc: doc["model_config"].update(depth=20000),
                    "model_config.depth must be an integer from 0 to 256"),
    "dim-huge": (lambda doc: doc["model_config"].update(dim=8192, depth=256, heads=64),
                 "billion weights"),
    "heads-neg": (lambda doc: doc["model_config"].update(heads=-1),
                  "model_config.heads must be an integer from 0 to 256"),
    "dtype": (lambda doc: doc.update(dtype="int8"), "dtype must be one of"),
    "dtype-mismatch": (lambda doc: doc.update(dtype="bfloat16"), "is stored as float32"),
}


def _damaged(tmp_path: Path, good: Path, case: str) -> tuple[Path, str]:
    d = tmp_path / case
    shutil.copytree(good, d)
    if case == "deep-json":
        (d / "config.json").write_text('{"format": "kf-desktop-weights/1", "training": '
                                       + "[" * 50000 + "]" * 50000 + "}")
        return d, "nests deeper than"
    if case == "deep-header":
        f = d / "model.safetensors"
        header = b"[" * 50000 + b"]" * 50000
        f.write_bytes(len(header).to_bytes(8, "little") + header)
        from engine.weights import sha256_file

        _edit(d, lambda doc: doc["files"][0].update(sha256=sha256_file(f)))
        return d, "nests too deeply"
    fn, needle = CASES[case]
    _edit(d, fn)
    return d, needle


ALL = [*CASES, "deep-json", "deep-header"]


@pytest.mark.parametrize("case", ALL)
def test_every_mode_refuses_the_same_way(tmp_path, good, case):
    d, needle = _damaged(tmp_path, good, case)
    t = time.monotonic()
    if case not in ("deep-header", "dtype-mismatch"):  # those are found when the files are read
        with pytest.raises(WeightsError) as ei:
            read_config(d)
        assert needle in ei.value.message and str(d) in ei.value.message
    said = []
    gen = make_generator("generator", "cpu", weights=d,
                         on_fallback=lambda m, h: said.append(m))
    assert isinstance(gen, GuideOnlyGenerator) and needle in said[0], said
    decided = []
    gen = make_generator("auto", "cpu", weights=d, on_decision=decided.append)
    assert isinstance(gen, GuideOnlyGenerator) and decided[0].mode == "guide"
    assert needle in decided[0].reason, decided
    assert time.monotonic() - t < 20  # nothing of absurd size was built


def test_generator_mode_cli_falls_back_with_exit_3_naming_the_weights(tmp_path, good, capsys,
                                                                      data_file):
    d, needle = _damaged(tmp_path, good, "chunk-0")
    rc = main(["render", "--driver", str(data_file("cap13_edit2.mp4")), "--out",
               str(tmp_path / "o.mp4"), "--seconds", "0.2", "--size", "64x48",
               "--mode", "generator", "--weights", str(d)])
    err = capsys.readouterr().err
    assert rc == 3 and needle in err and str(d) in err and "Traceback" not in err, err
    d, needle = _damaged(tmp_path, good, "evaluation-oops")
    rc = main(["render", "--driver", str(data_file("cap13_edit2.mp4")), "--out",
               str(tmp_path / "a.mp4"), "--seconds", "0.2", "--size", "64x48",
               "--weights", str(d)])
    err = capsys.readouterr().err
    assert rc == 0 and needle in err and err.count("is not used") == 1, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_weight_file_is_a_refusal(tmp_path, good):
    d = tmp_path / "unreadable"
    shutil.copytree(good, d)
    (d / "model.safetensors").chmod(0)
    decided = []
    assert isinstance(make_generator("auto", "cpu", weights=d, on_decision=decided.append),
                      GuideOnlyGenerator)
    assert "cannot be read" in decided[0].reason


def test_good_weights_still_load(good):
    gen = make_generator("generator", "cpu", weights=good)
    assert gen.trained and torch.is_tensor(next(gen.stream.model.parameters()))
