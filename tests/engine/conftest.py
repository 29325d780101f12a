"""Shared fixtures for engine tests: the default portrait's head crop and its
mediapipe landmarks, computed once per module (mediapipe is slow-ish)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PORTRAIT = REPO / "resources" / "portraits" / "astronaut.png"
CROP_SIZE = 256


@dataclass
class AstronautCrop:
    portrait: np.ndarray  # (H, W, 3) uint8 RGB, the full photo
    portrait_lms: np.ndarray  # (478, 2) float32, full-portrait pixels
    box: tuple[float, float, float]  # (x0, y0, size) in portrait pixels
    crop: np.ndarray  # (S, S, 3) uint8 RGB
    lms: np.ndarray  # (478, 2) float32, crop pixels


def detect_landmarks(img_rgb: np.ndarray) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB -> (478, 2) float32 pixel landmarks, or None."""
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1
    ) as fm:
        res = fm.process(np.ascontiguousarray(img_rgb))
    if not res.multi_face_landmarks:
        return None
    h, w = img_rgb.shape[:2]
    pts = res.multi_face_landmarks[0].landmark
    return np.array([[p.x * w, p.y * h] for p in pts], np.float32)


def crop_affine(box: tuple[float, float, float], s: int) -> np.ndarray:
    """2x3 cv2 matrix portrait pixel -> crop pixel. Crop pixel c covers the
    portrait span [x0 + c*k, x0 + (c+1)*k), k = size/s (area convention, the
    same one engine.paste_back uses), so centres map c = (x + .5 - x0)/k - .5."""
    x0, y0, size = box
    a = s / size
    return np.array(
        [[a, 0, (0.5 - x0) * a - 0.5], [0, a, (0.5 - y0) * a - 0.5]], np.float64
    )


def cut_crop(img: np.ndarray, box: tuple[float, float, float], s: int) -> np.ndarray:
    """Head crop with edge replication where the box leaves the image."""
    m = crop_affine(box, s)
    return cv2.warpAffine(
        img, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


@pytest.fixture(scope="module")
def astronaut() -> AstronautCrop:
    img = cv2.cvtColor(cv2.imread(str(PORTRAIT)), cv2.COLOR_BGR2RGB)
    lms_full = detect_landmarks(img)
    assert lms_full is not None, "mediapipe found no face in the default portrait"
    lo, hi = lms_full.min(0), lms_full.max(0)
    centre = (lo + hi) / 2
    size = float(1.8 * (hi - lo).max())
    box = (float(centre[0] - size / 2), float(centre[1] - size / 2), size)
    crop = cut_crop(img, box, CROP_SIZE)
    m = crop_affine(box, CROP_SIZE)
    lms = (lms_full @ m[:, :2].T + m[:, 2]).astype(np.float32)
    return AstronautCrop(img, lms_full, box, crop, lms)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny ops: one intra-op thread avoids spin contention on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
