"""Idle motion: no visible repetition over 10 minutes, natural blinks, breathing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kf_desktop.idle_motion import IdleMotion

FPS = 30


def series(im: IdleMotion, seconds: float, t0: float = 5000.0):
    return [im.at(t0 + k / FPS) for k in range(int(seconds * FPS))]


def acf(y: np.ndarray) -> np.ndarray:
    y = y - y.mean()
    n = len(y)
    f = np.fft.rfft(y, 2 * n)
    a = np.fft.irfft(np.abs(f) ** 2)[:n]
    return a / a[0]


@pytest.fixture(scope="module")
def ten_minutes():
    return {seed: series(IdleMotion(seed), 600) for seed in (0, 1, 2)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("field", ["yaw", "pitch", "roll", "tx", "ty"])
def test_no_repetition_over_ten_minutes(ten_minutes, seed, field):
    y = np.array([getattr(p, field) for p in ten_minutes[seed]])
    a = acf(y)
    lag5 = 5 * FPS
    worst = float(a[lag5:len(a) // 2].max())
    print(f"seed {seed} {field}: max autocorrelation past 5 s = {worst:.2f}, at 1 s = {a[FPS]:.2f}")
    assert worst < 0.5
    assert a[FPS // 3] > 0.8  # smooth: strongly correlated over a third of a second


def test_motion_ranges_are_natural(ten_minutes):
    ps = ten_minutes[0]
    yaw = np.array([p.yaw for p in ps])
    pitch = np.array([p.pitch for p in ps])
    tx = np.array([p.tx for p in ps])
    assert 1.5 < yaw.std() < 5 and np.abs(yaw).max() < 15
    assert 0.8 < pitch.std() < 4 and np.abs(pitch).max() < 12
    assert np.abs(tx).max() < 0.05
    speed = np.abs(np.diff(yaw)) * FPS
    assert np.percentile(speed, 99) < 20  # deg/s: no jerks
    # Mouth is left to the audio.
    assert all(p.jaw_open == 0.0 for p in ps[:100])


def test_blinks(ten_minutes):
    ps = ten_minutes[0]
    eye = np.array([p.eye_open for p in ps])
    shut = eye < 0.5
    starts = np.flatnonzero(shut[1:] & ~shut[:-1]) + 1
    ends = np.flatnonzero(~shut[1:] & shut[:-1]) + 1
    n = min(len(starts), len(ends))
    gaps = np.diff(starts) / FPS
    durations = (ends[:n] - starts[:n]) / FPS
    print(f"{len(starts)} blinks in 10 min; gaps {gaps.min():.2f}-{gaps.max():.2f} s; "
          f"eyes below half open for {durations.mean() * 1000:.0f} ms on average")
    assert 90 <= len(starts) <= 300  # one every 2-6 s
    singles = gaps[gaps > 1.0]
    assert singles.min() >= 1.9 and singles.max() <= 6.5
    doubles = int(np.count_nonzero(gaps < 0.6))
    assert 2 <= doubles <= 0.3 * len(starts)  # occasional double blinks
    assert eye.min() < 0.05  # blinks close the eyes fully ...
    assert 0.04 <= durations.mean() <= 0.12  # ... briefly (~150 ms whole blink)
    assert np.mean(eye > 0.99) > 0.9  # and eyes are open most of the time


def test_blink_shape_at_full_rate():
    im = IdleMotion(3)
    first = im.blink_times(20.0)[0]
    im.at(0.0)  # origin
    t = np.arange(first - 0.05, first + 0.25, 0.001)
    eye = np.array([im.at(tt).eye_open for tt in t])
    closed = t[eye < 0.5]
    assert 0.05 < closed[-1] - closed[0] < 0.12
    assert eye[0] == 1.0 and eye[-1] == 1.0
    i_min = int(np.argmin(eye))
    assert t[i_min] - first < 0.08  # closes faster than it opens


def test_breathing_without_sway():
    im = IdleMotion(0, amplitude=0.0)
    ps = series(im, 120)
    ty = np.array([p.ty for p in ps])
    assert np.abs([p.yaw for p in ps]).max() == 0.0
    spec = np.abs(np.fft.rfft(ty - ty.mean()))
    f = np.fft.rfftfreq(len(ty), 1 / FPS)
    peak = f[np.argmax(spec)]
    assert 0.18 < peak < 0.32


def test_deterministic_per_seed_and_random_access():
    a, b, c = IdleMotion(7), IdleMotion(7), IdleMotion(8)
    ta = [a.at(100 + k * 0.5) for k in range(40)]
    tb = [b.at(100 + k * 0.5) for k in range(40)]
    tc = [c.at(100 + k * 0.5) for k in range(40)]
    assert ta == tb and ta != tc
    # Asking for an earlier time again gives the same answer.
    assert a.at(105.0) == tb[10]


def test_speech_nods():
    quiet, talk = IdleMotion(4), IdleMotion(4)
    t = np.arange(0, 6, 1 / FPS)
    loud = (np.sin(2 * np.pi * 2 * t) > 0).astype(float)  # syllable-like on/off
    pq = np.array([quiet.at(tt).pitch for tt in t])
    pt = np.array([talk.at(tt, speech=float(v)).pitch for tt, v in zip(t, loud)])
    assert np.abs(pt - pq).max() > 0.5  # talking adds visible nods


def test_returns_motion_params_fields():
    p = IdleMotion(0).at(0.0)
    names = {f.name for f in dataclasses.fields(p)}
    assert {"yaw", "pitch", "roll", "tx", "ty", "eye_open", "jaw_open", "lip_width", "rounding"} <= names
