"""Retargeting on the real default portrait: synthetic edits of its own
landmarks as the driver (known answers), then a real clip end to end."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from kf_desktop.face import FaceAnalyzer, face_result_from_landmarks, rotation_matrix
from kf_desktop.portrait import load_portrait
from kf_desktop.retarget import (
    INNER_LIP_PAIRS,
    JAW,
    LEFT_EYE_LID_CHAIN,
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    RIGHT_EYE_LID_CHAIN,
    RIGID,
    Gains,
    MotionParams,
    OneEuroFilter,
    Retargeter,
)

RAW = Gains(smoothing=0.0)  # no output filter: exact answers


@pytest.fixture(scope="module")
def portrait(portrait_path):
    with FaceAnalyzer(static=True, max_faces=2) as fa:
        return load_portrait(portrait_path, fa)


@pytest.fixture(scope="module")
def driver(portrait) -> np.ndarray:
    """The portrait's own face in full-photo px, used as the webcam face."""
    return portrait.face.landmarks.astype(np.float64)


def face(lm: np.ndarray):
    return face_result_from_landmarks(np.asarray(lm, np.float32))


def rotate(lm: np.ndarray, yaw=0.0, pitch=0.0, roll=0.0) -> np.ndarray:
    c = lm[list(RIGID)].mean(axis=0)
    return (lm - c) @ rotation_matrix(yaw, pitch, roll).T + c


def gap(xy: np.ndarray, pairs) -> float:
    return float(np.mean([np.linalg.norm(xy[a, :2] - xy[b, :2]) for a, b in pairs]))


def mouth_ratio(xy: np.ndarray) -> float:
    return gap(xy, INNER_LIP_PAIRS) / float(np.linalg.norm(xy[61, :2] - xy[291, :2]))


def roll_2d(src: np.ndarray, dst: np.ndarray) -> float:
    """In-plane rotation (deg, clockwise in the image) taking src to dst."""
    a = src[list(RIGID), :2] - src[list(RIGID), :2].mean(axis=0)
    b = dst[list(RIGID), :2] - dst[list(RIGID), :2].mean(axis=0)
    return math.degrees(math.atan2((a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]).sum(),
                                   (a * b).sum()))


def close_eyes(lm: np.ndarray, frac: float) -> np.ndarray:
    out = lm.copy()
    for up, lo in RIGHT_EYE_LID_CHAIN + LEFT_EYE_LID_CHAIN:
        out[up] = lm[lo] + frac * (lm[up] - lm[lo])
    return out


def open_jaw(lm: np.ndarray, px: float) -> np.ndarray:
    out = lm.copy()
    down = list(JAW | set(LIPS_LOWER_INNER[1:-1]) | set(LIPS_LOWER_OUTER[1:-1]))
    out[down, 1] += px
    return out


def test_neutral_driver_gives_portrait(portrait, driver):
    p = portrait.crop_landmarks[:, :2]
    r = Retargeter(portrait.crop_landmarks)  # default smoothing
    for i in range(10):
        out = r.update(face(driver), i / 30)
        assert out.shape == (478, 2) and out.dtype == np.float32
        assert np.abs(out - p).max() < 0.5


def test_translation_transfers_scaled(portrait, driver):
    r = Retargeter(portrait.crop_landmarks, RAW)
    r.update(face(driver), 0.0)
    out = r.update(face(driver + [20.0, -10.0, 0.0]), 1.0)
    k = 256 / portrait.crop_box.size  # driver and portrait are the same face
    shift = out - portrait.crop_landmarks[:, :2]
    assert np.allclose(shift, [20 * k, -10 * k], atol=0.05)


@pytest.mark.parametrize("roll", [12.0, -20.0])
def test_roll_transfers(portrait, driver, roll):
    r = Retargeter(portrait.crop_landmarks, RAW)
    r.update(face(driver), 0.0)
    out = r.update(face(rotate(driver, roll=roll)), 1.0)
    assert roll_2d(portrait.crop_landmarks, out) == pytest.approx(roll, abs=0.3)


def test_yaw_and_pitch_transfer_in_3d(portrait, driver):
    p = portrait.crop_landmarks.astype(np.float64)
    r = Retargeter(p, RAW)
    r.update(face(driver), 0.0)
    out = r.update(face(rotate(driver, yaw=20, pitch=-10)), 1.0)
    expect = rotate(p, yaw=20, pitch=-10)[:, :2]
    assert np.abs(out - expect).max() < 0.3
    assert out[1, 0] - p[1, 0] > 3  # nose tip swings to the image right


def test_head_gain_scales_rotation(portrait, driver):
    r = Retargeter(portrait.crop_landmarks, Gains(head=0.5, smoothing=0))
    r.update(face(driver), 0.0)
    out = r.update(face(rotate(driver, roll=20)), 1.0)
    assert roll_2d(portrait.crop_landmarks, out) == pytest.approx(10, abs=0.3)


