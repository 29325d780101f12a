"""Issue 13 item 13: a lean toward the camera must not squeeze the hair flat
against the crop edge. Real portrait, real retargeter, real motion guide."""

from __future__ import annotations

import numpy as np
import pytest

from engine.motion_guide import MotionGuide
from kf_desktop.face import FaceAnalyzer, face_result_from_landmarks
from kf_desktop.frames import FaceResult
from kf_desktop.head_room import HeadRoom, hair_mask, hull, soft_cap, squeeze_of
from kf_desktop.pipeline import AvatarRenderer, DrivingSignal
from kf_desktop.portrait import load_portrait
from kf_desktop.retarget import RIGID, Gains, Retargeter

RAW = Gains(smoothing=0.0)


@pytest.fixture(scope="module")
def portrait(portrait_path):
    with FaceAnalyzer(static=True, max_faces=2) as fa:
        return load_portrait(portrait_path, fa)


@pytest.fixture(scope="module")
def guide(portrait) -> MotionGuide:
    g = MotionGuide(portrait.crop.shape[0])
    g.set_portrait(portrait.crop, portrait.crop_landmarks[:, :2])
    return g


def lean(lm: np.ndarray, scale: float, shift=(0.0, 0.0)) -> FaceResult:
    """The driver's face ``scale`` x larger about its centre (3-D, as a face
    coming closer to the camera looks), then shifted by ``shift`` face widths."""
    lm = np.asarray(lm, np.float64)
    c = lm[list(RIGID)].mean(axis=0)
    out = c + scale * (lm - c)
    out[:, :2] += np.asarray(shift) * np.ptp(lm[:, 0])
    return face_result_from_landmarks(out.astype(np.float32))


def drive(r: Retargeter, driver: np.ndarray, face: FaceResult) -> np.ndarray:
    r.update(face_result_from_landmarks(driver), 0.0)  # neutral = the portrait itself
    return r.update(face, 5.0)  # past the 0.25 s ease-in of a newly found face


def test_soft_cap_is_identity_below_the_knee_and_never_passes_the_limit():
    xs = np.linspace(0.0, 5.0, 501)
    ys = np.array([soft_cap(x, 1.0, 2.0) for x in xs])
    assert np.array_equal(ys[xs <= 1.0], xs[xs <= 1.0])
    assert (ys < 2.0).all() and (np.diff(ys) > 0).all()  # monotonic: motion never reverses
    assert soft_cap(1.001, 1.0, 2.0) == pytest.approx(1.001, abs=1e-6)  # C1 at the knee


def test_the_portraits_own_hull_fits_inside_the_moving_part_of_the_crop(portrait, guide):
    """The crop keeps the hair (hull margins) clear of the fade band; the
    2.2 x crop of before put the default portrait's hair top inside it."""
    s = portrait.crop.shape[0]
    m = guide.full_motion_px
    x0, y0, x1, y1 = hull(portrait.crop_landmarks[:, :2])
    assert min(x0, y0) >= m + 0.03 * s and max(x1, y1) <= s - m - 0.03 * s, \
        (x0, y0, x1, y1, m)
    room = HeadRoom(portrait.crop_landmarks, s, m)
    assert room.fill0 < 0.85  # at least ~18% growth before the limit


def test_identity_and_small_motion_pass_unchanged(portrait, guide):
    s = portrait.crop.shape[0]
    room = HeadRoom(portrait.crop_landmarks, s, guide.full_motion_px)
    own = portrait.crop_landmarks[:, :2].astype(np.float32)
    assert np.array_equal(room.fit(own), own)
    c = own.mean(axis=0)
    small = (c + 1.03 * (own - c) + [2.0, -2.0]).astype(np.float32)
    np.testing.assert_allclose(room.fit(small), small, atol=1e-4)


def test_a_deep_lean_in_fits_the_crop(portrait, guide):
    """A 45% lean toward the camera with no limit at all: the crop alone has
    room for the hair (the 2.2 x crop of before squeezed it 1.46 x)."""
    driver = portrait.face.landmarks
    out = drive(Retargeter(portrait.crop_landmarks, RAW), driver, lean(driver, 1.45))
    assert np.ptp(out, axis=0).max() > 1.4 * np.ptp(portrait.crop_landmarks[:, :2], axis=0).max()
    hair = hair_mask(portrait.crop_landmarks, portrait.crop.shape[0])
    assert squeeze_of(guide.sample_points(out).numpy(), hair).max() < 1.2


@pytest.mark.parametrize("scale,shift", [(1.3, (0.0, -0.35)), (1.1, (0.9, 0.0)),
                                         (1.0, (0.5, 0.0)), (1.6, (0.0, 0.3))])
def test_leaning_and_moving_keeps_the_hair_out_of_the_band(portrait, guide, scale, shift):
    """A lean-in plus a move (up, sideways, down) through the app's
    retargeter: with the head-room limit the hair is not squeezed against the
    crop edge; the same drive without it is (so the test sees the difference
    it claims)."""
    s = portrait.crop.shape[0]
    m = guide.full_motion_px
    hair = hair_mask(portrait.crop_landmarks, s)
    driver = portrait.face.landmarks
    face = lean(driver, scale, shift)
    free = drive(Retargeter(portrait.crop_landmarks, RAW), driver, face)
    kept = drive(Retargeter(portrait.crop_landmarks, RAW, crop_size=s, still_margin=m),
                 driver, face)
    squeeze_free = squeeze_of(guide.sample_points(free).numpy(), hair).max()
    squeeze_kept = squeeze_of(guide.sample_points(kept).numpy(), hair).max()
    assert squeeze_free > 1.5, squeeze_free
    assert squeeze_kept < 1.5, squeeze_kept
    x0, y0, x1, y1 = hull(kept)
    assert min(x0, y0) >= m - 1.0 and max(x1, y1) <= s - m + 1.0
    # Graceful, not frozen: the head still follows the driver part of the way.
    p_lm = portrait.crop_landmarks[:, :2]
    grew = np.ptp(kept, axis=0).max() / np.ptp(p_lm, axis=0).max()
    moved = np.abs(kept.mean(axis=0) - p_lm.mean(axis=0)).max()
    assert grew > 1.0 + 0.5 * (min(scale, 1.3) - 1.0) - 1e-3 and (moved > 0.02 * s or shift == (0.0, 0.0))


def test_growth_is_monotonic_and_saturates(portrait, guide):
    s = portrait.crop.shape[0]
    m = guide.full_motion_px
    driver = portrait.face.landmarks
    r = Retargeter(portrait.crop_landmarks, RAW, crop_size=s, still_margin=m)
    sizes = [np.ptp(drive(r, driver, lean(driver, k)), axis=0).max()
             for k in np.linspace(1.0, 2.0, 11)]
    assert (np.diff(sizes) > 0).all()  # a deeper lean always looks a bit bigger
    assert sizes[-1] / sizes[0] < 1.35  # and never leaves the room


def test_the_renderer_applies_the_limit(portrait):
    """AvatarRenderer (the live and render path) wires the room into its
    retargeter."""
    r = AvatarRenderer(portrait, out_size=(320, 240), gains=RAW)
    s = portrait.crop.shape[0]
    m = MotionGuide(s).full_motion_px
    driver = portrait.face.landmarks
    r.driving_landmarks(DrivingSignal(timestamp=0.0, face=face_result_from_landmarks(driver)))
    out = r.driving_landmarks(DrivingSignal(timestamp=5.0, face=lean(driver, 1.6)))
    x0, y0, x1, y1 = hull(out)
    assert min(x0, y0) >= m - 1.0 and max(x1, y1) <= s - m + 1.0
