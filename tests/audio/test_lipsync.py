"""Lip-sync on real speech (LibriVox) and espeak-ng syllables, driven through
the same streaming path the app uses: WavSource -> read_new -> LipSync.push ->
LipSync.at(video frame time)."""

from __future__ import annotations

import numpy as np
import pytest

from kf_desktop.audio.lipsync import LipSync, mouth_track
from kf_desktop.audio.wav import WavSource
from tests.audio.conftest import LIBRIVOX, SR, rms_db_envelope

FPS = 30.0


def drive(samples: np.ndarray, lookahead_ms: float = 40.0, chunk: int = 160):
    """Stream samples through LipSync in ``chunk``-sample blocks and, as a
    video loop would, take the shape for each 30 fps frame time as soon as
    it has been computed. Returns (frame times, shapes); time 0 = first sample."""
    ls = LipSync(lookahead_ms=lookahead_ms)
    x = np.concatenate([samples, np.zeros(int(0.2 * SR), np.float32)])  # flush the look-ahead
    times = np.arange(0.0, len(samples) / SR, 1.0 / FPS)
    shapes = []
    for i in range(0, len(x), chunk):
        ls.push(x[i:i + chunk], (i + len(x[i:i + chunk])) / SR)
        latest = ls.latest()
        while latest is not None and len(shapes) < len(times) and times[len(shapes)] <= latest[0]:
            shapes.append(ls.at(times[len(shapes)]))
    return times, shapes


@pytest.mark.parametrize("clip", LIBRIVOX)
def test_jaw_follows_loudness_on_real_speech(librivox, clip):
    _, x = librivox(clip)
    times, shapes = drive(x)
    jaw = np.array([s.jaw_open for s in shapes])
    ref = rms_db_envelope(x)  # 100 Hz, computed from the raw samples
    idx = np.minimum((times * 100).round().astype(int), len(ref) - 1)
    r = float(np.corrcoef(jaw, ref[idx])[0, 1])
    print(f"librivox_{clip}: corr(jaw_open, loudness dB) = {r:.3f}")
    assert r >= 0.6
    assert jaw.max() > 0.8 and jaw.min() < 0.05  # uses the whole range


def test_streaming_through_wavsource_matches(librivox):
    """The WavSource fast path delivers the same audio and times as the file."""
    path, x = librivox("0880")
    src = WavSource(path, realtime=False).open()
    ls = LipSync()
    frames = src.t0 + np.arange(0.0, len(x) / SR, 1 / FPS)
    jaw = []
    while len(jaw) < len(frames):
        chunk, t_end = src.read_new()
        if src.eof:
            chunk, t_end = np.zeros(160, np.float32), t_end + 0.01  # flush the look-ahead
        ls.push(chunk, t_end)
        latest = ls.latest()
        while latest is not None and len(jaw) < len(frames) and frames[len(jaw)] <= latest[0]:
            jaw.append(ls.at(frames[len(jaw)]).jaw_open)
    _, ref_shapes = drive(x)
    ref = np.array([s.jaw_open for s in ref_shapes])
    assert np.abs(np.array(jaw) - ref).max() < 0.02


@pytest.mark.parametrize("clip", ["0870", "0920"])
@pytest.mark.parametrize("tail", ["digital", "noise"])
def test_silence_closes_within_100ms(librivox, clip, tail):
    _, x = librivox(clip)
    rng = np.random.default_rng(1)
    # Cut mid-vowel at the loudest 10 ms (the hardest place to stop), then
    # 500 ms of silence: digital zeros, or room noise at -60 dBFS.
    env = rms_db_envelope(x)
    cut = int(np.argmax(env)) * 160
    n_sil = int(0.5 * SR)
    sil = (np.zeros(n_sil, np.float32) if tail == "digital"
           else rng.normal(0, 10 ** (-60 / 20), n_sil).astype(np.float32))
    y = np.concatenate([x[:cut], sil])
    t, shapes = mouth_track(y)
    jaw = np.array([s.jaw_open for s in shapes])
    t_cut = cut / SR
    before = jaw[(t > t_cut - 0.05) & (t < t_cut)]
    assert before.max() > 0.5, "the mouth should be open when speech is cut"
    after = t >= t_cut
    closed = np.flatnonzero(after & (jaw < 0.05))
    close_time = t[closed[0]] - t_cut
    print(f"{clip}/{tail}: closed {close_time * 1000:.0f} ms after the speech stopped")
    assert close_time <= 0.100
    assert jaw[t >= t_cut + 0.1].max() < 0.05  # and stays closed


