"""The measured A/V sync check, end to end on real components: a private
PulseAudio server (tone bursts into a null-sink microphone), the live
session in mic-only mode, the held virtual camera (in-memory pyvirtualcam
backend) and the delayed virtual microphone (real pactl modules, PortAudio)."""

from __future__ import annotations

import pytest

from kf_desktop.audio.pulse_server import PulseServer, PulseUnavailable
from kf_desktop.avsync import GOAL_JITTER_MS, GOAL_MS, run_check


@pytest.fixture(scope="module", autouse=True)
def needs_pulse():
    srv = PulseServer({"kfprobe": 48000})
    try:
        srv.start()
    except PulseUnavailable as e:
        pytest.skip(f"PulseAudio cannot start on this machine: {e}")
    finally:
        srv.cleanup()


def test_avsync_offset_is_measured_and_printed(capsys):
    res = run_check(14.0, log=lambda s: None)
    line = res.line()
    with capsys.disabled():  # the figure goes into the CI log
        print(f"\n{line}\n  video delay {res.video_delay_ms} ms, audio delay "
              f"{res.audio_delay_ms} ms, {res.underruns} underruns, {res.resyncs} resyncs, "
              f"{res.bursts} bursts; goal {GOAL_MS} ms, jitter <= {GOAL_JITTER_MS} ms: "
              f"{'met' if res.within_goal() else 'NOT met'}")
    assert line.startswith("A/V offset: ") and "jitter" in line and "drift" in line
    assert res.bursts >= 8  # most of the ~15 bursts were found in both streams
    # Modest: the lips and the delayed voice line up to within a few frames
    # even on a loaded 2-core CI machine (the goal itself is GOAL_MS).
    assert -150.0 <= res.offset_ms <= 150.0, res.offsets_ms
    # The audio is really delayed by the video's held delay (+ the mouth lag).
    assert res.audio_delay_ms is not None and res.video_delay_ms is not None
    assert res.audio_delay_ms > res.video_delay_ms
