"""Every path the user names is only ever a local regular file: a FIFO, a
device or a folder is refused before it is opened (no hang); a name like
`concat:a.wav|b.wav` or `http:x.wav` is that file, never an FFmpeg protocol;
fetched data is checked against its pinned sha256 when it is used; damaged or
tiny WAVs are clear errors. Real ffmpeg, real FIFOs, real subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from kf_desktop.cli import main
from tests.conftest import REPO

needs_ffmpeg = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="no ffmpeg")
FAST = ["--size", "64x48", "--mode", "guide"]


def _wav(path: Path, seconds: float, amp: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = (amp * 32767 * np.sin(2 * np.pi * 220 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return path


def _raw_wav(path: Path, data: bytes, block_align: int = 2, bits: int = 16) -> Path:
    import struct

    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 16000 * block_align, block_align, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + \
        struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def _sound_rms(video: Path) -> float:
    pcm = subprocess.run(["ffmpeg", "-v", "error", "-i", str(video), "-map", "0:a", "-f", "s16le",
                          "-ac", "1", "-"], capture_output=True, check=True).stdout
    x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
    return float(np.sqrt(np.mean(x ** 2)))


@needs_ffmpeg
def test_file_names_are_never_ffmpeg_protocols(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _wav(tmp_path / "a.wav", 1.0, 0.8)
    _wav(tmp_path / "b.wav", 1.0, 0.8)
    for name in ("concat:a.wav|b.wav", "http:x.wav"):
        _wav(tmp_path / name, 0.6, 0.0)  # silence, under a name FFmpeg would read as a URL
        out = tmp_path / "o.mp4"
        rc = main(["render", "--audio", name, "--out", str(out), "-y"] + FAST)
        err = capsys.readouterr().err
        assert rc == 0, err
        assert _sound_rms(out) < 1e-3  # the silent file, not a.wav + b.wav, not the network


def _cli(args, cwd, timeout=90):
    return subprocess.run([sys.executable, "-m", "kf_desktop", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))


def test_fifos_and_folders_as_inputs_are_refused_without_opening(tmp_path, data_file):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    clip = str(data_file("cap13_edit2.mp4"))
    cases = [
        (["render", "--portrait", str(fifo), "--driver", clip], "portrait photo"),
        (["render", "--driver", str(fifo)], "driving video"),
        (["render", "--driver", clip, "--audio", str(fifo)], "speech WAV"),
        (["render", "--driver", clip, "--audio", str(tmp_path)], "is a folder"),
        (["run", "--video", str(fifo), "--no-vcam", "--seconds", "1"], "driving video"),
        (["run", "--no-camera", "--audio", str(fifo), "--no-vcam", "--seconds", "1"],
         "speech WAV"),
        (["gui", str(fifo), "--check"], "portrait photo"),
    ]
    for args, what in cases:
        res = _cli(args + (["--out", str(tmp_path / "o.mp4")] if args[0] == "render" else [])
                   + ([] if args[0] == "gui" else ["--mode", "guide"]), tmp_path)
        assert res.returncode == 2, (args, res.stderr)
        assert what in res.stderr and "Traceback" not in res.stderr, res.stderr
        if "pipe" in " ".join(args):
            assert "named pipe (FIFO)" in res.stderr and "not found" not in res.stderr


def test_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    from kf_desktop.data import data_dir

    monkeypatch.delenv("KF_DESKTOP_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "rel/cache")
    assert data_dir() == Path.home() / ".cache" / "kf-desktop" / "data"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data_dir() == tmp_path / "kf-desktop" / "data"


def test_fetched_data_is_verified_before_use(tmp_path, monkeypatch, data_file):
    from kf_desktop.data import VERIFIED_FILE, data_path
    from kf_desktop.errors import DataMissingError

    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(data_file("cap13_edit2.mp4"), root / "cap13_edit2.mp4")
    monkeypatch.setenv("KF_DESKTOP_DATA", str(root))
    assert data_path("cap13_edit2.mp4") == root / "cap13_edit2.mp4"
    assert (root / VERIFIED_FILE).is_file()  # next use: size + mtime, no hashing
    t = time.perf_counter()
    data_path("cap13_edit2.mp4")
    assert time.perf_counter() - t < 0.05
    with open(root / "cap13_edit2.mp4", "r+b") as f:  # changed in place
        f.seek(1000)
        f.write(b"evil")
    with pytest.raises(DataMissingError) as ei:
        data_path("cap13_edit2.mp4")
    assert "pinned sha256" in ei.value.message and "data fetch" in ei.value.hint


@pytest.mark.parametrize("case,needle", [
    ("empty", "holds no audio"), ("short", "only 3.1 ms of audio"),
    ("block0", "inconsistent WAV header"), ("bits0", "inconsistent WAV header")])
def test_bad_wavs_are_clear_errors(tmp_path, capsys, case, needle):
    wav = {"empty": lambda p: _raw_wav(p, b""),
           "short": lambda p: _raw_wav(p, b"\1\0" * 50),
           "block0": lambda p: _raw_wav(p, b"\0" * 3200, block_align=0, bits=0),
           "bits0": lambda p: _raw_wav(p, b"\0" * 3200, block_align=2, bits=0)}[case](
        tmp_path / "s.wav")
    rc = main(["render", "--audio", str(wav), "--out", str(tmp_path / "o.mp4")] + FAST)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err, err
    from kf_desktop.audio.wav import WavSource
    from kf_desktop.errors import UserError

    if case != "short":  # (live, a 3 ms loop is only odd, not wrong)
        with pytest.raises(UserError):  # `run --audio` reads it the same way
            WavSource(wav, realtime=False).open()


@needs_ffmpeg
def test_an_odd_sized_wav_data_chunk_still_gets_its_sound_track(tmp_path, capsys):
    wav = _raw_wav(tmp_path / "odd.wav", (np.sin(np.arange(8000) / 5) * 20000).astype("<i2")
                   .tobytes() + b"\3")
    out = tmp_path / "o.mp4"
    rc = main(["render", "--audio", str(wav), "--out", str(out)] + FAST)
    assert rc == 0, capsys.readouterr().err
    assert _sound_rms(out) > 0.1


def test_a_long_wav_for_a_short_render_is_read_only_as_far_as_needed(tmp_path):
    from kf_desktop.audio_track import AudioTrack

    wav = _wav(tmp_path / "long.wav", 600.0, 0.3)  # 10 minutes
    t = time.perf_counter()
    track = AudioTrack(wav, max_seconds=2.0)
    assert time.perf_counter() - t < 3.0
    assert 2.0 <= track.duration <= 3.0


def test_messages_name_the_real_cause(tmp_path, capsys, data_file):
    """--seconds shorter than a frame, a driver shorter than --seconds, a
    driver above the fps range, --record a folder, no microphone at all."""
    clip = data_file("cap13_edit2.mp4")
    out = str(tmp_path / "o.mp4")
    rc = main(["render", "--driver", str(clip), "--seconds", "1e-9", "--out", out] + FAST)
    err = capsys.readouterr().err
    assert rc == 2 and "shorter than one frame at 25 fps" in err and "driver" not in err, err
    one = tmp_path / "one.mp4"
    fast = tmp_path / "fast.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(clip), "-frames:v", "1", str(one)],
                   check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc=size=320x240:rate=200:duration=0.3", "-pix_fmt", "yuv420p",
                    str(fast)], check=True)
    rc = main(["render", "--driver", str(one), "--seconds", "1", "--out", out] + FAST)
    cap = capsys.readouterr()
    assert rc == 0 and "shorter than the 1 s asked" in cap.err and "0.04 s" in cap.out, cap
    rc = main(["render", "--driver", str(fast), "--out", out, "-y"] + FAST)
    cap = capsys.readouterr()
    assert rc == 0 and "runs at 200 fps; the render is at 120 fps" in cap.err, cap.err
    rate = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=r_frame_rate",
                           "-of", "csv=p=0", out], capture_output=True, text=True).stdout.strip()
    assert rate == "120/1"
    rc = main(["run", "--video", str(clip), "--record", str(tmp_path), "--no-vcam",
               "--seconds", "1", "--mode", "guide"])
    err = capsys.readouterr().err
    assert rc == 2 and "it is a folder" in err and "pass --record" in err, err
    from kf_desktop.audio.mic import _describe

    assert "connect a microphone" in _describe([])