def closures(jaw: np.ndarray, open_thr: float = 0.6, closed_thr: float = 0.15) -> int:
    """Closures between two open vowels: runs below closed_thr with an
    open (> open_thr) stretch before and after them."""
    state, count, seen_open, dipped = 0, 0, False, False
    for v in jaw:
        if v > open_thr:
            if seen_open and dipped:
                count += 1
            seen_open, dipped = True, False
        elif v < closed_thr and seen_open:
            dipped = True
    return count


@pytest.mark.parametrize("text", ["ma ma ma", "mamama", "pa ba pa", "pabapa"])
def test_bilabials_close_the_mouth(espeak, text):
    x = espeak(text)
    t, shapes = mouth_track(x)
    jaw = np.array([s.jaw_open for s in shapes])
    n = closures(jaw)
    print(f"{text!r}: {n} closures between vowels, min jaw between vowels "
          f"{jaw[np.argmax(jaw > 0.6):len(jaw) - np.argmax(jaw[::-1] > 0.6)].min():.3f}")
    assert n >= 2


def test_bilabial_closure_is_visible_at_video_rate(espeak):
    """At 30 fps, at least one video frame lands inside each closure."""
    times, shapes = drive(espeak("ma ma ma"))
    jaw = np.array([s.jaw_open for s in shapes])
    assert closures(jaw, closed_thr=0.2) >= 2


def _voiced_mean(x, attr):
    t, shapes = mouth_track(x)
    jaw = np.array([s.jaw_open for s in shapes])
    vals = np.array([getattr(s, attr) for s in shapes])
    sel = jaw > 0.2
    return float(vals[sel].mean())


def test_open_vowel_opens_more_than_close_vowel(espeak):
    ah, ee = _voiced_mean(espeak("ah"), "jaw_open"), _voiced_mean(espeak("ee"), "jaw_open")
    print(f"jaw_open: ah {ah:.2f}, ee {ee:.2f}")
    assert ah > ee + 0.2


def test_rounded_vowel_rounds(espeak):
    oo, ee, ah = (_voiced_mean(espeak(v), "rounding") for v in ("oo", "ee", "ah"))
    print(f"rounding: oo {oo:.2f}, ee {ee:.2f}, ah {ah:.2f}")
    assert oo > ee + 0.2 and oo > ah + 0.2


def test_spread_vowel_widens(espeak):
    ee, oo = _voiced_mean(espeak("ee"), "lip_width"), _voiced_mean(espeak("oo"), "lip_width")
    print(f"lip_width: ee {ee:+.2f}, oo {oo:+.2f}")
    assert ee > 0.3 and oo < 0.0


def test_lookahead_is_bounded(librivox):
    """A shape for audio time t depends on no audio later than t + latency:
    replacing everything after T leaves every shape before T - latency as is."""
    _, x = librivox("0890")
    ls = LipSync(lookahead_ms=40)
    assert ls.latency_s <= 0.060
    T = 2.0
    y = x.copy()
    y[int(T * SR):] = np.random.default_rng(0).normal(0, 0.3, len(y) - int(T * SR))
    t1, a = mouth_track(x)
    t2, b = mouth_track(y)
    keep = t1 < T - ls.latency_s - 1e-6
    ja = np.array([s.jaw_open for s in a])[keep]
    jb = np.array([s.jaw_open for s in b])[keep]
    assert np.array_equal(ja, jb)
    # ... while the shape right after T does change (the test has teeth).
    late = (t1 >= T) & (t1 < T + 0.2)
    assert not np.allclose(np.array([s.jaw_open for s in a])[late],
                           np.array([s.jaw_open for s in b])[late])


def test_at_closes_when_audio_stops():
    ls = LipSync()
    rng = np.random.default_rng(0)
    t = np.arange(SR) / SR
    tone = (0.3 * np.sin(2 * np.pi * 150 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    tone += rng.normal(0, 0.01, SR).astype(np.float32)
    ls.push(tone, 1.0)
    t_last, last = ls.latest()
    assert ls.at(t_last + 0.05) == last
    assert ls.at(t_last + 1.0).jaw_open == 0.0  # stale: closed, not frozen open