@pytest.mark.parametrize("eye_scale", [1.0, 1.6])
def test_blink_closes_portrait_eyes_fully(portrait, driver, eye_scale):
    """The driver's eyes may be bigger than the portrait's; a full blink still
    closes the portrait's eyes and a half blink halves their gap."""
    neutral = close_eyes(driver, eye_scale)  # eye_scale > 1: wider-open eyes
    p = portrait.crop_landmarks
    own = gap(p, RIGHT_EYE_LID_CHAIN + LEFT_EYE_LID_CHAIN)
    r = Retargeter(p, RAW)
    r.update(face(neutral), 0.0)
    shut = r.update(face(close_eyes(neutral, 0.02)), 1.0)
    assert gap(shut, RIGHT_EYE_LID_CHAIN) < 0.08 * own
    assert gap(shut, LEFT_EYE_LID_CHAIN) < 0.08 * own
    half = r.update(face(close_eyes(neutral, 0.5)), 2.0)
    assert gap(half, RIGHT_EYE_LID_CHAIN + LEFT_EYE_LID_CHAIN) == pytest.approx(0.5 * own, rel=0.15)
    again = r.update(face(neutral), 3.0)
    assert np.abs(again - p[:, :2]).max() < 0.05


def test_mouth_gain_zero_freezes_mouth_not_head(portrait, driver):
    p = portrait.crop_landmarks
    opened = rotate(open_jaw(driver, 12.0), roll=10)
    for gain, moves in ((1.0, True), (0.0, False)):
        r = Retargeter(p, Gains(mouth=gain, smoothing=0))
        r.update(face(driver), 0.0)
        out = r.update(face(opened), 1.0)
        assert roll_2d(p, out) == pytest.approx(10, abs=0.5)
        opened_by = mouth_ratio(out) - mouth_ratio(p)
        if moves:
            assert opened_by > 0.15
        else:
            assert abs(opened_by) < 0.01


def test_reset_neutral(portrait, driver):
    p = portrait.crop_landmarks[:, :2]
    moved = rotate(driver, roll=15) + [10.0, 5.0, 0.0]
    r = Retargeter(portrait.crop_landmarks, RAW)
    r.update(face(driver), 0.0)
    assert np.abs(r.update(face(moved), 0.1) - p).max() > 5
    r.reset_neutral()
    first = r.update(face(moved), 0.2)  # eases, no jump
    assert np.abs(first - p).max() > 5
    settled = r.update(face(moved), 1.0)
    assert np.abs(settled - p).max() < 0.05


def test_face_lost_eases_back_to_neutral(portrait, driver):
    p = portrait.crop_landmarks[:, :2]
    r = Retargeter(portrait.crop_landmarks, RAW)
    r.update(face(driver), 0.0)
    held = r.update(face(driver + [30.0, 0.0, 0.0]), 0.5)
    offset = float(np.abs(held - p).max())
    dists = [float(np.abs(r.update(None, 1.0 + dt) - p).max())
             for dt in np.arange(0.0, 0.71, 0.05)]
    assert dists[0] > 0.95 * offset  # no jump when the face disappears
    assert all(b <= a + 1e-6 for a, b in zip(dists, dists[1:]))  # monotone
    assert 0.2 * offset < dists[5] < 0.8 * offset  # halfway at 0.25 s
    assert dists[10] < 0.01  # back by 0.5 s
    # The face comes back: eased in too, then followed exactly.
    back = r.update(face(driver + [30.0, 0.0, 0.0]), 2.0)
    assert np.abs(back - p).max() < 0.5 * offset
    assert np.abs(r.update(face(driver + [30.0, 0.0, 0.0]), 2.5) - held).max() < 0.01


def test_one_euro_removes_jitter_keeps_steps():
    rng = np.random.default_rng(0)
    f = OneEuroFilter(min_cutoff=1.0, beta=0.05)
    n = 240
    signal = np.zeros((n, 478, 2))
    signal[150:] = 20.0  # a 20 px step at sample 150
    noisy = signal + rng.normal(0, 1.0, signal.shape)
    out = np.array([f(x, i / 30) for i, x in enumerate(noisy)])
    raw_var = noisy[30:150].var(axis=0).mean()
    assert out[30:150].var(axis=0).mean() < 0.3 * raw_var
    assert out[150 + 3].mean() > 18.0  # 90% of the step within 3 samples
    assert abs(out[-30:].mean() - 20.0) < 0.3
    f.reset()
    assert np.array_equal(f(noisy[0], 100.0), noisy[0])  # restarts unfiltered


def test_smoothing_gain_reduces_output_jitter(portrait, driver):
    rng = np.random.default_rng(1)
    frames = [driver + rng.normal(0, 0.8, driver.shape) for _ in range(90)]
    spread = {}
    for smoothing in (0.0, 0.5, 1.0):
        r = Retargeter(portrait.crop_landmarks, Gains(smoothing=smoothing))
        r.update(face(driver), 0.0)
        outs = np.array([r.update(face(f), (i + 1) / 30) for i, f in enumerate(frames)])
        spread[smoothing] = outs[30:].std(axis=0).mean()
    assert spread[0.5] < 0.6 * spread[0.0]
    assert spread[1.0] < spread[0.5]


