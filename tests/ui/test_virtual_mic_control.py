"""The Output card's "Virtual microphone (in sync)" control (issue 11) with
the real window and session: a WAV file played in real time is the
microphone, a private PulseAudio server holds the virtual microphone
(checked with pactl), an in-memory backend is the virtual camera."""

from __future__ import annotations

import time

import pytest
from PySide6.QtCore import Qt

from kf_desktop.audio.virtual_mic import VMIC_SOURCE, tagged_modules
from tests.audio.conftest import _Env, start_pulse
from tests.ui.conftest import file_services
from tests.ui.test_window_stream import _wait_running
from ui.options import DeviceEntry
from ui.settings_store import SettingsStore
from ui.virtual_mic_control import NEEDS_MIC

SPEECH_MIC = DeviceEntry("speech", "Test speech mic")


@pytest.fixture
def pulse_env():
    """A private PulseAudio server that this process's clients (pactl, the
    ALSA pulse device PortAudio opens) talk to."""
    srv = start_pulse({"kfmicfeed": 48000})
    env = _Env(srv)
    yield srv
    env.restore()
    srv.cleanup()


def _sources(srv) -> set[str]:
    out = srv.pactl("list", "sources", "short").stdout
    return {line.split("\t")[1] for line in out.splitlines() if "\t" in line}


def _speech_services(clip_path, vcam_backend):
    from kf_desktop.audio.wav import WavSource
    from kf_desktop.data import data_path

    speech = data_path("librivox_0870.wav")
    return file_services(clip_path, vcam_backend, list_microphones=lambda: [SPEECH_MIC],
                         open_mic=lambda entry, opts: WavSource(speech, realtime=True, loop=True))


def _settings(path, mode: str, virtual_mic: bool = False):
    store = SettingsStore.at(path)
    store.out_size, store.mode, store.virtual_mic, store.vcam_enabled = \
        (640, 360), mode, virtual_mic, True
    store.sync()
    return path


