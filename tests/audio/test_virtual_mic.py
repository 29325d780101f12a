"""The virtual microphone's device on a real (private) PulseAudio server:
real pactl modules, a watchdog process, and `kf-desktop run --virtual-mic`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kf_desktop.audio.virtual_mic import (VMIC_DESCRIPTION, VMIC_SOURCE, PulseVirtualMic,
                                          check_virtual_mic, clamp_trim, tagged_modules)
from tests.audio.conftest import start_pulse

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def server():
    srv = start_pulse({"kfuser": 48000})
    saved = os.environ.get("PULSE_SERVER")
    os.environ.update(srv.env())
    yield srv
    if saved is None:
        os.environ.pop("PULSE_SERVER", None)
    else:
        os.environ["PULSE_SERVER"] = saved
    srv.cleanup()


def _sources(srv) -> dict[str, str]:
    out, name = {}, None
    for line in srv.pactl("list", "sources").stdout.splitlines():
        line = line.strip()
        if line.startswith("Name:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Description:") and name:
            out[name] = line.split(":", 1)[1].strip()
    return out


def _wait(cond, timeout: float = 8.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def test_device_is_created_named_and_removed(server):
    default_before = server.pactl("get-default-source").stdout.strip()
    dev = PulseVirtualMic()
    dev.create()
    try:
        assert _sources(server).get(VMIC_SOURCE) == VMIC_DESCRIPTION
        assert {m.pid for m in tagged_modules()} == {os.getpid()}
        # The user's default microphone stays the default.
        assert server.pactl("get-default-source").stdout.strip() == default_before
        ok, detail, _ = check_virtual_mic("Linux")
        assert ok, detail
    finally:
        dev.remove()
    assert VMIC_SOURCE not in _sources(server)
    assert tagged_modules() == []


_CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from kf_desktop.audio.virtual_mic import PulseVirtualMic
    PulseVirtualMic().create()
    print("ready", flush=True)
    time.sleep(60)
""")


def _child(srv) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(srv.env())
    p = subprocess.Popen([sys.executable, "-c", _CHILD.format(repo=str(REPO))], env=env,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def test_killed_process_leaves_no_device(server):
    """SIGKILL: no atexit runs; the watchdog process unloads the modules."""
    p = _child(server)
    assert VMIC_SOURCE in _sources(server)
    p.send_signal(signal.SIGKILL)
    p.wait(5)
    assert _wait(lambda: VMIC_SOURCE not in _sources(server)), _sources(server)
    assert tagged_modules() == []


def test_terminated_process_removes_its_device(server):
    p = _child(server)
    p.terminate()  # SIGTERM -> SystemExit -> atexit
    p.wait(10)
    assert _wait(lambda: VMIC_SOURCE not in _sources(server))


def test_stale_modules_of_dead_processes_are_cleaned_at_start(server):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # What a process killed before its watchdog could act (power cut) leaves.
    server.pactl("load-module", "module-null-sink", "sink_name=kf_desktop_mic_feed",
                 f"sink_properties='kf_desktop.pid={dead.pid} kf_desktop.token=deadbeef'")
    assert [m.pid for m in tagged_modules()] == [dead.pid]
    dev = PulseVirtualMic()
    dev.create()
    try:
        assert {m.pid for m in tagged_modules()} == {os.getpid()}
    finally:
        dev.remove()


def test_trim_is_clamped():
    assert clamp_trim(-500) == -200 and clamp_trim(1000) == 300 and clamp_trim(12.5) == 12.5


def test_cli_run_virtual_mic_creates_and_removes_the_device(server, librivox):
    """`kf-desktop run --virtual-mic` (mic-only, from a WAV played in real time)."""
    wav, _ = librivox("0870")
    env = dict(os.environ)
    env.update(server.env())
    p = subprocess.Popen([sys.executable, "-m", "kf_desktop", "run", "--no-camera", "--audio",
                          str(wav), "--virtual-mic", "--no-vcam", "--size", "320x240",
                          "--mode", "guide", "--seconds", "12"],
                         cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait(lambda: VMIC_SOURCE in _sources(server), 60), "device never appeared"
        _, err = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, err[-3000:]
    assert "virtual mic +" in err, err[-3000:]
    assert _wait(lambda: VMIC_SOURCE not in _sources(server)), "device left behind"
    assert tagged_modules() == []
