"""MicSource through the real sounddevice/PortAudio -> ALSA pulse -> PulseAudio
path: a private daemon's null sink is fed with a WAV by paplay, and MicSource
records the sink's monitor source. Skipped only if PulseAudio cannot start."""

from __future__ import annotations

import time
import wave

import numpy as np
import pytest

from kf_desktop.audio.mic import MicSource, list_microphones
from kf_desktop.errors import DeviceError
from tests.audio.conftest import SR, rms_db_envelope


def record(mic: MicSource, seconds: float):
    """read_new() in a 20 ms loop, like an engine thread; returns samples and
    (t_end, monotonic-at-read, n) per call."""
    parts, log = [], []
    t_stop = time.monotonic() + seconds
    while time.monotonic() < t_stop:
        x, t_end = mic.read_new()
        parts.append(x)
        log.append((t_end, time.monotonic(), len(x)))
        time.sleep(0.02)
    return np.concatenate(parts), log


def best_lag_corr(a: np.ndarray, b: np.ndarray, max_lag: int):
    """Max over lags 0..max_lag of corr(a[lag:lag+len(b)], b)."""
    best = (-1.0, 0)
    for lag in range(0, min(max_lag, len(a) - len(b)) + 1):
        r = np.corrcoef(a[lag:lag + len(b)], b)[0, 1]
        if r > best[0]:
            best = (float(r), lag)
    return best


def test_lists_pulse_sources(pulse):
    names = [m.name for m in list_microphones()]
    assert "pulse:kfnull.monitor" in names and "pulse:kfother.monitor" in names
    info = next(m for m in list_microphones() if m.name == "pulse:kfnull.monitor")
    assert info.default_samplerate == 48000


def test_missing_device_lists_alternatives(pulse):
    with pytest.raises(DeviceError) as e:
        MicSource("no such microphone").open()
    assert "not found" in e.value.message
    assert "pulse:kfnull.monitor" in e.value.hint


def test_captures_speech_played_into_null_sink(pulse, librivox):
    path, speech = librivox("0880")  # 3 s
    mic = MicSource("kfnull.monitor").open()  # bare Pulse source name works too
    try:
        assert mic.wait_ready(6.0), mic.error
        assert mic.native_samplerate == 48000  # resampled 48 kHz -> 16 kHz by us
        player = pulse.play(path, "kfnull")
        x, log = record(mic, len(speech) / SR + 1.5)
        assert player.wait(10) == 0, player.stderr.read()
        stats = mic.stats()
    finally:
        mic.close()
    assert not stats["lost"] and stats["overflows"] == 0
    # Loudness envelopes match (lag unknown: paplay's start is not timed).
    env_x, env_s = rms_db_envelope(x), rms_db_envelope(speech)
    r_env, lag = best_lag_corr(env_x, env_s, max_lag=len(env_x) - len(env_s))
    print(f"captured {len(x) / SR:.2f} s; envelope corr {r_env:.3f} at lag {lag * 10} ms")
    assert r_env >= 0.9
    # The waveform itself survives (two resamplers in the path).
    start = max(0, lag * 160 - 320)
    seg = np.concatenate([x[start:start + len(speech) + 640], np.zeros(640, np.float32)])
    r_wave, fine = best_lag_corr(seg, speech, 640)
    print(f"waveform corr {r_wave:.3f}")
    assert r_wave >= 0.9
    seg = seg[fine:fine + len(speech)]
    gain_db = 20 * np.log10(np.std(seg) / np.std(speech))
    assert abs(gain_db) < 1.5  # null sink + monitor at 100 %: unity gain
    # Timestamps: consistent with the sample count and never in the future.
    t_ends = np.array([t for t, _, n in log if n])
    counts = np.cumsum([n for _, _, n in log if n])
    drift = (t_ends - t_ends[0]) - (counts - counts[0]) / SR
    assert np.abs(drift).max() < 0.01
    behind = np.array([now - t for t, now, n in log if n])
    assert behind.min() > -0.005 and np.median(behind) < 0.1


def test_records_the_named_source_only(pulse, tmp_path):
    tone = tmp_path / "tone.wav"
    t = np.arange(int(1.0 * SR)) / SR
    with wave.open(str(tone), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((0.3 * np.sin(2 * np.pi * 500 * t) * 32767).astype("<i2").tobytes())
    levels = {}
    for source in ("pulse:kfnull.monitor", "pulse:kfother.monitor"):
        mic = MicSource(source).open()
        try:
            assert mic.wait_ready(6.0), mic.error
            p = pulse.play(tone, "kfother")
            x, _ = record(mic, 1.5)
            p.wait(10)
        finally:
            mic.close()
        levels[source] = float(np.sqrt(np.mean(x ** 2)))
    print(levels)
    assert levels["pulse:kfother.monitor"] > 0.1
    assert levels["pulse:kfnull.monitor"] < 1e-3


def test_device_lost_mid_stream_keeps_session_running(pulse_own, librivox):
    path, _ = librivox("0870")
    mic = MicSource("pulse:kflost.monitor", reconnect_s=0.5).open()
    try:
        assert mic.wait_ready(6.0), mic.error
        player = pulse_own.play(path, "kflost")
        x, _ = record(mic, 1.0)
        assert np.std(x[-8000:]) > 0.005  # speech is coming in
        pulse_own.kill()  # the sound server (the "device") dies mid-stream
        player.wait(10)
        t_kill = time.monotonic()
        while not mic.lost and time.monotonic() - t_kill < 3.0:
            time.sleep(0.005)
        detect = time.monotonic() - t_kill
        print(f"loss detected after {detect * 1000:.0f} ms: {mic.error}")
        assert mic.lost and detect < 1.5
        assert "lost" in mic.error
        # The session keeps reading: silence, no exception (once the window
        # no longer reaches back before the loss).
        time.sleep(0.15)
        for _ in range(20):
            w = mic.read_window(time.monotonic(), 0.1)
            assert w.shape == (1600,) and not w.any()
            chunk, t_end = mic.read_new()
            assert len(chunk) == 0
            time.sleep(0.01)
        # The server comes back: the source reconnects by itself.
        pulse_own.start()
        t_back = time.monotonic()
        while mic.lost and time.monotonic() - t_back < 10.0:
            time.sleep(0.05)
        print(f"reconnected after {time.monotonic() - t_back:.1f} s")
        assert not mic.lost and mic.reconnects == 1 and mic.error is None
        player = pulse_own.play(path, "kflost")
        x, _ = record(mic, 1.5)
        player.terminate()
        assert np.std(x[-8000:]) > 0.005  # audio flows again
    finally:
        mic.close()
