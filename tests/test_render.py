"""Reliability of `render` and `run --record` outputs (issue 13 items 2, 8, 10):
real ffmpeg, a real tmpfs, real signals to a real `kf-desktop` process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from kf_desktop.errors import UserError
from kf_desktop.render import RenderRequest, mux_audio, render
from kf_desktop.sinks import RecorderSink
from tests.test_sinks import W, H, _fill_to, _patchy, _probe, small_disk  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
needs_ffmpeg = pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")),
                                  reason="needs ffmpeg and ffprobe")


def _record(path: Path, n: int) -> None:
    with RecorderSink(path, W, H, 30) as rec:
        for img in _patchy(n):
            rec.submit(img, 0.0)


@needs_ffmpeg
def test_mux_audio_disk_full_keeps_the_silent_video(small_disk, data_file, tmp_path):
    """ffmpeg cannot finish the muxed file (disk full at its very end) and
    exits 0: the sound track step must fail loudly and leave the silent
    video as it was, with no hidden file behind."""
    wav = data_file("librivox_0870.wav")
    ref = tmp_path / "ref.mp4"
    _record(ref, 90)
    mux_audio(ref, wav, 3.0, video_frames=90)
    muxed = ref.stat().st_size
    video = small_disk / "render.mp4"
    _record(video, 90)
    _fill_to(small_disk, muxed - 8 * 1024)
    with pytest.raises(UserError) as ei:
        mux_audio(video, wav, 3.0, video_frames=90)
    assert "could not add the sound track" in ei.value.message
    assert "disk full" in ei.value.message and str(video) in ei.value.message
    assert _probe(video) == (90, "")  # the silent video is intact
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "render.mp4"]


def _damaged_clip(data_file, tmp_path) -> Path:
    """4 s of the test clip, re-encoded, with 5 KB zeroed in the middle: the
    decoder stops there (what a damaged download does)."""
    small = tmp_path / "small.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(data_file("cap13_edit2.mp4")),
                    "-t", "4", "-vf", "scale=320:-2", "-c:v", "libx264", "-g", "25", "-an",
                    "-movflags", "+faststart", str(small)], check=True)
    data = bytearray(small.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 5000] = bytes(5000)
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    cap = cv2.VideoCapture(str(bad))
    n = 0
    while cap.read()[0]:
        n += 1
    claim = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert claim == 100 and n < 80, (n, claim)  # precondition: really damaged
    return bad


@needs_ffmpeg
def test_render_warns_about_a_damaged_driver(data_file, portrait_path, tmp_path, capsys):
    bad = _damaged_clip(data_file, tmp_path)
    res = render(RenderRequest(portrait=portrait_path, driver=bad, out=tmp_path / "o.mp4",
                               size=(320, 180), mode="guide", device="cpu"), progress=False)
    err = capsys.readouterr().err
    assert res.frames < 80
    assert "damaged" in err and "of 100 frames" in err, err


def _kf(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "kf_desktop", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_file(folder: Path, pattern: str, proc: subprocess.Popen, timeout=240.0):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        hits = [p for p in folder.glob(pattern) if p.stat().st_size > 0]
        if hits:
            return hits[0]
        if proc.poll() is not None:
            pytest.fail(f"kf-desktop exited early ({proc.returncode}): {proc.stdout.read()}")
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no temporary video appeared")


@needs_ffmpeg
def test_sigterm_ends_a_render_like_ctrl_c(data_file, portrait_path, tmp_path):
    """Issue 13 item 8: `kill` during a render removes its hidden temp file
    (it used to stay as .out.<pid>-<hex>.tmp.mp4 for ever)."""
    proc = _kf("render", "--portrait", str(portrait_path), "--driver",
               str(data_file("cap13_edit2.mp4")), "--out", str(tmp_path / "out.mp4"),
               "--size", "320x180", "--mode", "guide", "--device", "cpu")
    _wait_for_file(tmp_path, ".out.*.tmp.mp4", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@needs_ffmpeg
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signal_finishes_run_record(data_file, portrait_path, tmp_path, sig):
    """`run --record` stopped by SIGTERM or SIGHUP writes a complete file."""
    out = tmp_path / "rec.mp4"
    proc = _kf("run", "--video", str(data_file("cap13_edit2.mp4")), "--no-vcam", "--record",
               str(out), "--size", "320x180", "--mode", "guide", "--device", "cpu",
               "--portrait", str(portrait_path))
    _wait_for_file(tmp_path, ".rec.*.tmp.mp4", proc)
    time.sleep(4.0)  # a few seconds of stream
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log
    n, err = _probe(out)
    assert err == "" and n >= 30, (n, err, log)
    assert [p.name for p in tmp_path.iterdir()] == ["rec.mp4"]
