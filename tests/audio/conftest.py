"""Fixtures for the audio tests: real speech (fetched LibriVox clips), espeak-ng
syllables, and a private PulseAudio daemon whose null sinks stand in for a
microphone (this machine has none)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

SR = 16000
LIBRIVOX = ("0870", "0880", "0890", "0920", "0930")


@pytest.fixture(scope="session")
def librivox(data_file):
    """librivox('0870') -> (path, 16 kHz mono float32 samples)."""
    from kf_desktop.audio.wav import load_mono16k

    cache: dict[str, tuple[Path, np.ndarray]] = {}

    def get(key: str) -> tuple[Path, np.ndarray]:
        if key not in cache:
            p = data_file(f"librivox_{key}.wav")
            cache[key] = (p, load_mono16k(p))
        return cache[key]

    return get


@pytest.fixture(scope="session")
def espeak(tmp_path_factory):
    """espeak('ma ma ma') -> 16 kHz mono samples of espeak-ng speaking it
    (espeak writes 22.05 kHz; our own resampler converts)."""
    from kf_desktop.audio.wav import load_mono16k

    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.fail("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    d = tmp_path_factory.mktemp("espeak")
    cache: dict[str, np.ndarray] = {}

    def say(text: str) -> np.ndarray:
        if text not in cache:
            out = d / (text.replace(" ", "_") + ".wav")
            subprocess.run([exe, "-w", str(out), text], check=True, timeout=30)
            cache[text] = load_mono16k(out)
        return cache[text]

    return say


def start_pulse(sinks: dict[str, int]):
    """Start a private PulseAudio; skip (only) if it cannot start here."""
    from kf_desktop.audio.pulse_server import PulseServer, PulseUnavailable

    srv = PulseServer(sinks)
    try:
        srv.start()
    except PulseUnavailable as e:
        srv.cleanup()
        pytest.skip(f"PulseAudio cannot start on this machine: {e}")
    return srv


class _Env:
    """Point this process's PulseAudio clients at ``srv`` and rescan PortAudio."""

    def __init__(self, srv) -> None:
        self.saved = {k: os.environ.get(k) for k in srv.env()}
        os.environ.update(srv.env())
        from kf_desktop.audio.pulse_server import refresh_portaudio

        refresh_portaudio()

    def restore(self) -> None:
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def pulse():
    """A PulseAudio daemon with two null sinks for the whole module."""
    srv = start_pulse({"kfnull": 48000, "kfother": 44100})
    env = _Env(srv)
    yield srv
    env.restore()
    srv.cleanup()


@pytest.fixture
def pulse_own():
    """A daemon of the test's own, which the test may kill."""
    srv = start_pulse({"kflost": 48000})
    env = _Env(srv)
    yield srv
    env.restore()
    srv.cleanup()


def rms_db_envelope(x: np.ndarray, hop: int = 160, win: int = 640, floor_below_peak: float = 50.0):
    """Reference loudness straight from the samples: RMS in dB of ``win``
    samples centred every ``hop``, clamped at peak - floor (independent of
    kf_desktop.audio.features)."""
    n = len(x) // hop
    pad = np.concatenate([np.zeros(win // 2, np.float32), x, np.zeros(win, np.float32)])
    db = np.array([10 * np.log10(np.mean(pad[k * hop:k * hop + win] ** 2) + 1e-12) for k in range(n)])
    return np.maximum(db, db.max() - floor_below_peak)