def test_set_portrait_keeps_neutral(portrait, driver):
    r = Retargeter(portrait.crop_landmarks, RAW)
    r.update(face(driver), 0.0)
    other = portrait.crop_landmarks.astype(np.float64) * 0.8 + [20.0, 30.0, 0.0]
    r.set_portrait(other)
    out = r.update(face(driver + [10.0, 0.0, 0.0]), 1.0)
    k = 0.8 * 256 / portrait.crop_box.size
    assert np.allclose(out - other[:, :2], [10 * k, 0], atol=0.05)


# -- synthesize ----------------------------------------------------------------
def synth(portrait, **kw) -> np.ndarray:
    return Retargeter(portrait.crop_landmarks, RAW).synthesize(MotionParams(**kw), 0.0)


def test_synthesize_neutral_is_portrait(portrait):
    assert np.abs(synth(portrait) - portrait.crop_landmarks[:, :2]).max() < 1e-3


def test_synthesize_jaw_opens_mouth(portrait):
    p = portrait.crop_landmarks
    width = float(np.linalg.norm(p[61, :2] - p[291, :2]))
    half, full = synth(portrait, jaw_open=0.5), synth(portrait, jaw_open=1.0)
    centre = ((13, 14),)  # middle of the inner lips; the sides open less
    assert gap(full, centre) - gap(p, centre) > 0.35 * width  # 0.45 in head axes
    assert gap(full, INNER_LIP_PAIRS) - gap(p, INNER_LIP_PAIRS) > 0.25 * width
    assert gap(p, INNER_LIP_PAIRS) < gap(half, INNER_LIP_PAIRS) < gap(full, INNER_LIP_PAIRS)
    assert full[152, 1] > p[152, 1] + 3  # the chin drops
    assert np.abs(full[[10, 1, 33, 263], :] - p[[10, 1, 33, 263], :2]).max() < 1e-3


def test_synthesize_eyes_and_lips(portrait):
    p = portrait.crop_landmarks
    own = gap(p, RIGHT_EYE_LID_CHAIN + LEFT_EYE_LID_CHAIN)
    assert gap(synth(portrait, eye_open=0.0), RIGHT_EYE_LID_CHAIN + LEFT_EYE_LID_CHAIN) < 0.02 * own
    width = float(np.linalg.norm(p[61, :2] - p[291, :2]))
    wide = synth(portrait, lip_width=1.0)
    round_ = synth(portrait, rounding=1.0)
    assert np.linalg.norm(wide[61] - wide[291]) > 1.15 * width
    assert np.linalg.norm(round_[61] - round_[291]) < 0.85 * width


def test_synthesize_head_pose(portrait):
    p = portrait.crop_landmarks.astype(np.float64)
    out = synth(portrait, yaw=15)
    assert np.abs(out - rotate(p, yaw=15)[:, :2]).max() < 1e-3
    assert out[1, 0] > p[1, 0] + 2
    assert roll_2d(p, synth(portrait, roll=-8)) == pytest.approx(-8, abs=0.2)
    moved = synth(portrait, tx=0.1, ty=-0.05)
    fw = float(np.ptp(p[:, 0]))
    assert np.allclose(moved - p[:, :2], [0.1 * fw, -0.05 * fw], atol=1e-3)


def test_switching_face_to_params_is_smooth(portrait, driver):
    r = Retargeter(portrait.crop_landmarks, RAW)
    r.update(face(driver), 0.0)
    a = r.update(face(rotate(driver, roll=10)), 0.1)
    b = r.synthesize(MotionParams(), 0.2)  # e.g. idle motion takes over
    assert np.abs(b - a).max() < 0.01  # starts where the face left it
    c = r.synthesize(MotionParams(), 1.0)
    assert np.abs(c - portrait.crop_landmarks[:, :2]).max() < 0.01


# -- end to end on a real clip ----------------------------------------------------
def test_clip_mouth_drives_portrait_mouth(portrait, data_file):
    cap = cv2.VideoCapture(str(data_file("cap13_edit2.mp4")))
    frames = []
    for i in range(125):
        ok, bgr = cap.read()
        assert ok
        if i >= 25:  # frames 25-124: the speaker talks
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    r = Retargeter(portrait.crop_landmarks)  # default gains and smoothing
    drv, out = [], []
    with FaceAnalyzer(static=False) as tracker:
        for i, frame in enumerate(frames):
            f = tracker.analyze(frame)
            assert f is not None
            lm = r.update(f, i / 25)
            assert np.isfinite(lm).all() and (lm > -20).all() and (lm < 276).all()
            drv.append(f.mouth_open)
            out.append(mouth_ratio(lm))
    assert np.ptp(drv) > 0.2  # the clip does open the mouth
    assert np.corrcoef(drv, out)[0, 1] > 0.7
