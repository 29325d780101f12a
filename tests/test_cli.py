"""The CLI end to end: a real render, and every bad input of the walking-skeleton
issue gives a clear message, exit status 2 and no traceback."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from kf_desktop.cli import main

FAST = ["--size", "320x180", "--seconds", "0.4"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kf_desktop", *args], capture_output=True,
                          text=True, timeout=timeout)


def frames_in(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="module")
def clip(data_file):
    return str(data_file("cap13_edit2.mp4"))


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory, portrait_path):
    d = tmp_path_factory.mktemp("bad")
    rgb = np.asarray(Image.open(portrait_path).convert("RGB"))
    out = {}
    out["noface"] = d / "noface.png"
    Image.fromarray(np.full((400, 400, 3), 180, np.uint8)).save(out["noface"])
    out["two"] = d / "two.png"
    Image.fromarray(np.hstack([rgb, rgb])).save(out["two"])
    out["text"] = d / "notes.png"
    out["text"].write_text("this is not an image\n")
    out["truncated"] = d / "truncated.png"
    full = d / "full.png"
    Image.fromarray(rgb).save(full)
    out["truncated"].write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out["huge"] = d / "huge.png"
    Image.new("1", (10000, 10000)).save(out["huge"])
    out["gray"] = d / "gray.png"
    Image.fromarray(rgb).convert("L").save(out["gray"])
    out["rgba"] = d / "rgba.png"
    Image.fromarray(rgb).convert("RGBA").save(out["rgba"])
    # EXIF orientation 6 (rotate 90 CW to display): store the pixels rotated
    # the other way so the upright image is the original.
    out["exif"] = d / "exif.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).transpose(Image.Transpose.ROTATE_90).save(out["exif"], exif=exif)
    return out


@pytest.mark.parametrize("kind,needle", [
    ("noface", "face"),
    ("two", "2 faces"),
    ("text", "not an image"),
    ("truncated", "truncated"),
    ("huge", "10000x10000"),
])
def test_bad_portrait(kind, needle, bad_images, clip, tmp_path, capsys):
    out = tmp_path / "o.mp4"
    code = main(["render", "--portrait", str(bad_images[kind]), "--driver", clip,
                 "--out", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 2
    assert needle.lower() in err.lower(), err
    assert "fix:" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("kind", ["gray", "rgba", "exif"])
def test_unusual_but_valid_portraits_render(kind, bad_images, clip, tmp_path, capsys):
    out = tmp_path / f"{kind}.mp4"
    code = main(["render", "--portrait", str(bad_images[kind]), "--driver", clip,
                 "--out", str(out), *FAST])
    assert code == 0, capsys.readouterr().err
    assert frames_in(out) == 10  # 0.4 s at the driver's 25 fps


def test_bad_driver_and_output(clip, portrait_path, tmp_path, capsys):
    cases = []
    cases.append(["--driver", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "a.mp4")])
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 255, 50_000, np.uint8).tobytes())
    cases.append(["--driver", str(corrupt), "--out", str(tmp_path / "b.mp4")])
    cases.append(["--driver", clip, "--out", str(tmp_path / "no" / "such" / "dir" / "c.mp4")])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases.append(["--driver", clip, "--out", str(blocker / "d.mp4")])
    for extra in cases:
        code = main(["render", "--portrait", str(portrait_path), *extra, *FAST])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert "error:" in err and "fix:" in err, err


def test_render_resamples_fps_and_reports(clip, portrait_path, tmp_path):
    out = tmp_path / "r.mp4"
    res = run_cli("render", "--portrait", str(portrait_path), "--driver", clip,
                  "--out", str(out), "--size", "320x240", "--seconds", "1", "--fps", "30")
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and "guide-only" in res.stdout
    cap = cv2.VideoCapture(str(out))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(30, abs=0.01)
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (320, 240)
    cap.release()
    assert frames_in(out) == 30


def test_unknown_camera_is_a_clear_error():
    res = run_cli("run", "--camera", "7", "--no-vcam", "--seconds", "1", "--size", "320x180")
    assert res.returncode == 2
    assert "camera 7" in res.stderr.lower() and "fix:" in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_virtual_camera_driver_is_a_clear_error(clip):
    res = run_cli("run", "--video", clip, "--vcam", "--seconds", "1", "--size", "320x180")
    assert res.returncode == 2
    assert "modprobe v4l2loopback" in res.stderr
    assert "Traceback" not in res.stderr


def test_run_headless_with_video_records(clip, tmp_path):
    out = tmp_path / "live.mp4"
    res = run_cli("run", "--video", clip, "--no-vcam", "--record", str(out), "--seconds", "3",
                  "--size", "320x180", "--fps", "15")
    assert res.returncode == 0, res.stderr
    assert "out" in res.stderr and "latency" in res.stderr
    assert frames_in(out) >= 15


def test_version_and_help():
    res = run_cli("--version")
    assert res.returncode == 0 and "kf-desktop" in res.stdout
    res = run_cli("render", "--size", "12x", "--driver", "x")
    assert res.returncode == 2 and "size" in res.stderr


def test_demo_on_a_truncated_fetched_clip_says_to_fetch_again(data_file, tmp_path):
    """It used to say "re-download or re-copy the video", a file the user
    never chose; the fix is the command that fetched it."""
    import os
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    src = data_file("cap13_edit2.mp4")
    clip = data / src.name
    shutil.copyfile(src, clip)
    with open(clip, "r+b") as f:
        f.truncate(src.stat().st_size // 2)
    env = dict(os.environ, KF_DESKTOP_DATA=str(data))
    res = subprocess.run([sys.executable, "-m", "kf_desktop", "demo", *FAST, "--out",
                          str(tmp_path / "demo.mp4")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 2, res.stderr
    assert "kf-desktop data fetch" in res.stderr and "damaged or incomplete" in res.stderr
    assert "re-download" not in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "demo.mp4").exists()
