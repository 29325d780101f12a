"""`train` and `eval` check the dataset folder and their output folder
before writing anything (kf_desktop/dataset_check.py, kf_desktop/train_cli.py):
a missing or broken manifest, a clip entry outside the folder, an output that
is an input: one clean refusal naming the fix, exit 2, nothing left behind."""

from __future__ import annotations

import json
import os

import pytest

from kf_desktop.cli import main


def _manifest(root, clips):
    root.mkdir(exist_ok=True)
    (root / "manifest.json").write_text(json.dumps(
        {"format": "kf-desktop-dataset/1", "size": 16, "clips": clips}))


def _entry(file):
    return {"name": "c", "file": file, "n_train": 1, "fps": 25.0, "sha256": "0"}


@pytest.mark.parametrize("command", ["train", "eval"])
@pytest.mark.parametrize("case", ["no-manifest", "not-json", "fifo-manifest", "outside",
                                  "absolute-outside", "link-outside", "no-clips", "not-a-folder",
                                  "missing-folder", "deep-json"])
def test_bad_dataset_is_one_clean_refusal(tmp_path, capsys, command, case):
    data = tmp_path / "ds"
    data.mkdir()
    if case == "not-json":
        (data / "manifest.json").write_text("{not json")
    elif case == "fifo-manifest":
        os.mkfifo(data / "manifest.json")
    elif case == "outside":
        _manifest(data, [_entry("../../../../../../etc/passwd")])
    elif case == "absolute-outside":
        _manifest(data, [_entry("/etc/passwd")])
    elif case == "link-outside":
        (data / "c.npz").symlink_to("/etc/passwd")
        _manifest(data, [_entry("c.npz")])
    elif case == "no-clips":
        _manifest(data, [])
    elif case == "not-a-folder":
        data.rmdir()
        data.write_text("x")
    elif case == "missing-folder":
        data.rmdir()
    elif case == "deep-json":
        (data / "manifest.json").write_text("[" * 100000 + "]" * 100000)
    out = tmp_path / "run"
    rc = main([command, "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "kf-desktop dataset" in err and "Traceback" not in err, err
    if "outside" in case:
        assert "outside the dataset folder" in err
    assert not out.exists()  # no run folder, no train.log


def test_train_and_eval_outputs_are_no_input(tmp_path, capsys):
    data = tmp_path / "ds"
    _manifest(data, [_entry("c.npz")])
    (data / "c.npz").write_bytes(b"x")
    rc = main(["train", "--data", str(data), "--out", str(data)])
    assert rc == 2 and "same folder as the dataset" in capsys.readouterr().err
    w = tmp_path / "weights"
    w.mkdir()
    rc = main(["eval", "--data", str(data), "--weights", str(w), "--out", str(w)])
    assert rc == 2 and "same folder as the weights" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "afile")])
    assert rc == 2 and "not a folder" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "x"


def test_dataset_out_is_no_clip(tmp_path, capsys, data_file):
    clips = tmp_path / "clips"
    clips.mkdir()
    rc = main(["dataset", "--out", str(clips), "--clips", str(clips)])
    assert rc == 2 and "same folder as the clip" in capsys.readouterr().err
