"""Face mesh analysis: mediapipe face mesh (legacy ``solutions`` API, 478 points).

``FaceAnalyzer(static=True)`` analyses single photos (the portrait);
``FaceAnalyzer(static=False)`` tracks a face across the frames of a stream (the
webcam), which is faster because mediapipe re-uses the previous frame's face box
instead of running the detector every frame.

Thread safety: a mediapipe graph must not be fed from two threads at once. Use
one ``FaceAnalyzer`` per thread (create it in the thread that uses it); a
concurrent call from a second thread raises ``RuntimeError`` rather than
corrupting the graph.

Head pose is estimated geometrically from the 3-D landmarks (no solvePnP, no
camera model): the face's left-right axis is the mean of vectors between
mirror-symmetric landmark pairs, its up-down axis runs from rigid lower-face
points (nose base, cheeks) to rigid upper-face points (forehead), both in
(x, y, z) pixels. The estimate is exactly equivariant to 3-D rotations of the
landmarks, which the tests check with synthetic rotations.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from typing import Iterator

import numpy as np

from kf_desktop.frames import FaceResult

# mediapipe's C++ side logs through glog/absl. GLOG_minloglevel is honoured by
# glog-based builds when set before the library loads; the absl-logged start-up
# warnings of 0.10.21 ignore it and are silenced by _quiet_stderr instead.
os.environ.setdefault("GLOG_minloglevel", "2")

N_LANDMARKS = 478

# Mirror-symmetric landmark pairs (subject's right, subject's left) on parts of
# the face that expressions barely move: eye corners, temples, forehead and face
# outline above the jaw, cheekbones, nostril wings. Checked on a frontal face:
# the midpoint of every pair lies on the facial midline within ~2 px.
_SYMMETRIC_RIGID_PAIRS: tuple[tuple[int, int], ...] = (
    (33, 263), (133, 362),  # eye corners (outer, inner)
    (234, 454), (127, 356), (162, 389), (21, 251), (54, 284),  # outline
    (103, 332), (67, 297), (109, 338), (93, 323),
    (116, 345), (123, 352), (50, 280),  # cheekbones
    (129, 358), (98, 327),  # nostril wings
)
# Rigid points above and below the eyes; upper minus lower is the face's "up".
_UPPER_RIGID = (10, 151, 109, 338, 67, 297, 9)
_LOWER_RIGID = (2, 98, 327, 205, 425, 50, 280)

# No pitch offset is applied: with these point sets a face looking into the
# camera reads pitch within about +-8 deg (default portrait -7, the webcam
# clips +1..+8, filmed from slightly below), so "frontal" is close to 0 and the
# retargeting only ever uses pose relative to a calibrated neutral anyway.

# Eyelid landmark pairs (upper, lower) and eye corners, per eye.
# "right" = the subject's right eye = image left.
RIGHT_EYE_CORNERS = (33, 133)
LEFT_EYE_CORNERS = (263, 362)
RIGHT_EYE_LIDS: tuple[tuple[int, int], ...] = ((159, 145), (158, 153), (160, 144))
LEFT_EYE_LIDS: tuple[tuple[int, int], ...] = ((386, 374), (385, 380), (387, 373))
# Inner-lip pairs (upper, lower) and outer mouth corners.
MOUTH_OPEN_PAIRS: tuple[tuple[int, int], ...] = ((13, 14), (82, 87), (312, 317))
MOUTH_CORNERS = (61, 291)


# --------------------------------------------------------------------------
# Geometry (pure numpy, usable without mediapipe)
# --------------------------------------------------------------------------
def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """(3, 3) rotation in image axes (x right, y down, z away from camera).

    Conventions match ``FaceResult``: yaw > 0 turns the face toward the image's
    right, pitch > 0 looks up, roll > 0 tilts the head clockwise in the image.
    Composition: ``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` (yaw applied first).
    """
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    cy, sy, cp, sp, cr, sr = (math.cos(y), math.sin(y), math.cos(p), math.sin(p),
                              math.cos(r), math.sin(r))
    ry = np.array([[cy, 0.0, -sy], [0.0, 1.0, 0.0], [sy, 0.0, cy]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    rz = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return rz @ rx @ ry


def angles_from_matrix(rot: np.ndarray) -> tuple[float, float, float]:
    """Inverse of ``rotation_matrix``: (yaw, pitch, roll) in degrees."""
    rot = np.asarray(rot, dtype=np.float64)
    pitch = math.degrees(math.asin(float(np.clip(-rot[2, 1], -1.0, 1.0))))
    yaw = math.degrees(math.atan2(rot[2, 0], rot[2, 2]))
    roll = math.degrees(math.atan2(-rot[0, 1], rot[1, 1]))
    return yaw, pitch, roll


def head_axes(landmarks: np.ndarray) -> np.ndarray:
    """(3, 3) head rotation from (478, 3) landmarks; columns are the head's
    x (toward the subject's left), y (toward the chin) and z (back of the head)
    axes in image axes. Identity for an upright face looking into the camera."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :3]
    pairs = np.asarray(_SYMMETRIC_RIGID_PAIRS)
    x = (lm[pairs[:, 1]] - lm[pairs[:, 0]]).sum(axis=0)
    down = lm[list(_LOWER_RIGID)].mean(axis=0) - lm[list(_UPPER_RIGID)].mean(axis=0)
    x /= np.linalg.norm(x) + 1e-12
    z = np.cross(x, down)
    z /= np.linalg.norm(z) + 1e-12
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def head_pose(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from (478, 3) landmarks."""
    return angles_from_matrix(head_axes(landmarks))


def _gap_ratio(lm: np.ndarray, pairs: tuple[tuple[int, int], ...],
               corners: tuple[int, int]) -> float:
    gaps = [np.linalg.norm(lm[a] - lm[b]) for a, b in pairs]
    width = np.linalg.norm(lm[corners[0]] - lm[corners[1]])
    return float(np.mean(gaps) / max(width, 1e-6))


def eye_open_ratios(landmarks: np.ndarray) -> tuple[float, float]:
    """(left, right) eyelid gap / eye width, measured in 3-D (pose-robust)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return (_gap_ratio(lm, LEFT_EYE_LIDS, LEFT_EYE_CORNERS),
            _gap_ratio(lm, RIGHT_EYE_LIDS, RIGHT_EYE_CORNERS))


def mouth_open_ratio(landmarks: np.ndarray) -> float:
    """Inner-lip gap / mouth width (outer corners), measured in 3-D."""
    return _gap_ratio(np.asarray(landmarks, dtype=np.float64), MOUTH_OPEN_PAIRS, MOUTH_CORNERS)


def face_result_from_landmarks(landmarks: np.ndarray) -> FaceResult:
    """Build a ``FaceResult`` (pose, eye and mouth ratios) from (478, 3) px."""
    lm = np.ascontiguousarray(landmarks, dtype=np.float32)
    if lm.shape != (N_LANDMARKS, 3):
        raise ValueError(f"expected ({N_LANDMARKS}, 3) landmarks, got {lm.shape}")
    yaw, pitch, roll = head_pose(lm)
    return FaceResult(landmarks=lm, yaw=yaw, pitch=pitch, roll=roll,
                      eye_open=eye_open_ratios(lm), mouth_open=mouth_open_ratio(lm))


def face_width(landmarks: np.ndarray) -> float:
    """Width in px of the landmarks' 2-D bounding box."""
    xs = np.asarray(landmarks)[:, 0]
    return float(xs.max() - xs.min())


# --------------------------------------------------------------------------
# mediapipe wrapper
# --------------------------------------------------------------------------
# Guards file descriptor 2 while it is redirected: two analyzers created at
# once in two threads would otherwise restore each other's /dev/null. It holds
# no data; it only serialises the redirection.
_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet_stderr(enabled: bool) -> Iterator[None]:
    """Send fd 2 to /dev/null while mediapipe builds its graph and runs its
    first inference: that is when its C++ code prints the TFLite/absl
    warnings that no environment variable turns off. Process-wide while
    active (~0.1 s), so another thread's stderr output in that window is lost.
    """
    if not enabled:
        yield
        return
    with _STDERR_LOCK:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 (e.g. pythonw): nothing to silence
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


class FaceAnalyzer:
    """mediapipe face mesh with iris refinement (478 landmarks).

    static: True for single photos (``static_image_mode``: the detector runs on
        every image), False for a video stream (tracking mode; frames must be
        passed in order).
    max_faces: how many faces mediapipe looks for. ``analyze_all`` returns at
        most this many; use >= 2 to notice photos with several people.
    min_confidence: detection and tracking confidence threshold.
    quiet: silence mediapipe's native log spam (see ``_quiet_stderr``).

    Not thread-safe: one analyzer per thread.
    """

    def __init__(self, static: bool, max_faces: int = 1, min_confidence: float = 0.5,
                 *, quiet: bool = True) -> None:
        if max_faces < 1:
            raise ValueError("max_faces must be >= 1")
        self.static = bool(static)
        self.max_faces = int(max_faces)
        self.min_confidence = float(min_confidence)
        self._quiet = quiet
        self._quiet_calls_left = 10
        self._busy = threading.Lock()
        with _quiet_stderr(quiet):
            from mediapipe.python.solutions import face_mesh

            self._mesh = face_mesh.FaceMesh(
                static_image_mode=self.static,
                max_num_faces=self.max_faces,
                refine_landmarks=True,
                min_detection_confidence=self.min_confidence,
                min_tracking_confidence=self.min_confidence,
            )
            # The graph's calculators start (and log) in mediapipe's own
            # threads; one call on a blank image waits until the graph is idle,
            # i.e. until that start-up is over, while stderr is still silenced.
            # A face-less frame leaves no tracking state behind.
            self._mesh.process(np.zeros((64, 64, 3), np.uint8))

    # -- public API ---------------------------------------------------------
    def analyze(self, image_rgb: np.ndarray) -> FaceResult | None:
        """The largest face in ``image_rgb`` ((H, W, 3) uint8 RGB), or None."""
        faces = self.analyze_all(image_rgb)
        return faces[0] if faces else None

    def analyze_all(self, image_rgb: np.ndarray) -> list[FaceResult]:
        """All faces found (at most ``max_faces``), largest (widest) first."""
        img = np.asarray(image_rgb)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {img.shape} {img.dtype}")
        img = np.ascontiguousarray(img)
        h, w = img.shape[:2]
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("FaceAnalyzer used from two threads at once; "
                               "create one analyzer per thread")
        try:
            if self._mesh is None:
                raise RuntimeError("FaceAnalyzer is closed")
            # The first frame with a face logs one more native warning (the
            # landmark projection's); keep stderr quiet until then, but only
            # for the first few calls so a long face-less stretch is not muted.
            quiet = self._quiet and self._quiet_calls_left > 0
            with _quiet_stderr(quiet):
                result = self._mesh.process(img)
            if quiet:
                found = bool(result.multi_face_landmarks)
                self._quiet_calls_left = 0 if found else self._quiet_calls_left - 1
        finally:
            self._busy.release()
        if not result.multi_face_landmarks:
            return []
        faces = []
        for face in result.multi_face_landmarks:
            lm = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            # Normalised -> pixels; mediapipe's z uses the x scale (image width).
            lm *= np.array([w, h, w], dtype=np.float32)
            faces.append(face_result_from_landmarks(lm))
        faces.sort(key=lambda f: face_width(f.landmarks), reverse=True)
        return faces

    def close(self) -> None:
        """Release the mediapipe graph. Safe to call twice."""
        mesh, self._mesh = self._mesh, None
        if mesh is not None:
            mesh.close()

    def __enter__(self) -> "FaceAnalyzer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; close() is the real API
        try:
            self.close()
        except Exception:
            pass
