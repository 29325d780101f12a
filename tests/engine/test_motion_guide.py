"""engine.motion_guide on the real default portrait, checked with real mediapipe."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from engine.motion_guide import (
    FACE_OVAL,
    INNER_LIP_LOWER,
    INNER_LIP_UPPER,
    MotionGuide,
    warp_guide,
)
from tests.engine.conftest import CROP_SIZE, detect_landmarks

LOWER_LIP_OUTER = (146, 91, 181, 84, 17, 314, 405, 321, 375)
R_UP, R_LO = (246, 161, 160, 159, 158, 157, 173), (7, 163, 144, 145, 153, 154, 155)
L_UP, L_LO = (466, 388, 387, 386, 385, 384, 398), (249, 390, 373, 374, 380, 381, 382)
MOUTH_POLY = INNER_LIP_UPPER + INNER_LIP_LOWER[-2:0:-1]


# --- driving landmark sets built from the portrait's own landmarks ----------
def rotate(lms: np.ndarray, deg: float, shift=(0.0, 0.0)) -> np.ndarray:
    c = lms.mean(0)
    a = np.deg2rad(deg)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ((lms - c) @ r.T + c + np.asarray(shift)).astype(np.float32)


def open_mouth(lms: np.ndarray, px: float) -> np.ndarray:
    """Jaw drop: lower lip and chin move down by px, fading towards the jaw
    angles and the mouth corners, as a real jaw opening does."""
    d = lms.copy()
    yc = (lms[61, 1] + lms[291, 1]) / 2  # mouth-corner line
    xc = (lms[61, 0] + lms[291, 0]) / 2
    half = (lms[454, 0] - lms[234, 0]) / 2
    w = np.clip((lms[:, 1] - yc) / max(lms[14, 1] - yc, 1.0), 0, 1)
    w = w * np.clip(1 - np.abs(lms[:, 0] - xc) / half, 0, 1) ** 0.5
    w[list(INNER_LIP_LOWER[1:-1]) + list(LOWER_LIP_OUTER)] = 1.0
    w[[78, 308, 61, 291]] = 0.3
    d[:, 1] += px * w
    return d.astype(np.float32)


def close_eyes(lms: np.ndarray) -> np.ndarray:
    d = lms.copy()
    for up, lo in ((R_UP, R_LO), (L_UP, L_LO)):
        d[list(up)] = lms[list(lo)]
    return d


def render_u8(guide: MotionGuide, driving: np.ndarray) -> np.ndarray:
    out = guide.render(driving)
    assert out.shape == (3, CROP_SIZE, CROP_SIZE) and out.dtype == torch.float32
    return (out.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def luma(img: np.ndarray, mask: np.ndarray) -> float:
    px = img[mask.astype(bool)].astype(np.float64)
    return float((px @ [0.299, 0.587, 0.114]).mean())


def poly_mask(pts: np.ndarray, erode: int = 0) -> np.ndarray:
    m = np.zeros((CROP_SIZE, CROP_SIZE), np.uint8)
    cv2.fillPoly(m, [np.round(pts).astype(np.int32)], 1)
    if erode:
        m = cv2.erode(m, np.ones((2 * erode + 1,) * 2, np.uint8))
    return m


@pytest.fixture(scope="module")
def guide(astronaut) -> MotionGuide:
    g = MotionGuide(CROP_SIZE)
    g.set_portrait(astronaut.crop, astronaut.lms)
    return g


# --- tests -------------------------------------------------------------------
def test_identity_reproduces_the_crop(guide, astronaut):
    out = render_u8(guide, astronaut.lms)
    assert psnr(out, astronaut.crop) > 40.0
    # (478, 3) landmarks with z are accepted as well.
    lms3 = np.concatenate([astronaut.lms, np.zeros((478, 1), np.float32)], 1)
    assert np.array_equal(render_u8(guide, lms3), out)


def test_translation_moves_the_face(guide, astronaut):
    out = render_u8(guide, astronaut.lms + np.float32([8.0, 0.0]))
    # Phase correlation over the face box: the content moved ~8 px right.
    lo = np.floor(astronaut.lms.min(0)).astype(int)
    hi = np.ceil(astronaut.lms.max(0)).astype(int)
    a = cv2.cvtColor(astronaut.crop, cv2.COLOR_RGB2GRAY)[lo[1]:hi[1], lo[0]:hi[0]]
    b = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)[lo[1]:hi[1], lo[0]:hi[0]]
    win = cv2.createHanningWindow(a.shape[::-1], cv2.CV_64F)
    (dx, dy), _ = cv2.phaseCorrelate(a.astype(np.float64), b.astype(np.float64), win)
    assert abs(dx - 8.0) < 1.0 and abs(dy) < 1.0, (dx, dy)


@pytest.mark.parametrize(
    "name",
    ["rotate_translate", "mouth_open", "eyes_closed_rotated"],
)
def test_mediapipe_finds_landmarks_where_they_were_sent(guide, astronaut, name):
    lms = astronaut.lms
    driving = {
        "rotate_translate": rotate(lms, 6.0, shift=(5.0, -4.0)),
        "mouth_open": open_mouth(lms, 8.0),
        "eyes_closed_rotated": rotate(open_mouth(lms, 6.0), -4.0, shift=(-3.0, 2.0)),
    }[name]
    out = render_u8(guide, driving)
    found = detect_landmarks(out)
    assert found is not None, "mediapipe lost the face in the guide"
    err = np.linalg.norm(found - driving, axis=1)
    # mediapipe's own repeatability on this crop is ~1 px mean.
    assert err[:468].mean() < 3.0, err[:468].mean()
    # The groups the warp must follow closely, on their own.
    lips = list(MOUTH_POLY) + list(LOWER_LIP_OUTER)
    assert err[lips].mean() < 3.0, err[lips].mean()
    assert err[list(FACE_OVAL)].mean() < 3.0, err[list(FACE_OVAL)].mean()


def test_mediapipe_sees_the_mouth_open(guide, astronaut):
    """A wide opening (synthetic interior) reads as open. mediapipe places the
    lower lip a few px short of a synthetic interior, so the bound is loose."""
    lms = astronaut.lms

    def gap(p: np.ndarray) -> float:
        return float(np.linalg.norm(p[14] - p[13]))

    driving = open_mouth(lms, 16.0)
    found0 = detect_landmarks(render_u8(guide, lms))
    found = detect_landmarks(render_u8(guide, driving))
    assert found0 is not None and found is not None
    sent = gap(driving) - gap(lms)
    seen = gap(found) - gap(found0)
    assert seen > 0.5 * sent, (seen, sent)


def test_blink_closes_the_eyes(guide, astronaut):
    lms = astronaut.lms

    def eye_opening(pts: np.ndarray) -> float:
        # Lid distance over eye width, both eyes: ~0.3 open, < 0.1 closed.
        r = np.linalg.norm(pts[159] - pts[145]) / np.linalg.norm(pts[33] - pts[133])
        l_ = np.linalg.norm(pts[386] - pts[374]) / np.linalg.norm(pts[263] - pts[362])
        return float((r + l_) / 2)

    found_open = detect_landmarks(render_u8(guide, lms))
    found_closed = detect_landmarks(render_u8(guide, close_eyes(lms)))
    assert found_open is not None and found_closed is not None
    assert eye_opening(found_closed) < 0.5 * eye_opening(found_open)


def test_border_is_still(guide, astronaut):
    driving = rotate(open_mouth(close_eyes(astronaut.lms), 15.0), 8.0, shift=(9.0, 6.0))
    out = guide.render(driving)
    src = guide.portrait
    assert (out - src).abs().amax() > 0.3  # the warp is far from trivial
    ring = torch.ones(CROP_SIZE, CROP_SIZE, dtype=torch.bool)
    ring[3:-3, 3:-3] = False  # pixels within 2 px of the border (0, 1, 2)
    assert (out - src)[:, ring].abs().amax() < 1e-4


def test_mouth_interior_drawn_only_when_opening_wider(guide, astronaut):
    lms = astronaut.lms
    plain = MotionGuide(CROP_SIZE, mouth=False)
    plain.set_portrait(astronaut.crop, lms)

    # Same opening as the photo, or closed: no synthetic interior at all.
    for driving in (lms, rotate(lms, 3.0)):
        assert torch.equal(guide.render(driving), plain.render(driving))
    closed = lms.copy()
    mid = (lms[list(INNER_LIP_UPPER)] + lms[list(INNER_LIP_LOWER)]) / 2
    closed[list(INNER_LIP_UPPER)] = mid
    closed[list(INNER_LIP_LOWER)] = mid
    assert torch.equal(guide.render(closed), plain.render(closed))

    # Wider: a dark, reddish cavity inside the driving inner-lip polygon.
    wide = open_mouth(lms, 18.0)
    out = render_u8(guide, wide)
    inner = poly_mask(wide[list(MOUTH_POLY)], erode=1)
    outer = poly_mask(wide[[61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321,
                            405, 314, 17, 84, 181, 91, 146]])
    lips = outer & ~poly_mask(wide[list(MOUTH_POLY)])
    cheeks = poly_mask(wide[[50, 101, 36, 205]]) | poly_mask(wide[[280, 330, 266, 425]])
    assert inner.sum() > 200 and lips.sum() > 200 and cheeks.sum() > 50
    y_in, y_lips, y_skin = luma(out, inner), luma(out, lips), luma(out, cheeks)
    assert y_in < 0.75 * y_lips and y_in < 0.6 * y_skin, (y_in, y_lips, y_skin)
    # Without the interior the warp just stretches the photo's teeth/lips.
    stretched = render_u8(plain, wide)
    assert y_in < 0.7 * luma(stretched, inner)
    cavity = inner.astype(bool) & (out.astype(int).sum(-1) < 300)  # not the teeth
    r, g, b = out[cavity].astype(np.float64).mean(0)
    assert r > 1.4 * g and r > 1.2 * b, (r, g, b)
    # Teeth: a light band right under the upper lip, centred.
    top = np.round((wide[13] * 0.8 + wide[14] * 0.2)).astype(int)
    assert out[top[1], top[0]].astype(int).sum() > 1.8 * out[cavity].sum(-1).mean()


def test_batch_equals_single_calls(astronaut):
    lms = torch.from_numpy(astronaut.lms)
    img = torch.from_numpy(astronaut.crop).permute(2, 0, 1).float() / 255
    # A second, different portrait: the photo shifted, darkened, landmarks along.
    img2 = torch.roll(img, shifts=(-4, 6), dims=(1, 2)) * 0.8
    lms2 = lms + torch.tensor([6.0, -4.0])
    d1 = torch.from_numpy(open_mouth(astronaut.lms, 14.0))
    d2 = torch.from_numpy(rotate(close_eyes(lms2.numpy()), 5.0, shift=(3.0, -2.0)))
    batch = warp_guide(torch.stack([img, img2]), torch.stack([lms, lms2]),
                       torch.stack([d1, d2]))
    one = warp_guide(img[None], lms[None], d1[None])
    two = warp_guide(img2[None], lms2[None], d2[None])
    assert batch.shape == (2, 3, CROP_SIZE, CROP_SIZE)
    assert (one - two).abs().amax() > 0.3  # the two samples really differ
    torch.testing.assert_close(batch, torch.cat([one, two]), atol=1e-4, rtol=0)
    # The cached class renders what the function renders.
    g = MotionGuide(CROP_SIZE)
    g.set_portrait(img, lms.numpy())
    torch.testing.assert_close(g.render(d1.numpy()), one[0], atol=1e-5, rtol=0)


def test_bad_input_is_refused(guide, astronaut):
    with pytest.raises(ValueError):
        guide.render(astronaut.lms[:100])
    with pytest.raises(RuntimeError):
        MotionGuide(CROP_SIZE).render(astronaut.lms)
    with pytest.raises(ValueError):
        MotionGuide(CROP_SIZE).set_portrait(astronaut.crop[:128], astronaut.lms)
