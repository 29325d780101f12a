"""engine.paste_back: letterbox + feathered crop blend, on the default portrait."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.paste_back import CropBox, PasteBack, letterbox, letterbox_geometry
from tests.engine.conftest import CROP_SIZE, cut_crop


def as_tensor(crop: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


@pytest.mark.parametrize("out_size", [(1280, 720), (720, 1280)])
def test_identity_crop_composes_back(astronaut, out_size):
    box = CropBox(*astronaut.box)
    pb = PasteBack(astronaut.portrait, box, CROP_SIZE, out_size)
    out = pb.compose(as_tensor(astronaut.crop))
    assert out.shape == (out_size[1], out_size[0], 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous
    expected = letterbox(astronaut.portrait, out_size)
    assert np.array_equal(pb.base, expected)
    y0, y1, x0, x1 = pb.roi
    assert (y1 - y0) > 200 and (x1 - x0) > 200  # the head covers a real region
    assert psnr(out[y0:y1, x0:x1], expected[y0:y1, x0:x1]) > 35.0
    # Outside the crop region nothing changed.
    outside = np.ones(out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(out[outside], expected[outside])


def test_crop_lands_in_the_right_place_with_a_feathered_edge(astronaut):
    box = CropBox(*astronaut.box)
    pb = PasteBack(astronaut.portrait, box, CROP_SIZE, (1280, 720))
    white = pb.compose(torch.ones(3, CROP_SIZE, CROP_SIZE))
    black = pb.compose(torch.zeros(3, CROP_SIZE, CROP_SIZE))
    g = letterbox_geometry(astronaut.portrait.shape[1::-1], (1280, 720))
    # Mask = how far white and black differ, 0..1.
    mask = (white.astype(int) - black.astype(int)).mean(-1) / 255.0
    cx = round(g.ox + (box.x0 + box.size / 2) * g.sx)
    cy = round(g.oy + (box.y0 + box.size / 2) * g.sy)
    assert mask[cy, cx] > 0.99  # interior fully replaced
    # Horizontal profile through the centre: 0 outside, ramps up over ~6 %
    # of the crop, 1 well inside; symmetric about the box centre.
    left = g.ox + box.x0 * g.sx
    width = box.size * g.sx
    feather = 0.06 * width
    row = mask[cy]
    assert row[int(left) - 2] == 0.0
    assert 0.0 < row[round(left + feather / 2)] < 1.0
    assert row[round(left + feather + 2)] > 0.99
    right = left + width
    assert 0.0 < row[round(right - feather / 2)] < 1.0
    assert row[int(np.ceil(right)) + 1] == 0.0
    ys, xs = np.nonzero(mask > 0.5)
    assert abs((xs.min() + xs.max()) / 2 - (left + width / 2 - 0.5)) < 1.0
    assert abs((xs.max() - xs.min() + 1) - (width - feather)) < 2.0


def test_letterbox_keeps_aspect_and_black_bars():
    rng = np.random.default_rng(1)
    img = rng.integers(30, 255, size=(500, 300, 3), dtype=np.uint8)  # portrait 3:5
    out = letterbox(img, (1280, 720))
    assert out.shape == (720, 1280, 3) and out.dtype == np.uint8
    g = letterbox_geometry((300, 500), (1280, 720))
    assert (g.h, g.w) == (720, 432) and (g.ox, g.oy) == (424, 0)
    assert abs(g.w / g.h - 300 / 500) < 1.0 / g.h
    assert not out[:, :g.ox].any() and not out[:, g.ox + g.w:].any()  # bars black
    assert out[:, g.ox:g.ox + g.w].min() > 0  # the image fills its part
    # Landscape into portrait: bars top and bottom.
    wide = rng.integers(30, 255, size=(360, 640, 3), dtype=np.uint8)
    out = letterbox(wide, (720, 1280))
    g = letterbox_geometry((640, 360), (720, 1280))
    assert (g.w, g.h) == (720, 405)
    assert not out[:g.oy].any() and not out[g.oy + g.h:].any()
    assert out[g.oy:g.oy + g.h].min() > 0
    # Same size: untouched. A 10x downscale is antialiased: the noise
    # averages out (plain bilinear would keep half of it) and the mean stays.
    assert np.array_equal(letterbox(wide, (640, 360)), wide)
    small = letterbox(wide, (64, 36))
    assert abs(small.mean() - wide.mean()) < 2.0
    assert small.std() < 0.25 * wide.std()


def test_crop_box_partly_outside_the_portrait(astronaut):
    img = astronaut.portrait  # 512 x 512, letterboxed into 1280x720: bars left/right
    box = CropBox(-60.0, -40.0, 200.0)  # top-left corner hangs off the photo
    crop = cut_crop(img, (box.x0, box.y0, box.size), CROP_SIZE)
    pb = PasteBack(img, box, CROP_SIZE, (1280, 720))
    out = pb.compose(as_tensor(crop))
    assert out.shape == (720, 1280, 3)
    g = pb.geometry
    # The bar left of the photo stays black although the crop covers it.
    assert not out[:, :g.ox].any()
    y0, y1, x0, x1 = pb.roi
    assert x0 == g.ox and y0 == g.oy  # clipped to the photo
    assert psnr(out[y0:y1, x0:x1], pb.base[y0:y1, x0:x1]) > 35.0
    # Completely outside: compose is a plain copy of the base.
    far = PasteBack(img, CropBox(600.0, 10.0, 100.0), CROP_SIZE, (1280, 720))
    assert np.array_equal(far.compose(as_tensor(crop)), far.base)


def test_mirror_flips(astronaut):
    box = CropBox(*astronaut.box)
    crop = as_tensor(astronaut.crop)
    crop = crop * torch.linspace(0.5, 1.0, CROP_SIZE)  # asymmetric content
    plain = PasteBack(astronaut.portrait, box, CROP_SIZE, (1280, 720))
    mirrored = PasteBack(astronaut.portrait, box, CROP_SIZE, (1280, 720), mirror=True)
    a, b = plain.compose(crop), mirrored.compose(crop)
    assert np.array_equal(b, a[:, ::-1])
    assert not np.array_equal(a, a[:, ::-1])


def test_compose_leaves_the_base_alone(astronaut):
    pb = PasteBack(astronaut.portrait, CropBox(*astronaut.box), CROP_SIZE, (640, 360))
    before = pb.base.copy()
    first = pb.compose(torch.zeros(3, CROP_SIZE, CROP_SIZE))
    second = pb.compose(torch.ones(3, CROP_SIZE, CROP_SIZE))
    assert np.array_equal(pb.base, before)
    assert not np.shares_memory(first, second) and not np.shares_memory(first, pb.base)
    with pytest.raises(ValueError):
        pb.compose(torch.zeros(3, 128, 128))
