"""FaceAnalyzer on real faces (the default portrait, a talking-head clip) and
the geometric head-pose estimate on synthetically rotated landmarks."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from PIL import Image

from kf_desktop.face import (
    FaceAnalyzer,
    angles_from_matrix,
    face_result_from_landmarks,
    head_axes,
    head_pose,
    rotation_matrix,
)


@pytest.fixture(scope="module")
def astronaut(portrait_path) -> np.ndarray:
    return np.asarray(Image.open(portrait_path).convert("RGB"))


@pytest.fixture(scope="module")
def still():
    with FaceAnalyzer(static=True, max_faces=2) as fa:
        yield fa


def _clip_frames(path, start: int, count: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    try:
        frames = []
        for i in range(start + count):
            ok, bgr = cap.read()
            assert ok, f"{path} ended at frame {i}"
            if i >= start:
                frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return frames
    finally:
        cap.release()


def test_astronaut_has_one_frontal_face(still, astronaut):
    faces = still.analyze_all(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.landmarks.shape == (478, 3) and f.landmarks.dtype == np.float32
    xy = f.landmarks[:, :2]
    assert (xy >= 0).all() and (xy < 512).all()
    # The face sits in the upper middle of the photo, ~90 px wide.
    assert 150 < xy[:, 0].mean() < 300 and 60 < xy[:, 1].mean() < 200
    assert 70 < np.ptp(xy[:, 0]) < 120
    assert max(abs(f.yaw), abs(f.pitch), abs(f.roll)) < 20
    assert all(0.2 < e < 0.5 for e in f.eye_open), f.eye_open
    assert 0.0 <= f.mouth_open < 0.3  # smiling with the lips slightly apart
    assert still.analyze(astronaut).landmarks.shape == (478, 3)


def test_no_face_in_blank_or_noise(still):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    blank = np.full((480, 640, 3), 128, np.uint8)
    assert still.analyze(blank) is None
    assert still.analyze(noise) is None
    assert still.analyze_all(noise) == []


def test_flip_negates_yaw_and_roll(still, data_file):
    # Frame 508 of the clip: the speaker turns ~20 deg toward the image right.
    frame = _clip_frames(data_file("cap13_edit2.mp4"), 508, 1)[0]
    a = still.analyze(frame)
    b = still.analyze(np.ascontiguousarray(frame[:, ::-1]))
    assert a is not None and b is not None
    assert a.yaw > 12, a.yaw
    assert b.yaw == pytest.approx(-a.yaw, abs=5)
    assert b.roll == pytest.approx(-a.roll, abs=4)
    assert b.pitch == pytest.approx(a.pitch, abs=4)


def test_image_rotation_changes_roll(still, astronaut):
    base = still.analyze(astronaut)
    centre = tuple(float(v) for v in base.landmarks[:, :2].mean(axis=0))
    for angle in (15, -15):  # cv2: positive = counter-clockwise in the image
        m = cv2.getRotationMatrix2D(centre, angle, 1.0)
        rotated = cv2.warpAffine(astronaut, m, (512, 512), borderMode=cv2.BORDER_REPLICATE)
        f = still.analyze(rotated)
        assert f is not None
        # roll > 0 is clockwise, so a counter-clockwise turn lowers it.
        assert f.roll == pytest.approx(base.roll - angle, abs=5)
        assert abs(f.yaw - base.yaw) < 5


def test_tracking_clip_finds_face_and_follows_turns(data_file):
    frames = _clip_frames(data_file("cap13_edit2.mp4"), 490, 60)
    with FaceAnalyzer(static=False) as tracker:
        faces = [tracker.analyze(f) for f in frames]
    found = [f for f in faces if f is not None]
    assert len(found) >= 0.95 * len(frames)
    yaws = np.array([f.yaw for f in found])
    assert np.ptp(yaws) > 10, yaws  # the speaker turns his head
    assert (yaws > 10).any() and (yaws < 2).any()


def test_euler_round_trip():
    for yaw, pitch, roll in itertools.product((-40, -5, 0, 25), (-30, 0, 12), (-20, 0, 35)):
        rot = rotation_matrix(yaw, pitch, roll)
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12)
        assert angles_from_matrix(rot) == pytest.approx((yaw, pitch, roll), abs=1e-9)


def test_rotation_sign_conventions():
    # yaw > 0: the face normal (toward the camera, -z) swings to image right.
    assert (rotation_matrix(20, 0, 0) @ [0, 0, -1])[0] > 0
    # pitch > 0: looks up (normal goes to -y).
    assert (rotation_matrix(0, 20, 0) @ [0, 0, -1])[1] < 0
    # roll > 0: clockwise in the image (x axis tips down, +y).
    assert (rotation_matrix(0, 0, 20) @ [1, 0, 0])[1] > 0


def test_pose_of_synthetically_rotated_landmarks(still, astronaut):
    lm = still.analyze(astronaut).landmarks.astype(np.float64)
    centre = lm.mean(axis=0)
    # Make the real (slightly non-frontal, asymmetric) face frontal first.
    frontal = (lm - centre) @ head_axes(lm) + centre
    assert head_pose(frontal) == pytest.approx((0, 0, 0), abs=1e-6)
    rng = np.random.default_rng(1)
    for yaw, pitch, roll in [(15, 0, 0), (-30, 0, 0), (0, 20, 0), (0, -15, 0), (0, 0, 25),
                             (20, -10, 8), (-25, 15, -12), (35, 10, 20)]:
        rot = rotation_matrix(yaw, pitch, roll)
        moved = (frontal - centre) @ rot.T + centre + [40.0, -25.0, 0.0]
        moved += rng.normal(0, 0.7, moved.shape)  # landmark jitter, px
        est = face_result_from_landmarks(moved.astype(np.float32))
        assert (est.yaw, est.pitch, est.roll) == pytest.approx((yaw, pitch, roll), abs=3)


def test_bad_input_and_close(astronaut):
    fa = FaceAnalyzer(static=True)
    with pytest.raises(ValueError):
        fa.analyze(astronaut[:, :, 0])
    with pytest.raises(ValueError):
        fa.analyze(astronaut.astype(np.float32))
    fa.close()
    fa.close()  # twice is fine
    with pytest.raises(RuntimeError):
        fa.analyze(astronaut)


def test_native_log_noise_is_silenced(capfd, data_file):
    frames = _clip_frames(data_file("cap13_edit2.mp4"), 0, 3)
    with FaceAnalyzer(static=False, quiet=False) as loud:
        for f in frames:
            loud.analyze(f)
    noisy = capfd.readouterr().err
    with FaceAnalyzer(static=False) as quiet:
        for f in frames:
            assert quiet.analyze(f) is not None
    err = capfd.readouterr().err
    if "inference_feedback_manager" not in noisy:
        pytest.skip("this mediapipe build logs nothing on start-up")
    assert "inference_feedback_manager" not in err
