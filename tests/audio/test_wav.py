"""WavSource: pacing (real time vs as fast as read), formats, resampling, errors."""

from __future__ import annotations

import struct
import time
import wave

import numpy as np
import pytest

from kf_desktop.audio.wav import WavSource, load_mono16k, load_wav
from kf_desktop.errors import UserError

SR = 16000


def write_pcm(path, x: np.ndarray, rate: int, width: int) -> None:
    """x: (n, channels) float in [-1, 1] -> PCM WAV via the stdlib writer."""
    x = np.atleast_2d(x.T).T
    if width == 1:
        data = np.clip(x * 127 + 128, 0, 255).astype(np.uint8).tobytes()
    elif width == 2:
        data = (x * 32767).astype("<i2").tobytes()
    elif width == 3:
        v = (x * (2 ** 23 - 1)).astype("<i4").reshape(-1)
        data = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], 1).astype(np.uint8).tobytes()
    else:
        data = (x * (2 ** 31 - 1)).astype("<i4").tobytes()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data)


def write_float(path, x: np.ndarray, rate: int, extensible: bool = False) -> None:
    x = np.atleast_2d(x.T).T.astype("<f4")
    ch = x.shape[1]
    data = x.tobytes()
    if extensible:  # WAVE_FORMAT_EXTENSIBLE with the IEEE float sub-format GUID
        guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, ch, rate, rate * 4 * ch, 4 * ch, 32, 22, 32, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", 3, ch, rate, rate * 4 * ch, 4 * ch, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk, padded
    body += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def tone(freq: float, rate: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(x: np.ndarray, rate: int = SR) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spec) * rate / len(x))


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_pcm_widths_stereo_44k_are_resampled_to_16k_mono(tmp_path, width):
    left, right = tone(440, 44100, 1.0), tone(440, 44100, 1.0)
    p = tmp_path / f"s{width}.wav"
    write_pcm(p, np.stack([left, right], 1), 44100, width)
    raw, rate = load_wav(p)
    assert rate == 44100 and raw.shape == (44100, 2)
    y = load_mono16k(p)
    assert len(y) == 16000
    assert abs(dominant_hz(y) - 440) < 3
    rms = float(np.sqrt(np.mean(y[1000:-1000] ** 2)))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.03)


def test_channels_are_averaged(tmp_path):
    p = tmp_path / "lr.wav"
    write_pcm(p, np.stack([tone(300, 16000, 0.5), -tone(300, 16000, 0.5)], 1), 16000, 2)
    assert np.abs(load_mono16k(p)).max() < 1e-3  # opposite channels cancel


@pytest.mark.parametrize("ext", [False, True])
def test_float_wav_and_extensible_header(tmp_path, ext):
    p = tmp_path / "f.wav"
    write_float(p, tone(1000, 48000, 0.5), 48000, extensible=ext)
    y = load_mono16k(p)
    assert len(y) == 8000 and abs(dominant_hz(y) - 1000) < 3


def test_realtime_pacing(librivox):
    path, x = librivox("0880")
    src = WavSource(path, realtime=True).open()
    t_open = src.t0
    time.sleep(0.3)
    chunk, t_end = src.read_new()
    elapsed = time.monotonic() - t_open
    # Everything up to "now" and nothing from the future.
    assert abs(len(chunk) / SR - elapsed) < 0.03
    assert t_end <= time.monotonic() + 1e-3
    assert np.array_equal(chunk, x[:len(chunk)])
    time.sleep(0.1)
    chunk2, t_end2 = src.read_new()
    assert 0.08 < len(chunk2) / SR < 0.14
    assert t_end2 == pytest.approx(t_end + len(chunk2) / SR)
    assert not src.eof


def test_fast_mode_runs_ahead_of_the_clock(librivox):
    path, x = librivox("0870")  # 7.1 s of speech
    src = WavSource(path, realtime=False).open()
    wall = time.monotonic()
    parts, ends = [], []
    while not src.eof:
        c, t_end = src.read_new()
        parts.append(c)
        ends.append(t_end)
    wall = time.monotonic() - wall
    y = np.concatenate(parts)
    assert np.array_equal(y, x)
    assert wall < 1.0  # not paced
    assert ends[-1] == pytest.approx(src.t0 + len(x) / SR)
    assert all(len(p) == 160 for p in parts[:-1])  # 10 ms blocks
    c, _ = src.read_new()
    assert len(c) == 0


def test_read_window_by_time(librivox):
    path, x = librivox("0880")
    src = WavSource(path, realtime=False).open()
    for _ in range(100):  # release 1 s
        src.read_new()
    t = src.t0 + 0.5
    w = src.read_window(t, 0.025)
    assert np.array_equal(w, x[8000 - 400:8000])
    # Future audio (not released yet) and audio before the start are zeros.
    future = src.read_window(src.t0 + 1.2, 0.4)
    assert np.array_equal(future[:3200], x[12800:16000]) and not future[3200:].any()
    assert not src.read_window(src.t0 - 1.0, 0.5).any()


def test_loop(tmp_path):
    p = tmp_path / "short.wav"
    write_pcm(p, tone(200, 16000, 0.1), 16000, 2)
    src = WavSource(p, realtime=False, loop=True).open()
    got = np.concatenate([src.read_new()[0] for _ in range(35)])  # 0.35 s of a 0.1 s file
    assert len(got) == 5600 and not src.eof
    assert np.allclose(got[:1600], got[1600:3200])


def test_missing_file():
    with pytest.raises(UserError) as e:
        WavSource("/nonexistent/speech.wav").open()
    assert "not found" in e.value.message and e.value.hint


@pytest.mark.parametrize("content,why", [
    (b"hello, this is not audio at all" * 4, "not a WAV"),
    (b"RIFF\x10\x00\x00\x00WAVEfmt ", "format"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16), "no audio data"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + struct.pack("<HHIIHH", 85, 1, 16000, 32000, 2, 16)
     + b"data\x04\x00\x00\x00\x00\x00\x00\x00", "unsupported"),
    (b"", "not a WAV"),
])
def test_corrupt_files_are_user_errors(tmp_path, content, why):
    p = tmp_path / "bad.wav"
    p.write_bytes(content)
    with pytest.raises(UserError) as e:
        WavSource(p).open()
    assert why in e.value.message
    assert "ffmpeg" in e.value.hint


def test_truncated_data_is_read_to_the_end(tmp_path):
    p = tmp_path / "cut.wav"
    write_pcm(p, tone(440, 16000, 1.0), 16000, 2)
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])  # header still claims 1 s
    y = load_mono16k(p)
    assert 0.45 < len(y) / SR < 0.5


def test_empty_data_is_a_user_error(tmp_path):
    p = tmp_path / "empty.wav"
    write_pcm(p, np.zeros((0, 1), np.float32), 16000, 2)
    with pytest.raises(UserError):
        WavSource(p).open()
