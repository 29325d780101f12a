"""Retargeting: the driving face's motion, transferred onto the portrait.

The driving face (webcam landmarks) is compared with a calibrated *neutral*
pose of the same person, the first face seen after construction or after
``reset_neutral()``. Its change is split into

- a rigid similarity (3-D rotation, scale, translation) fitted on landmarks
  that expressions barely move (forehead, temples, nose, eye corners), and
- a non-rigid residual per landmark, expressed in the neutral face's frame.

The portrait then gets the residual (rotated into its own head frame, scaled
by the face-size ratio, with per-group gains), then the relative rotation in
3-D about its face centre (orthographic projection: x, y of the rotated
points), then the translation scaled by the face-size ratio. Blinks and mouth
opening transfer *relative* to the portrait's own features: a blink closes the
portrait's eyes as the same fraction of its own eyelid gap, and the mouth
residual is scaled by the ratio of mouth widths.

``synthesize(MotionParams)`` drives the same portrait from parameters (audio
lip-sync, idle motion) with the same head-rotation machinery and a jaw hinge.

All outputs are (478, 2) float32 landmarks in portrait-crop pixels, smoothed
by a One-Euro filter. No module-level mutable state; one instance per stream,
not thread-safe (one thread calls it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from kf_desktop.face import (
    LEFT_EYE_CORNERS,
    LEFT_EYE_LIDS,
    MOUTH_CORNERS,
    RIGHT_EYE_CORNERS,
    RIGHT_EYE_LIDS,
    head_axes,
    rotation_matrix,
)
from kf_desktop.frames import FaceResult
from kf_desktop.head_room import HeadRoom

N_LANDMARKS = 478

# ---------------------------------------------------------------------------
# mediapipe face-mesh index groups (478-point mesh, refine_landmarks=True).
# "Right" = the subject's right = image left.
# ---------------------------------------------------------------------------
#: Lip contours (mediapipe FACEMESH_LIPS).
LIPS_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
LIPS = frozenset(LIPS_UPPER_OUTER + LIPS_LOWER_OUTER + LIPS_UPPER_INNER + LIPS_LOWER_INNER)
#: Inner-lip (upper, lower) pairs, corner to corner, excluding the corners.
INNER_LIP_PAIRS = tuple(zip(LIPS_UPPER_INNER[1:-1], LIPS_LOWER_INNER[1:-1]))
#: Skin of the upper lip between nose and mouth (moves with the mouth).
UPPER_LIP_BODY = frozenset((11, 12, 38, 41, 42, 57, 62, 72, 73, 74, 76, 92, 183, 184, 186,
                            268, 271, 272, 287, 292, 302, 303, 304, 306, 322, 407, 408, 410))
#: Lower lip body, chin and the jaw contour below the mouth corners (these
#: ride on the mandible). Found as the non-lip points below the mouth-corner
#: line on a frontal face; symmetric.
JAW = frozenset((15, 16, 18, 32, 43, 58, 77, 83, 85, 86, 89, 90, 96, 106, 135, 136, 138, 140,
                 148, 149, 150, 152, 169, 170, 171, 172, 175, 176, 179, 180, 182, 194, 199, 200,
                 201, 202, 204, 208, 210, 211, 214, 262, 273, 288, 307, 313, 315, 316, 319, 320,
                 325, 335, 364, 365, 367, 369, 377, 378, 379, 394, 395, 396, 397, 400, 403, 404,
                 406, 418, 421, 422, 424, 428, 430, 431, 434))
#: Face outline (mediapipe FACEMESH_FACE_OVAL).
FACE_OVAL = frozenset((10, 21, 54, 58, 67, 93, 103, 109, 127, 132, 136, 148, 149, 150, 152, 162,
                       172, 176, 234, 251, 284, 288, 297, 323, 332, 338, 356, 361, 365, 377,
                       378, 379, 389, 397, 400, 454))
#: Eyelid contours as (upper, lower) pairs from the outer to the inner corner.
RIGHT_EYE_LID_CHAIN = ((246, 7), (161, 163), (160, 144), (159, 145), (158, 153), (157, 154),
                       (173, 155))
LEFT_EYE_LID_CHAIN = ((466, 249), (388, 390), (387, 373), (386, 374), (385, 380), (384, 381),
                      (398, 382))
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first
LEFT_IRIS = (473, 474, 475, 476, 477)
IRISES = frozenset(RIGHT_IRIS + LEFT_IRIS)
#: Skin rings around each eye (lid creases, under-eye); they follow blinks.
RIGHT_EYE_RINGS = (130, 247, 30, 29, 27, 28, 56, 190, 243, 112, 26, 22, 23, 24, 110, 25,
                   226, 113, 225, 224, 223, 222, 221, 189, 244, 233, 232, 231, 230, 229, 228, 31)
LEFT_EYE_RINGS = (359, 467, 260, 259, 257, 258, 286, 414, 463, 341, 256, 252, 253, 254, 339, 255,
                  446, 342, 445, 444, 443, 442, 441, 413, 464, 453, 452, 451, 450, 449, 448, 261)
EYES = frozenset(
    [i for pair in RIGHT_EYE_LID_CHAIN + LEFT_EYE_LID_CHAIN for i in pair]
    + list(RIGHT_EYE_CORNERS + LEFT_EYE_CORNERS + RIGHT_EYE_RINGS + LEFT_EYE_RINGS)
    + list(IRISES))
#: Mouth gain group: lips, upper-lip skin, jaw.
MOUTH = LIPS | UPPER_LIP_BODY | JAW
_MOUTH_IDX = tuple(sorted(MOUTH))
_EYES_IDX = tuple(sorted(EYES))
#: Points expressions barely move; the head's rigid motion is fitted on them.
RIGID = (10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1, 2,  # midline, forehead to nose
         33, 133, 263, 362,  # eye corners
         234, 454, 127, 356, 162, 389, 21, 251, 54, 284, 103, 332, 67, 297, 109, 338,
         93, 323,  # upper face outline
         116, 345, 123, 352,  # cheekbones
         98, 327, 129, 358, 48, 278, 64, 294)  # nostrils

# Eye openness below this fraction of the eye width is taken as "shut" when it
# is calibrated as neutral (the user blinked at calibration); the gap then
# counts as this much so that open eyes do not read as wide-eyed.
_MIN_NEUTRAL_EYE_RATIO = 0.18
_MAX_EYE_FRACTION = 1.4  # eyes open at most 40% wider than the portrait's own
_MOUTH_SCALE_CLAMP = (0.75, 1.33)  # mouth-width ratio vs face-size ratio
_LOST_EASE_S = 0.5  # face lost: ease to neutral over this long
_SWITCH_EASE_S = 0.25  # face found again / switching to parameters

# synthesize(): jaw_open=1 opens the inner-lip gap by this x mouth width; lip
# width +-1 stretches the mouth by this fraction; rounding=1 narrows it by
# this fraction, pushes the lips forward and opens them a little.
_JAW_OPEN_GAP = 0.45
_JAW_PIVOT_DEPTH = 0.9  # hinge depth behind the lips, in face widths
_UPPER_LIP_LIFT = 0.03
_LIP_WIDTH_STRETCH = 0.25
_ROUNDING_NARROW = 0.3
_ROUNDING_FORWARD = 0.1
_ROUNDING_JAW = 0.15
_CREASE_FOLLOW = 0.35  # upper crease ring follows the upper lid by this much


# ---------------------------------------------------------------------------
# One-Euro filter
# ---------------------------------------------------------------------------
class OneEuroFilter:
    """One-Euro low-pass filter (Casiez et al. 2012), vectorised: every element
    of the array is filtered independently with its own speed estimate.

    min_cutoff (Hz): cutoff at rest; lower = less jitter, more lag.
    beta: how fast the cutoff rises with speed (units: 1 / input units);
        higher = less lag in fast motion.
    d_cutoff (Hz): cutoff of the speed estimate.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0) -> None:
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t = 0.0

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        """Filter sample ``x`` taken at time ``t`` (seconds). A sample with
        t <= the previous one returns the previous output unchanged. A new
        shape restarts the filter."""
        x = np.asarray(x, dtype=np.float64)
        if self._x is None or self._x.shape != x.shape:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), float(t)
            return x.copy()
        dt = float(t) - self._t
        if dt <= 0.0:
            return self._x.copy()
        dx = (x - self._x) / dt
        self._dx = self._dx + self._alpha(self.d_cutoff, dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        self._x = self._x + self._alpha(cutoff, dt) * (x - self._x)
        self._t = float(t)
        return self._x.copy()

    def reset(self) -> None:
        """Forget the history; the next sample passes through unchanged."""
        self._x = self._dx = None
        self._t = 0.0


# ---------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Gains:
    """User gains. 1.0 = transfer as measured, 0 = off, > 1 exaggerates.

    head: rotation, translation and scale of the head.
    expression: non-rigid motion outside the mouth and eyes (brows, cheeks).
    mouth: lips, upper-lip skin and jaw.
    eyes: blinks, eyelids and gaze.
    smoothing: 0 = none ... 1 = heavy (One-Euro filter on the output).
    """

    head: float = 1.0
    expression: float = 1.0
    mouth: float = 1.0
    eyes: float = 1.0
    smoothing: float = 0.5


def smoothing_to_one_euro(smoothing: float) -> tuple[float, float]:
    """Gains.smoothing (0..1) -> (min_cutoff Hz, beta in 1/crop px).

    Log-interpolated: 0.25 -> (5.7 Hz, 0.16), 0.5 -> (2.1 Hz, 0.05),
    1 -> (0.3 Hz, 0.005). (Smoothing 0 bypasses the filter altogether.)
    Tuned on 256 px crops at 25-30 fps: at 0.5 a 1 px jitter's variance drops
    ~4x while a 20 px step is 90% followed within 3 frames, so blinks and
    mouth openings survive.
    """
    s = float(np.clip(smoothing, 0.0, 1.0))
    min_cutoff = 30.0 * (0.3 / 30.0) ** (0.15 + 0.85 * s) if s > 0 else 30.0
    beta = 0.5 * (0.005 / 0.5) ** s
    return min_cutoff, beta


@dataclass(frozen=True)
class MotionParams:
    """Explicit motion for the audio-only / idle path.

    yaw, pitch, roll: degrees, relative to the portrait's own pose (signs as
        in ``FaceResult``).
    tx, ty: head translation as a fraction of the portrait's face width
        (+x = image right, +y = image down).
    eye_open: 0 = shut ... 1 = the portrait's own opening (> 1 wider, capped).
    jaw_open: 0 = as in the portrait ... 1 = wide open.
    lip_width: -1 (narrow) ... 0 (neutral) ... 1 (wide, as in "ee").
    rounding: 0 ... 1 (pursed, as in "oo").
    """

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    eye_open: float = 1.0
    jaw_open: float = 0.0
    lip_width: float = 0.0
    rounding: float = 0.0


# ---------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------
def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Umeyama: (s, R, t) minimising sum |s R src_i + t - dst_i|^2; (N, 3) each."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[2] = -1.0
    rot = u @ np.diag(d) @ vt
    var_s = (a ** 2).sum() / len(src)
    s = float((sig * d).sum() / max(var_s, 1e-12))
    return s, rot, mu_d - s * rot @ mu_s


def _scale_rotation(rot: np.ndarray, gain: float) -> np.ndarray:
    """The rotation with the same axis and ``gain`` times the angle."""
    if gain == 1.0:
        return rot
    vec, _ = cv2.Rodrigues(np.asarray(rot, dtype=np.float64))
    out, _ = cv2.Rodrigues(vec * gain)
    return out


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _rigid_scale(points: np.ndarray) -> float:
    """RMS distance of the rigid landmarks from their centroid (3-D)."""
    r = points[list(RIGID)]
    return float(np.sqrt(((r - r.mean(axis=0)) ** 2).sum(axis=1).mean()))


def _lid_gap(points: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> float:
    return float(np.mean([np.linalg.norm(points[a] - points[b]) for a, b in pairs]))


# ---------------------------------------------------------------------------
# Retargeter
# ---------------------------------------------------------------------------
class _Portrait:
    """Everything derived from the portrait's landmarks (crop px)."""

    def __init__(self, landmarks: np.ndarray) -> None:
        lm = np.asarray(landmarks, dtype=np.float64)
        if lm.shape == (N_LANDMARKS, 2):
            lm = np.concatenate([lm, np.zeros((N_LANDMARKS, 1))], axis=1)
        if lm.shape != (N_LANDMARKS, 3):
            raise ValueError(f"expected ({N_LANDMARKS}, 3) portrait landmarks, got {lm.shape}")
        self.lm = lm
        self.xy = lm[:, :2].astype(np.float32)
        self.center = lm[list(RIGID)].mean(axis=0)
        self.axes = head_axes(lm)  # columns: head x (subject's left), y (down), z (back)
        self.scale = _rigid_scale(lm)
        self.mouth_width = float(np.linalg.norm(lm[MOUTH_CORNERS[0]] - lm[MOUTH_CORNERS[1]]))
        xs = lm[:, 0]
        self.face_width = float(xs.max() - xs.min())

        # Jaw hinge for synthesize(): weights of the points riding on the jaw
        # and the hinge (temporomandibular joint, near the ear) in head axes.
        q = (lm - self.center) @ self.axes  # head-frame coordinates
        y_corner = q[list(MOUTH_CORNERS), 1].mean()
        y_chin = q[152, 1]
        span = max(y_chin - y_corner, 1e-6)
        w = _smoothstep((q[:, 1] - (y_corner - 0.1 * span)) / (0.4 * span))
        upper = list(LIPS_UPPER_OUTER[1:-1] + LIPS_UPPER_INNER[1:-1]) + sorted(UPPER_LIP_BODY)
        w[upper] = 0.0
        w[list(LIPS_LOWER_OUTER[1:-1] + LIPS_LOWER_INNER[1:-1])] = 1.0
        w[list(EYES)] = 0.0
        self.jaw_weight = w
        # The hinge sits at ear level, ~0.9 face widths behind the lips (where
        # the jaw joint is on a real head; mediapipe's own z is too flat to
        # place it), so the lower lip drops mostly straight down.
        ears = q[[234, 454]].mean(axis=0)
        self.jaw_pivot = np.array([0.0, ears[1], q[14, 2] + _JAW_PIVOT_DEPTH * self.face_width])
        self.jaw_max_angle = self._hinge_angle(q[14, 1:] - self.jaw_pivot[1:],
                                               _JAW_OPEN_GAP * self.mouth_width)
        self.q = q

        # Mouth-region weight for lip width / rounding: 1 on the lips, falling
        # off with the distance to the nearest lip point.
        lips = sorted(LIPS)
        d = np.linalg.norm(q[:, None, :2] - q[None, lips, :2], axis=2).min(axis=1)
        self.mouth_weight = np.exp(-(d / (0.3 * self.mouth_width)) ** 2)
        self.mouth_center = q[list(MOUTH_CORNERS)].mean(axis=0)

        # Upper crease ring points follow the nearest upper-lid point.
        self.crease: list[tuple[int, int]] = []
        for rings, chain in ((RIGHT_EYE_RINGS, RIGHT_EYE_LID_CHAIN),
                             (LEFT_EYE_RINGS, LEFT_EYE_LID_CHAIN)):
            uppers = [u for u, _ in chain]
            lid_y = q[uppers, 1].mean()
            for r in rings:
                if q[r, 1] < lid_y:  # above the upper lid
                    near = min(uppers, key=lambda u: np.linalg.norm(q[u] - q[r]))
                    self.crease.append((r, near))

    @staticmethod
    def _hinge_angle(rel: np.ndarray, drop: float) -> float:
        """Hinge angle (radians) that lowers a point at (y, z) = rel from the
        pivot by ``drop`` in y (the image-plane part of the jaw motion)."""
        y, z = float(rel[0]), float(rel[1])

        def lowered(a: float) -> float:
            return y * math.cos(a) - z * math.sin(a) - y

        lo, hi = 0.0, math.pi / 2
        if lowered(hi) < drop:  # geometry cannot give that much: open fully
            return hi
        for _ in range(50):  # lowered() rises monotonically on [0, pi/2) here
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if lowered(mid) < drop else (lo, mid)
        return 0.5 * (lo + hi)


class _Neutral:
    """The driver's calibrated neutral pose (webcam px)."""

    def __init__(self, landmarks: np.ndarray) -> None:
        lm = np.asarray(landmarks, dtype=np.float64)
        self.lm = lm
        self.rigid = lm[list(RIGID)]
        self.center = self.rigid.mean(axis=0)
        self.axes = head_axes(lm)
        self.scale = _rigid_scale(lm)
        self.mouth_width = float(np.linalg.norm(lm[MOUTH_CORNERS[0]] - lm[MOUTH_CORNERS[1]]))
        self.eye_gap = []
        for pairs, corners in ((RIGHT_EYE_LIDS, RIGHT_EYE_CORNERS),
                               (LEFT_EYE_LIDS, LEFT_EYE_CORNERS)):
            width = float(np.linalg.norm(lm[corners[0]] - lm[corners[1]]))
            self.eye_gap.append(max(_lid_gap(lm, pairs), _MIN_NEUTRAL_EYE_RATIO * width))


class Retargeter:
    """Transfers a driving face's motion onto the portrait's landmarks.

    portrait_landmarks: (478, 3) (or (478, 2)) in portrait-crop pixels.
    ``update(face, t)`` and ``synthesize(params, t)`` return (478, 2) float32
    driving landmarks in the same pixels. Not thread-safe.
    """

    def __init__(self, portrait_landmarks: np.ndarray, gains: Gains = Gains(), *,
                 crop_size: float | None = None, still_margin: float = 0.0) -> None:
        # crop_size / still_margin: with a crop size, every output is kept
        # inside the part of the crop the motion guide can move (HeadRoom);
        # still_margin is MotionGuide.full_motion_px.
        self._room_geometry = None if crop_size is None else (float(crop_size), float(still_margin))
        self._p = _Portrait(portrait_landmarks)
        self._room = self._make_room(portrait_landmarks)
        self._neutral: _Neutral | None = None
        self._gains = gains
        self._filter = OneEuroFilter(*smoothing_to_one_euro(gains.smoothing))
        # Transition between sources ("face" / "lost" / "params"); None until
        # the first output, which needs no easing.
        self._mode: str | None = None
        self._last_target = self._p.xy.astype(np.float64)
        self._last_out: np.ndarray | None = None
        self._from = self._last_target
        self._t_switch = -math.inf
        self._ease_s = _LOST_EASE_S

    # -- configuration --------------------------------------------------------
    @property
    def gains(self) -> Gains:
        return self._gains

    @property
    def has_neutral(self) -> bool:
        return self._neutral is not None

    def set_gains(self, gains: Gains) -> None:
        """New gains from the next frame on; the filter keeps its state."""
        self._gains = gains
        self._filter.min_cutoff, self._filter.beta = smoothing_to_one_euro(gains.smoothing)

    def set_portrait(self, landmarks: np.ndarray) -> None:
        """Switch to another portrait; the driver's neutral calibration stays.
        The output restarts from the new portrait's own landmarks."""
        self._p = _Portrait(landmarks)
        self._room = self._make_room(landmarks)
        self._filter.reset()
        self._last_target = self._p.xy.astype(np.float64)
        self._last_out = None
        self._from = self._last_target
        self._t_switch = -math.inf
        self._mode = None

    def reset_neutral(self) -> None:
        """The next face passed to ``update`` becomes the neutral pose."""
        self._neutral = None

    # -- driving ---------------------------------------------------------------
    def update(self, face: FaceResult | None, t: float) -> np.ndarray:
        """(478, 2) portrait landmarks for the driving ``face`` at time ``t``
        (seconds). ``None`` (no face) eases back to the portrait's neutral
        over ~0.5 s."""
        if face is None:
            return self._emit("lost", self._p.xy.astype(np.float64), t)
        lm = np.asarray(face.landmarks, dtype=np.float64)
        if lm.shape != (N_LANDMARKS, 3):
            raise ValueError(f"expected ({N_LANDMARKS}, 3) landmarks, got {lm.shape}")
        if self._neutral is None:
            self._neutral = _Neutral(lm)
            # Re-calibrating mid-stream would jump to the portrait's neutral.
            self._start_transition(t, _SWITCH_EASE_S)
        return self._emit("face", self._transfer(lm), t)

    def synthesize(self, params: MotionParams, t: float) -> np.ndarray:
        """(478, 2) portrait landmarks posed by ``params`` (audio / idle)."""
        return self._emit("params", self._synthesize(params), t)

    # -- internals -------------------------------------------------------------
    def _make_room(self, landmarks: np.ndarray) -> HeadRoom | None:
        if self._room_geometry is None:
            return None
        return HeadRoom(landmarks, *self._room_geometry)

    def _emit(self, mode: str, target: np.ndarray, t: float) -> np.ndarray:
        """Ease between sources, then smooth. target: (478, 2) float64."""
        if self._room is not None:
            target = self._room.fit(target)
        if self._mode is None:
            self._mode = mode
        elif mode != self._mode:
            self._start_transition(t, _LOST_EASE_S if mode == "lost" else _SWITCH_EASE_S)
            self._mode = mode
        w = float(_smoothstep(np.array((t - self._t_switch) / self._ease_s)))
        out = target if w >= 1.0 else self._from + w * (target - self._from)
        self._last_target = out
        # Smoothing removes the jitter of *measured* landmarks. Synthesized
        # motion (audio mouth, idle) has none, and the filter would only
        # delay it -- by ~20 ms at every mouth opening, which a delayed
        # audio path cannot undo (the lag depends on the speed).
        if self._gains.smoothing > 0 and mode != "params":
            out = self._filter(out, t)
        else:
            self._filter.reset()
        self._last_out = out
        return out.astype(np.float32)

    def _start_transition(self, t: float, ease_s: float) -> None:
        # Ease from what was last shown (filtered or not), so switching
        # between filtered and unfiltered sources does not jump.
        self._from = self._last_target if self._last_out is None else self._last_out
        self._t_switch = t
        self._ease_s = ease_s

    def _transfer(self, drv: np.ndarray) -> np.ndarray:
        p, n, g = self._p, self._neutral, self._gains
        assert n is not None
        # Rigid part: drv - c_d ~ s R (neutral - c_n).
        s, rot, _ = similarity_fit(n.rigid, drv[list(RIGID)])
        c_d = drv[list(RIGID)].mean(axis=0)
        # Non-rigid residual in the neutral's frame (row vectors: v @ R == R^T v).
        resid = ((drv - c_d) @ rot) / s - (n.lm - n.center)
        # Neutral image frame -> head frame -> portrait image frame, face scale.
        k = p.scale / n.scale
        to_portrait = n.axes @ p.axes.T  # row-vector form of R_p R_n^T
        resid = resid @ to_portrait
        k_mouth = k * float(np.clip((p.mouth_width / n.mouth_width) / k, *_MOUTH_SCALE_CLAMP))
        gain = np.full(N_LANDMARKS, g.expression * k)
        gain[list(_MOUTH_IDX)] = g.mouth * k_mouth
        gain[list(_EYES_IDX)] = g.eyes * k
        x = p.lm + gain[:, None] * resid

        # Eyelids: the portrait's gap becomes the driver's gap fraction.
        eyes = ((RIGHT_EYE_LIDS, RIGHT_EYE_LID_CHAIN, RIGHT_IRIS, n.eye_gap[0]),
                (LEFT_EYE_LIDS, LEFT_EYE_LID_CHAIN, LEFT_IRIS, n.eye_gap[1]))
        for pairs, chain, iris, gap_n in eyes:
            frac = _lid_gap(drv, pairs) / s / gap_n
            frac = float(np.clip(1.0 + g.eyes * (frac - 1.0), 0.0, _MAX_EYE_FRACTION))
            self._set_eye(x, chain, iris, frac)
        self._keep_lips_apart(x)

        # Rigid part onto the portrait, about its face centre.
        rot_g = _scale_rotation(rot, g.head)
        shift = (c_d - n.center) * k * g.head
        out = p.center + shift + (s ** g.head) * (x - p.center) @ rot_g.T
        return out[:, :2]

    def _set_eye(self, x: np.ndarray, chain: tuple[tuple[int, int], ...],
                 iris: tuple[int, ...], frac: float, crease: bool = False) -> None:
        """Upper lid = lower lid + frac x the portrait's own lid gap (in place)."""
        p = self._p
        up = [u for u, _ in chain]
        lo = [lw for _, lw in chain]
        new_up = x[lo] + frac * (p.lm[up] - p.lm[lo])
        moved = new_up - x[up]
        x[up] = new_up
        if crease:
            delta = dict(zip(up, moved))
            for r, near in p.crease:
                if near in delta:
                    x[r] += _CREASE_FOLLOW * delta[near]
        if frac < 1.0:
            # Squash the iris toward the lower lid with the lids.
            down = p.axes[:, 1]
            base = x[lo].mean(axis=0)
            v = (x[list(iris)] - base) @ down
            x[list(iris)] += ((frac - 1.0) * v)[:, None] * down

    def _keep_lips_apart(self, x: np.ndarray) -> None:
        """Inner lips may meet but not cross (in place)."""
        down = self._p.axes[:, 1]
        for u, lw in INNER_LIP_PAIRS:
            gap = float((x[lw] - x[u]) @ down)
            if gap < 0:
                x[u] += 0.5 * gap * down
                x[lw] -= 0.5 * gap * down

    def _synthesize(self, prm: MotionParams) -> np.ndarray:
        p, g = self._p, self._gains
        ax = p.axes
        q = p.q.copy()  # head-frame coordinates, x: subject's left, y: down, z: back
        wm = p.mouth_width

        # Mouth shape (head frame): width and rounding scale the mouth region
        # horizontally about its centre; rounding pushes the lips forward.
        jaw = float(np.clip(prm.jaw_open, 0.0, 1.0))
        lip_w = float(np.clip(prm.lip_width, -1.0, 1.0))
        rnd = float(np.clip(prm.rounding, 0.0, 1.0))
        stretch = g.mouth * (_LIP_WIDTH_STRETCH * lip_w - _ROUNDING_NARROW * rnd)
        q[:, 0] += p.mouth_weight * (q[:, 0] - p.mouth_center[0]) * stretch
        q[:, 2] -= p.mouth_weight * g.mouth * _ROUNDING_FORWARD * wm * rnd
        # Jaw hinge: rotate the jaw-borne points about the ear-level axis
        # (down and back), blended by their jaw weight.
        angle = g.mouth * p.jaw_max_angle * (jaw + _ROUNDING_JAW * rnd)
        if angle != 0.0:
            c, sn = math.cos(angle), math.sin(angle)
            rel = q[:, 1:] - p.jaw_pivot[1:]
            rotated = np.stack([rel[:, 0] * c - rel[:, 1] * sn, rel[:, 0] * sn + rel[:, 1] * c], 1)
            q[:, 1:] += p.jaw_weight[:, None] * (rotated - rel)
            lift = g.mouth * _UPPER_LIP_LIFT * wm * (jaw + _ROUNDING_JAW * rnd)
            # The upper lip rises a little as a whole (inner and outer rims).
            q[list(LIPS_UPPER_INNER[1:-1] + LIPS_UPPER_OUTER[1:-1]), 1] -= lift
        x = p.center + q @ ax.T  # back to crop px

        # Eyes: close as a fraction of the portrait's own opening.
        frac = float(np.clip(1.0 + g.eyes * (prm.eye_open - 1.0), 0.0, _MAX_EYE_FRACTION))
        if frac != 1.0:
            self._set_eye(x, RIGHT_EYE_LID_CHAIN, RIGHT_IRIS, frac, crease=True)
            self._set_eye(x, LEFT_EYE_LID_CHAIN, LEFT_IRIS, frac, crease=True)
        self._keep_lips_apart(x)

        # Head pose and translation.
        rot = rotation_matrix(prm.yaw * g.head, prm.pitch * g.head, prm.roll * g.head)
        shift = np.array([prm.tx, prm.ty, 0.0]) * p.face_width * g.head
        out = p.center + shift + (x - p.center) @ rot.T
        return out[:, :2]