def _click(qtbot, check):
    """Click the check box itself (left of its text), as a user does."""
    from PySide6.QtCore import QPoint

    qtbot.mouseClick(check, Qt.MouseButton.LeftButton, pos=QPoint(8, check.height() // 2))


def test_tick_while_streaming_creates_the_device_untick_and_close_remove_it(
        qtbot, make_window, clip_path, mem_vcam, pulse_env, tmp_path):
    ini = _settings(tmp_path / "vmic.ini", "mic")
    ctl = make_window(_speech_services(clip_path, mem_vcam.name), ini)
    w, vm = ctl.window, ctl.window.vmic
    qtbot.waitUntil(lambda: w.mic_combo.count() == 1)
    assert vm.check.isEnabled() and not vm.check.isChecked() and vm.status.text() == "Off"
    w.start_button.click()
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: w.preview.frames_shown >= 5, timeout=30_000)
    assert VMIC_SOURCE not in _sources(pulse_env)

    # -- tick: the session restarts with the delayed virtual microphone -------
    _click(qtbot, vm.check)
    assert vm.check.isChecked() and ctl.settings.virtual_mic
    qtbot.waitUntil(lambda: VMIC_SOURCE in _sources(pulse_env), timeout=60_000)
    _wait_running(qtbot, ctl)
    qtbot.waitUntil(lambda: vm.status.text().startswith("Live: kf-desktop microphone, audio "),
                    timeout=30_000)
    assert vm.status.property("state") == "on"
    # The virtual camera holds frames to a constant delay; the status shows it
    # and its jitter once it is measured (after a warm-up of frames).
    qtbot.waitUntil(lambda: "Video delay" in vm.status.text() and "jitter" in vm.status.text(),
                    timeout=60_000)
    assert ctl.bridge.vcam.held
    assert "underruns" in vm.status.text()
    session = ctl.bridge.session
    assert session.config.audio_lag_ms is not None  # the mouth at the CLI's fixed lag

    # -- the trim reaches the running virtual microphone at once -------------
    vm.trim_slider.setValue(40)
    assert ctl.settings.av_trim_ms == 40
    vmic = ctl.bridge._vmic
    assert vmic is not None and vmic.trim_ms == 40 and ctl.bridge.session is session

    # -- untick: the device goes, the stream goes on ---------------------------
    _click(qtbot, vm.check)
    assert not vm.check.isChecked() and not ctl.settings.virtual_mic
    qtbot.waitUntil(lambda: VMIC_SOURCE not in _sources(pulse_env), timeout=60_000)
    _wait_running(qtbot, ctl)
    assert vm.status.text() == "Off"
    shown = w.preview.frames_shown
    qtbot.waitUntil(lambda: w.preview.frames_shown > shown + 5, timeout=30_000)

    # -- tick again, then close the window: the device goes with it -----------
    _click(qtbot, vm.check)
    qtbot.waitUntil(lambda: VMIC_SOURCE in _sources(pulse_env), timeout=60_000)
    ctl.shutdown()
    deadline = time.monotonic() + 10
    while VMIC_SOURCE in _sources(pulse_env) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert VMIC_SOURCE not in _sources(pulse_env)
    assert tagged_modules() == []


def test_status_without_a_sound_server_webcam_only_and_trim_persists(
        qtbot, make_window, clip_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path}/no-such-pulse-socket")
    ini = _settings(tmp_path / "vmic.ini", "mic")
    ctl = make_window(_speech_services(clip_path, None), ini)
    vm = ctl.window.vmic
    assert vm.trim_ms() == 0 and vm.trim_label.text() == "+0 ms"
    assert vm.trim_slider.minimum() == -200 and vm.trim_slider.maximum() == 300

    # -- no PulseAudio server: "not available" and the doctor's fix ----------
    _click(qtbot, vm.check)
    qtbot.waitUntil(lambda: vm.status.text().startswith("Not available"), timeout=20_000)
    assert vm.status.property("state") == "error"
    assert "no PulseAudio/PipeWire server reachable" in vm.status.text()
    assert "Fix: start PulseAudio or PipeWire" in vm.status.text()

    # -- webcam only: no microphone, the control says so and stays off --------
    w = ctl.window
    w.mode_combo.setCurrentIndex(w.mode_combo.findData("webcam"))
    assert not vm.check.isChecked() and not vm.check.isEnabled()
    assert vm.status.text() == NEEDS_MIC
    assert not ctl.options().sync_audio
    assert ctl.settings.virtual_mic  # the choice is kept for a mode with a microphone
    w.mode_combo.setCurrentIndex(w.mode_combo.findData("mic"))
    assert vm.check.isChecked() and vm.check.isEnabled()
    assert vm.status.text().startswith("Not available")

    # -- the trim persists across a new window ---------------------------------
    vm.trim_slider.setValue(-65)
    assert vm.trim_label.text() == "-65 ms"
    ctl.shutdown()
    ctl2 = make_window(_speech_services(clip_path, None), ini)
    vm2 = ctl2.window.vmic
    assert vm2.trim_ms() == -65 and vm2.trim_label.text() == "-65 ms"
    assert vm2.check.isChecked() and ctl2.options().av_trim_ms == -65
    assert ctl2.options().virtual_mic


def test_settings_store_refuses_an_out_of_range_trim(tmp_path):
    """A value outside -200..300 ms read from disk falls back to the default
    (issue 22 item 2: every stored value is checked, a bad one is not used)."""
    s = SettingsStore.at(tmp_path / "s.ini")
    assert s.av_trim_ms == 0.0 and s.virtual_mic is False
    s.qs.setValue("output/av_trim_ms", "120")
    assert s.av_trim_ms == 120.0
    s.qs.setValue("output/av_trim_ms", "900")
    assert s.av_trim_ms == 0.0
    s.qs.setValue("output/av_trim_ms", "garbage")
    assert s.av_trim_ms == 0.0
