"""MouthMixer (webcam + mic) and AudioMotion (audio-only mode)."""

from __future__ import annotations

import numpy as np

from kf_desktop.audio.lipsync import MouthShape
from kf_desktop.audio.mix import AudioMotion, MouthMixer
from kf_desktop.audio.wav import WavSource

CAM = MouthShape(0.8, 0.2, 0.1)
AUD = MouthShape(0.1, -0.3, 0.6)


def run(mixer, script, dt=1 / 30):
    """script: list of (seconds, webcam or None, yaw); returns [(t, shape, weight)]."""
    out, t = [], 0.0
    for seconds, cam, yaw in script:
        for _ in range(int(round(seconds / dt))):
            out.append((t, mixer.update(t, cam, yaw, AUD), mixer.webcam_weight))
            t += dt
    return out


def test_webcam_leads_while_face_visible():
    out = run(MouthMixer(), [(1.0, CAM, 5.0)])
    assert all(s == CAM for _, s, _ in out)


def test_audio_takes_over_when_face_lost_with_crossfade():
    m = MouthMixer(crossfade_ms=150, lost_grace_ms=100)
    out = run(m, [(1.0, CAM, 0.0), (1.0, None, None)])
    t_lost = 1.0
    w = np.array([x[2] for x in out])
    t = np.array([x[0] for x in out])
    jaw = np.array([x[1].jaw_open for x in out])
    full_audio = t[np.flatnonzero((t >= t_lost) & (w == 0.0))[0]] - t_lost
    assert 0.15 <= full_audio <= 0.30  # grace + crossfade, not a jump
    mid = (t > t_lost + 0.1) & (t < t_lost + 0.2)
    assert ((jaw[mid] < CAM.jaw_open) & (jaw[mid] > AUD.jaw_open)).any()  # blended on the way
    assert out[-1][1] == AUD
    assert np.abs(np.diff(jaw)).max() < 0.35  # no single-frame jump


def test_single_dropped_detection_does_not_switch():
    out = run(MouthMixer(), [(0.5, CAM, 0.0), (1 / 30, None, None), (0.5, CAM, 0.0)])
    assert min(w for _, _, w in out) == 1.0


def test_turned_away_face_hands_over_with_hysteresis():
    m = MouthMixer(max_yaw_deg=35, hysteresis_deg=5)
    out = run(m, [(0.5, CAM, 10.0), (0.5, CAM, 40.0)])
    assert out[-1][2] == 0.0  # yaw 40: audio
    out = run(m, [(0.5, CAM, 33.0)])  # back under 35 but not under 30: stay on audio
    assert out[-1][2] == 0.0
    out = run(m, [(0.5, CAM, 20.0)])
    assert out[-1][2] == 1.0 and out[-1][1] == CAM


def test_audio_motion_drives_mouth_from_speech_and_head_from_idle(librivox):
    path, x = librivox("0880")
    src = WavSource(path, realtime=False).open()
    motion = AudioMotion(src, seed=0)
    jaws, yaws, t = [], [], src.t0
    while not src.eof:
        p = motion(t)  # one call per 10 ms of audio (read_new releases a block)
        jaws.append(p.jaw_open)
        yaws.append(p.yaw)
        t += 0.01
    jaws = np.array(jaws)
    assert jaws.max() > 0.8 and (jaws < 0.05).mean() > 0.1  # speaks and pauses
    assert np.ptp(yaws) > 0.2  # head moves
    for _ in range(30):  # audio ended: mouth closes, head keeps moving
        p = motion(t)
        t += 0.01
    assert p.jaw_open == 0.0


def test_mouth_from_face_landmarks():
    from kf_desktop.audio.mix import mouth_from_face
    from kf_desktop.frames import FaceResult

    def face(mouth_open, mouth_w):
        lm = np.zeros((478, 3), np.float32)
        lm[234, :2], lm[454, :2] = (100, 200), (300, 200)  # face 200 px wide
        lm[61, :2], lm[291, :2] = (200 - mouth_w / 2, 260), (200 + mouth_w / 2, 260)
        return FaceResult(lm, 0.0, 0.0, 0.0, (0.3, 0.3), mouth_open)

    neutral = mouth_from_face(face(0.0, 80))  # 0.40 of the face width
    assert neutral.jaw_open == 0.0 and abs(neutral.lip_width) < 0.05
    wide = mouth_from_face(face(0.4, 80))
    assert wide.jaw_open == 1.0
    smile = mouth_from_face(face(0.05, 92))
    assert smile.lip_width > 0.9 and smile.rounding == 0.0
    pursed = mouth_from_face(face(0.15, 68))
    assert pursed.lip_width < -0.9 and pursed.rounding > 0.5
