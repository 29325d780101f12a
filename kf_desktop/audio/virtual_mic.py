"""The delayed virtual microphone: the user's voice, late by exactly as much
as the avatar's picture, in a device the meeting app selects as its mic.

In a call the other side would otherwise hear the real microphone at once
and see the lips tens of milliseconds later. The virtual camera holds every
frame to a constant capture-to-send delay (``kf_desktop.av_delay``); this
module plays the *same* ``MicSource`` capture the lip-sync reads (one capture
for both, read by sample index so neither disturbs the other) into a virtual
audio device, delayed by

    video delay (capture -> send) + mouth lag (the mouth of a frame is that of
    ``audio_lag_ms`` before its timestamp) + user trim (-200..+300 ms)

measured at the device: each output block's play time comes from PortAudio's
``outputBufferDacTime``, so the output buffering is part of the loop.

Devices:
- Linux: created from user space, no driver: a PulseAudio/PipeWire null sink
  (we play into it) plus a virtual source on its monitor named "kf-desktop
  microphone" (``pactl load-module module-null-sink`` /
  ``module-remap-source``; ``module-virtual-source`` as a fallback only: it
  adds ~1 s of latency for ordinary recording clients). Every
  module is tagged with this process's pid and a token; they are unloaded on
  close, at exit (atexit; SIGTERM/SIGHUP become a normal exit when nobody else
  handles them), and by a small watchdog process that unloads them when this
  process dies in any way (even SIGKILL); modules of dead processes are
  removed at the next start.
- Windows / macOS: an installed loopback driver, chosen by name: VB-Audio
  Virtual Cable (we play into "CABLE Input", the app records "CABLE Output")
  or BlackHole (both sides "BlackHole 2ch").

Clock drift: the microphone and the output device run on their own clocks.
A PI controller resamples by up to +-0.5 % (inaudible) to hold the measured
delay on target; errors beyond 25 ms (start, trim change, mic reconnect)
re-seek with a short fade. Output underruns (PortAudio ``output_underflow``)
and starvation (asked for audio not captured yet) are counted.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from kf_desktop.audio.resample import Resampler
from kf_desktop.errors import DeviceError, UserError

log = logging.getLogger(__name__)

VMIC_DESCRIPTION = "kf-desktop microphone"
VMIC_SOURCE = "kf_desktop_mic"
VMIC_SINK = "kf_desktop_mic_feed"
TRIM_MIN_MS, TRIM_MAX_MS = -200.0, 300.0
#: The mouth of a frame is that of this long before the frame's timestamp in
#: sync mode: LipSync latency (12.5 ms window + 20 ms look-ahead) plus the mic
#: block delivery (~45 ms), with room for scheduling delays on a loaded machine.
DEFAULT_AUDIO_LAG_MS = 120.0
#: Playback devices of the loopback drivers (Windows / macOS), best first.
CABLE_OUTPUT_NAMES = ("CABLE Input", "VB-Audio Virtual Cable", "BlackHole 2ch",
                      "BlackHole 16ch", "BlackHole")
_TAG_PID, _TAG_TOKEN, _TAG_HOST = "kf_desktop.pid", "kf_desktop.token", "kf_desktop.host"


def install_hint(system: str | None = None) -> str:
    """How to get a virtual microphone on this OS."""
    system = system or platform.system()
    if system == "Linux":
        return ("install PulseAudio's or PipeWire's pactl (Debian/Ubuntu: sudo apt-get install "
                "pulseaudio-utils; with PipeWire also pipewire-pulse), then run again")
    if system == "Windows":
        return ("install VB-Audio Virtual Cable (https://vb-audio.com/Cable/, run "
                "VBCABLE_Setup_x64.exe as administrator, reboot), then choose "
                "'CABLE Output' as the microphone in the meeting app")
    if system == "Darwin":
        return ("install BlackHole 2ch (brew install blackhole-2ch, or the installer from "
                "https://existential.audio/blackhole/), then choose 'BlackHole 2ch' as the "
                "microphone in the meeting app")
    return f"a virtual microphone is not supported on {system}"


def clamp_trim(ms: float) -> float:
    return float(min(TRIM_MAX_MS, max(TRIM_MIN_MS, ms)))


# ---------------------------------------------------------------------------
# Linux: PulseAudio / PipeWire modules
# ---------------------------------------------------------------------------
def _pactl(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    exe = shutil.which("pactl")
    if exe is None:
        raise DeviceError("pactl is not installed: cannot create the virtual microphone",
                          install_hint("Linux"))
    try:
        return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeviceError(f"pactl failed: {e}", "check that PulseAudio/PipeWire is running") from e


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@dataclass(frozen=True)
class TaggedModule:
    index: int
    name: str
    args: str
    pid: int | None
    token: str | None
    host: str | None


def _tag_value(args: str, key: str) -> str | None:
    i = args.find(key + "=")
    if i < 0:
        return None
    j = i + len(key) + 1
    end = j
    while end < len(args) and args[end] not in " '\"\t":
        end += 1
    return args[j:end] or None


def tagged_modules() -> list[TaggedModule]:
    """kf-desktop's modules loaded in the sound server (any process's)."""
    r = _pactl("list", "short", "modules")
    if r.returncode != 0:
        raise DeviceError(f"cannot talk to the sound server: {r.stderr.strip() or r.returncode}",
                          "start PulseAudio/PipeWire (or log in to a desktop session)")
    out = []
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or _TAG_TOKEN not in parts[2]:
            continue
        pid = _tag_value(parts[2], _TAG_PID)
        out.append(TaggedModule(int(parts[0]), parts[1], parts[2],
                                int(pid) if pid and pid.isdigit() else None,
                                _tag_value(parts[2], _TAG_TOKEN), _tag_value(parts[2], _TAG_HOST)))
    return out


def clean_stale_modules() -> list[int]:
    """Unload the virtual-microphone modules of kf-desktop processes that died
    (crash, kill, power cut); returns the module indices removed."""
    host = socket.gethostname()
    removed = []
    for m in sorted(tagged_modules(), key=lambda m: -m.index):
        if m.host not in (None, host) or m.pid is None or m.pid == os.getpid():
            continue
        if _pid_alive(m.pid):
            continue
        if _pactl("unload-module", str(m.index)).returncode == 0:
            removed.append(m.index)
            log.info("removed virtual microphone module %d left by dead process %d",
                     m.index, m.pid)
    return removed


# Runs in a separate process: waits for its stdin to close (the parent died
# or closed the device), then unloads every module carrying the token.
_WATCHDOG = r"""
import signal, subprocess, sys
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
token = sys.argv[1]
try:
    sys.stdin.buffer.read()
except Exception:
    pass
try:
    out = subprocess.run(["pactl", "list", "short", "modules"], capture_output=True,
                         text=True, timeout=10).stdout
    idx = [int(l.split("\t")[0]) for l in out.splitlines()
           if "kf_desktop.token=" + token in l]
    for i in sorted(idx, reverse=True):
        subprocess.run(["pactl", "unload-module", str(i)], capture_output=True, timeout=10)
except Exception:
    pass
"""


def _install_exit_signals() -> None:
    """Let SIGTERM / SIGHUP end the process through SystemExit (so atexit runs)
    when no one else handles them; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _exit_on_signal)
        except (ValueError, OSError):
            pass


def _exit_on_signal(signum, frame) -> None:  # noqa: ARG001
    raise SystemExit(128 + signum)


class PulseVirtualMic:
    """The Linux device pair: null sink ``sink_name`` (played into) + virtual
    source ``source_name`` ("kf-desktop microphone") on its monitor."""

    def __init__(self, source_name: str = VMIC_SOURCE, sink_name: str = VMIC_SINK,
                 description: str = VMIC_DESCRIPTION, rate: int = 48000) -> None:
        self.source_name, self.sink_name = source_name, sink_name
        self.description = description
        self.rate = rate
        self.token = secrets.token_hex(6)
        self.modules: list[int] = []
        self._defaults_before: tuple[str | None, str | None] = (None, None)
        self._watchdog: subprocess.Popen | None = None
        self._atexit = False

    def _props(self, description: str) -> str:
        return (f"'device.description=\"{description}\" {_TAG_PID}={os.getpid()} "
                f"{_TAG_TOKEN}={self.token} {_TAG_HOST}={socket.gethostname()}'")

    def _load(self, *args: str) -> int:
        r = _pactl("load-module", *args)
        if r.returncode != 0 or not r.stdout.strip().isdigit():
            raise DeviceError(f"cannot load {args[0]}: {r.stderr.strip() or r.stdout.strip()}",
                              "check that PulseAudio or PipeWire (pipewire-pulse) is running")
        return int(r.stdout.strip())

    def create(self) -> None:
        """Both steps at once (see ``create_sink`` and ``publish``)."""
        self.create_sink()
        self.publish()

    def create_sink(self) -> None:
        """Step 1: the null sink we play into (not yet a microphone)."""
        if self.modules:
            return
        clean_stale_modules()
        for m in tagged_modules():
            if f"sink_name={self.sink_name}" in m.args or f"source_name={self.source_name}" in m.args:
                raise DeviceError(f"the virtual microphone is already published by another "
                                  f"kf-desktop (pid {m.pid})",
                                  "stop the other kf-desktop first, or run this one without "
                                  "--virtual-mic")
        defaults = self._defaults()
        # Pin the current defaults first: with no configured default, a new
        # source becomes the default and the server moves every stream that
        # follows the default (the user's own mic capture included) onto it.
        for what, name in (("set-default-sink", defaults[0]), ("set-default-source", defaults[1])):
            if name:
                _pactl(what, name, timeout=5)
        self._start_watchdog()
        try:
            self.modules.append(self._load(
                "module-null-sink", f"sink_name={self.sink_name}", f"rate={self.rate}",
                "channels=1", f"sink_properties={self._props(self.description + ' feed')}"))
        except BaseException:
            self.remove()
            raise
        self._defaults_before = defaults
        if not self._atexit:
            atexit.register(self.remove)
            self._atexit = True
        _install_exit_signals()

    def publish(self) -> None:
        """Step 2: the virtual source "kf-desktop microphone" on the sink's monitor."""
        defaults = self._defaults_before
        try:
            master = f"master={self.sink_name}.monitor"
            props = f"source_properties={self._props(self.description)}"
            # module-remap-source passes the monitor through with ~16 ms of
            # latency; module-virtual-source (measured: 0.9-1.2 s, differing per
            # recording client) only where remap-source is missing.
            try:
                self.modules.append(self._load("module-remap-source",
                                               f"source_name={self.source_name}", master, props))
            except DeviceError:
                self.modules.append(self._load("module-virtual-source",
                                               f"source_name={self.source_name}", master, props))
        except BaseException:
            self.remove()
            raise
        self._restore_defaults(defaults)
        log.info("virtual microphone %r created (modules %s)", self.description, self.modules)

    def _defaults(self) -> tuple[str | None, str | None]:
        out = []
        for what in ("get-default-sink", "get-default-source"):
            try:
                r = _pactl(what, timeout=5)
                out.append(r.stdout.strip() if r.returncode == 0 else None)
            except DeviceError:
                out.append(None)
        return out[0], out[1]

    def _restore_defaults(self, defaults: tuple[str | None, str | None]) -> None:
        """A new device must not become the system default (the user's own
        speakers / microphone stay what they were)."""
        now = self._defaults()
        for what, before, after in (("set-default-sink", defaults[0], now[0]),
                                    ("set-default-source", defaults[1], now[1])):
            if before and after and before != after:
                _pactl(what, before, timeout=5)

    def _start_watchdog(self) -> None:
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, self.token], stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:  # cleanup then relies on atexit + the next start
            log.warning("virtual microphone watchdog did not start: %s", e)
            self._watchdog = None

    def remove(self) -> None:
        """Unload our modules (idempotent)."""
        mods, self.modules = self.modules, []
        try:
            ours = {m.index for m in tagged_modules() if m.token == self.token}
        except DeviceError:
            ours = set(mods)
        for idx in sorted(ours | set(mods), reverse=True):
            if idx in ours:
                try:
                    _pactl("unload-module", str(idx))
                except DeviceError:
                    pass
        wd, self._watchdog = self._watchdog, None
        if wd is not None:
            try:
                wd.stdin.close()  # the watchdog finds nothing left and exits
                wd.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self._atexit:
            try:
                atexit.unregister(self.remove)
            except Exception:  # noqa: BLE001
                pass
            self._atexit = False

    def exists(self) -> bool:
        r = _pactl("list", "short", "sources")
        return any(line.split("\t")[1:2] == [self.source_name] for line in r.stdout.splitlines())


# ---------------------------------------------------------------------------
# Windows / macOS: an installed loopback driver
# ---------------------------------------------------------------------------
def find_cable_output(names: tuple[str, ...] = CABLE_OUTPUT_NAMES) -> tuple[int, str] | None:
    """(PortAudio index, name) of a loopback driver's playback side, or None."""
    try:
        import sounddevice as sd

        devices = sd.query_devices()
    except Exception:  # noqa: BLE001 -- no PortAudio: no device either
        return None
    outs = [d for d in devices if d["max_output_channels"] > 0]
    for want in names:
        for d in outs:
            if want.lower() in d["name"].lower():
                return int(d["index"]), str(d["name"])
    return None


def check_virtual_mic(system: str | None = None) -> tuple[bool, str, str]:
    """(ok, detail, fix) for `kf-desktop doctor` and the window."""
    system = system or platform.system()
    if system == "Linux":
        if shutil.which("pactl") is None:
            return False, "pactl not found", install_hint(system)
        try:
            r = _pactl("info", timeout=5)
        except DeviceError as e:
            return False, e.message, e.hint
        if r.returncode != 0:
            return False, "no PulseAudio/PipeWire server reachable", \
                "start PulseAudio or PipeWire (pipewire-pulse), or log in to a desktop session"
        server = next((line.split(":", 1)[1].strip() for line in r.stdout.splitlines()
                       if line.startswith("Server Name")), "sound server")
        try:
            import sounddevice as sd

            has_pulse = any(d["name"] == "pulse" and d["max_output_channels"] > 0
                            for d in sd.query_devices())
        except Exception as e:  # noqa: BLE001
            return False, f"PortAudio unavailable: {e}", "sudo apt-get install libportaudio2"
        if not has_pulse:
            return False, f"{server}, but ALSA's pulse device is missing", \
                "sudo apt-get install libasound2-plugins"
        return True, f"'{VMIC_DESCRIPTION}' is created on start ({server})", ""
    if system in ("Windows", "Darwin"):
        found = find_cable_output()
        if found:
            return True, f"plays into {found[1]!r}", ""
        return False, "no VB-Audio Virtual Cable / BlackHole device found", install_hint(system)
    return False, f"not supported on {system}", install_hint(system)


# ---------------------------------------------------------------------------
# The delayed player
# ---------------------------------------------------------------------------
def _pulse_env_lock():
    from kf_desktop.audio.mic import _PULSE_ENV_LOCK

    return _PULSE_ENV_LOCK


class DelayedPlayer:
    """Plays ``source`` (16 kHz, read by index) into an output device so that
    the audio of source time ``t`` is played at ``t + delay_fn()``.

    ``delay_fn`` returns seconds, or None while the delay is not known yet
    (silence is played meanwhile).

    The audio is delayed by hundreds of ms, so every sample exists long before
    it is due. The design uses that to be robust under CPU load:

    - a deep device buffer: the output stream is opened with as much queued
      audio as the delay allows (``depth``: ``depth_share`` (70 %) of
      ``delay - capture_lag_s``, at most ``max_depth_s``), measured on the
      stream (the ALSA ``pulse`` plugin queues ~1.35x what PortAudio is asked
      for) and re-opened when the delay (trim, video retarget) no longer fits
      it. A callback -- or a sound server -- that comes late by anything less
      than the depth costs nothing;
    - a tiny callback: it copies ready samples from a ring and records its
      timing, nothing else (no locks, no resampling, no source access);
    - a render thread (``vmic-render``) fills the ring as soon as the source
      has the samples: it upsamples 16 kHz -> device rate with the polyphase
      ``Resampler`` and reads that at a rate ``1 - c`` by linear
      interpolation;
    - a sample-counting play clock: output sample ``j`` plays at
      ``a + j / rate + correction_s``, where ``a`` is the median over the last
      ~2 s of callbacks of (the block's DAC time - its index / rate); per-block
      timing noise does not move it, an underrun does (the later samples then
      play later) and the correction follows;
    - errors are corrected slowly by resampling only (``c`` within
      +-``max_correction``, 0.5 %: inaudible), never by a jump. Only a change
      of the delay target of ``seek_on_change_ms`` or more (trim, video
      retarget), a lost sync beyond ``seek_ms`` (mic reconnect) or a re-open
      re-seeks, with a short fade.

    Counters: ``underruns`` (PortAudio output underflows, and blocks whose
    queue had run dry -- reported depth under 5 ms), ``starved`` (callbacks
    that found the ring short of audio while synced), ``resyncs`` (seeks),
    ``reopens``.
    """

    def __init__(self, source, delay_fn: Callable[[], float | None], *,
                 device: int | str | None = None, pulse_sink: str | None = None,
                 samplerate: int = 48000, channels: int = 1, block: int | None = 480,
                 max_depth_s: float = 0.4, min_depth_s: float = 0.03,
                 capture_lag_s: float = 0.03, depth_share: float = 0.7, max_correction: float = 0.005,
                 fast_correction: float = 0.02, tau_s: float = 2.0, seek_ms: float = 150.0,
                 seek_on_change_ms: float = 20.0, ring_s: float = 2.0,
                 latency_s: float | None = None) -> None:
        self.source = source
        self.delay_fn = delay_fn
        self.device = device
        self.pulse_sink = pulse_sink
        self.rate = int(samplerate)
        self.channels = int(channels)
        # None: a third of the device queue (10 ms steps), so each callback
        # -- each wait for the interpreter -- moves a large share of it.
        self._fixed_block = None if block is None else int(block)
        self.block = self._fixed_block or 480
        self.max_depth_s, self.min_depth_s = max_depth_s, min_depth_s
        self.capture_lag_s, self.depth_share = capture_lag_s, depth_share
        self.max_correction, self.fast_correction = max_correction, fast_correction
        self.tau_s = tau_s
        self.seek_s = seek_ms / 1000.0
        self.seek_on_change_s = seek_on_change_ms / 1000.0
        self.src_rate = int(getattr(source, "samplerate", 16000))
        # What PortAudio is asked for; the queue really held is measured.
        self._latency_req = latency_s if latency_s is not None else 0.1
        self._stream = None
        self._stream_lock = threading.Lock()  # open / close / reopen
        self._render_lock = threading.Lock()  # render state (thread, or a late callback)
        self._lock = threading.Lock()  # stats only
        # Ring of rendered output, by absolute output index (callback reads,
        # render thread writes; both publish by assigning one int).
        self._ring = np.zeros(int(ring_s * self.rate), np.float32)
        self._played = 0  # output samples handed to the device (callback)
        self._rendered = 0  # output samples in the ring (render thread)
        self._timing: collections.deque = collections.deque(maxlen=400)  # callback -> render
        self._epoch = 0  # bumped on every (re)open; timing of older streams is ignored
        # render-thread state
        self._res = Resampler(self.src_rate, self.rate)
        self._synced = False
        self._seek_delay: float | None = None
        self._u = 0.0
        self._u_base = 0
        self._U = np.zeros(0, np.float32)
        self._feed_start = 0
        self._feed_pos = 0
        self._c = 0.0
        self._integ = 0.0
        self._err = 0.0
        self._fade = 0
        self._a: float | None = None  # play time of output sample 0 (monotonic), model
        self._m: collections.deque[float] = collections.deque(maxlen=200)
        self._depths: collections.deque[float] = collections.deque(maxlen=200)
        self._cb_off: collections.deque[float] = collections.deque(maxlen=200)
        self._realtime_clock: bool | None = None
        self._dry = False
        self._model_hist: collections.deque = collections.deque(maxlen=2000)  # (t_play, delay)
        self._opened_at = 0.0
        self._reopen_pending: float | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # counters
        self.underruns = 0
        self.underflow_flags = 0
        self.starved = 0
        self.resyncs = 0
        self.reopens = 0
        self.callbacks = 0
        self.callback_renders = 0
        self.callback_errors = 0
        self.render_errors = 0
        self.last_error: str | None = None
        self._err_hist: collections.deque[float] = collections.deque(maxlen=500)
        self.t_started: float | None = None
        # Closed loop (LoopMeter): the achieved delay measured on the device's
        # monitor, folded into the play clock.
        self.correction_s = 0.0
        self.loop_updates = 0
        #: When the audio last jumped (seek, starved block, re-open): the loop
        #: meter measures only steady stretches.
        self.last_disturbance = 0.0

    # -- lifecycle --------------------------------------------------------------
    def _open(self, latency: float) -> None:
        import sounddevice as sd

        with _pulse_env_lock():
            saved = os.environ.get("PULSE_SINK")
            if self.pulse_sink is not None:
                os.environ["PULSE_SINK"] = self.pulse_sink
            try:
                if self._fixed_block is None:
                    step = self.rate // 100
                    self.block = max(step, int(latency * 1.4 * self.rate / 3) // step * step)
                stream = sd.OutputStream(
                    device=self.device, samplerate=self.rate, channels=self.channels,
                    dtype="float32", blocksize=self.block, latency=latency,
                    callback=self._callback)
                # ALSA's pulse plugin connects to the server on start: PULSE_SINK
                # must still be set then, or the audio goes to the default sink.
                self._epoch += 1
                self._played = 0
                self._rendered = 0
                self._timing.clear()
                stream.start()
            except Exception as e:  # noqa: BLE001 -- PortAudioError, ValueError
                raise DeviceError(f"cannot open the virtual microphone's output: {e}",
                                  "check the sound system; `kf-desktop doctor` tells more") from e
            finally:
                if self.pulse_sink is not None:
                    if saved is None:
                        os.environ.pop("PULSE_SINK", None)
                    else:
                        os.environ["PULSE_SINK"] = saved
        self._stream = stream
        self._latency_req = latency
        self._opened_at = time.monotonic()
        self._a = None
        self._m.clear()
        self._depths.clear()
        self._cb_off.clear()
        self._synced = False
        self.last_disturbance = self._opened_at

    def start(self) -> None:
        d = self.delay_fn()
        if d is not None:
            self._latency_req = self._request_for(self._depth_for(d))
        with self._stream_lock:
            self._open(self._latency_req)
        self.t_started = time.monotonic()
        self._stop.clear()
        self._thread = threading.Thread(target=self._render_loop, name="vmic-render",
                                        daemon=True)
        self._thread.start()

    @staticmethod
    def _close_stream(st) -> None:
        def close() -> None:
            try:
                st.abort(ignore_errors=True)
                st.close(ignore_errors=True)
            except Exception:  # noqa: BLE001
                pass

        t = threading.Thread(target=close, daemon=True, name="vmic-close")
        t.start()
        t.join(2.0)  # a dead driver may block: the thread is expendable

    def stop(self) -> None:
        self._stop.set()
        th, self._thread = self._thread, None
        if th is not None and th is not threading.current_thread():
            th.join(2.0)
        with self._stream_lock:
            st, self._stream = self._stream, None
        if st is not None:
            self._close_stream(st)

    @property
    def output_latency_s(self) -> float:
        st = self._stream
        return float(st.latency) if st is not None else 0.0

    @property
    def depth_s(self) -> float | None:
        """Audio queued in the device when it asks for more (measured: DAC
        time - PortAudio's now), p90: a late callback finds it drained."""
        if not self._depths:
            return None
        return float(np.percentile(np.fromiter(self._depths, float), 90))

    def _depth_for(self, delay: float) -> float:
        # Of the time between capture and play, ``depth_share`` is queued in
        # the device (covers stalls of this process and of the sound server
        # draining it), the rest covers late capture blocks (a stalled server
        # delivers the microphone late too).
        usable = max(0.0, delay - self.capture_lag_s)
        return float(min(self.max_depth_s, max(self.min_depth_s, self.depth_share * usable)))

    def _request_for(self, depth: float) -> float:
        # The ALSA pulse plugin queues ~1.35x the requested latency + a few ms.
        return max(0.01, depth / 1.4)

    # -- callback (PortAudio thread): copy and record, nothing else -----------------
    def _callback(self, outdata, frames, time_info, status) -> None:
        try:
            now = time.monotonic()
            j = self._played
            if status and status.output_underflow:
                self.underflow_flags += 1
            self._timing.append((self._epoch, j, now, time_info.currentTime,
                                 time_info.outputBufferDacTime))
            if self._rendered - j < frames and self._synced:
                # The render thread is late (CPU load): render here, the
                # samples exist (the device queue is shallower than the delay).
                # The render thread may hold the lock while it waits for the
                # interpreter: waiting here is fine, the device queue is deep.
                if self._render_lock.acquire(timeout=0.08):
                    try:
                        self._render_step(in_callback=True)
                        self.callback_renders += 1
                    finally:
                        self._render_lock.release()
            avail = self._rendered - j
            n = min(frames, max(0, avail))
            if n > 0:
                N = self._ring.shape[0]
                p = j % N
                first = min(n, N - p)
                outdata[:first, 0] = self._ring[p:p + first]
                if first < n:
                    outdata[first:n, 0] = self._ring[:n - first]
            if n < frames:
                outdata[n:, 0] = 0.0
                if self._synced:
                    self.starved += 1
                    self.last_disturbance = now
            for c in range(1, outdata.shape[1]):
                outdata[:, c] = outdata[:, 0]
            self._played = j + frames
            self.callbacks += 1
        except Exception as e:  # noqa: BLE001 -- never let an exception kill the stream
            self.callback_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            outdata.fill(0.0)

    # -- render thread ----------------------------------------------------------------
    def _update_clock(self) -> None:
        """Fold the callbacks' timing into the play-clock model ``_a``."""
        while self._timing:
            epoch, j, now, cur, dac = self._timing.popleft()
            if epoch != self._epoch or cur <= 0.0 or not (0.0 < dac - cur < 2.0):
                continue
            if self._realtime_clock is None:
                # ALSA: PortAudio's clock is the wall clock; elsewhere another clock.
                self._realtime_clock = abs(cur - time.time()) < 5.0
            if self._realtime_clock:
                off = time.time() - time.monotonic()
            else:  # map by the least callback lateness of the last ~2 s
                self._cb_off.append(cur - now)
                off = max(self._cb_off)
            depth = dac - cur
            self._depths.append(depth)
            if depth < 0.005:
                if not self._dry and self._synced and now - self._opened_at > 0.5:
                    self.underruns += 1  # the device's queue ran dry
                self._dry = True
            else:
                self._dry = False
            # A block timed while the queue was (nearly) empty -- an xrun being
            # recovered -- says nothing steady about the play clock.
            if len(self._depths) >= 20 and depth < 0.3 * float(
                    np.percentile(np.fromiter(self._depths, float), 90)):
                continue
            self._m.append(dac - off - j / self.rate)
        if len(self._m) >= 10:
            self._a = float(np.median(np.fromiter(self._m, float)))

    def play_time(self, j: float) -> float | None:
        """Modelled play time (monotonic) of output sample ``j``."""
        if self._a is None:
            return None
        return self._a + j / self.rate + self.correction_s

    def _seek(self, j: int, k: float) -> None:
        """Re-seek: output sample ``j`` becomes 16 kHz source index ``k``."""
        self._res.reset()
        pre = int(np.ceil(self._res.delay_s * self.src_rate)) + 2
        self._feed_start = int(np.floor(k)) - pre
        self._feed_pos = self._feed_start
        self._U = np.zeros(0, np.float32)
        self._u_base = 0
        self._u = ((k - self._feed_start) / self.src_rate + self._res.delay_s) * self.rate
        self._c = 0.0
        self._integ = 0.0
        self._err = 0.0
        self._fade = int(0.005 * self.rate)
        self._rendered = j
        self._synced = True
        self.resyncs += 1
        self.last_disturbance = time.monotonic()

    def _src_index_of(self, u: float) -> float:
        return self._feed_start + (u / self.rate - self._res.delay_s) * self.src_rate

    def _reopen_request(self, delay: float) -> float | None:
        """The latency to re-open the stream with when the measured queue no
        longer fits the delay (too deep: the audio would be needed before it
        is captured) or is far shallower than it could be; else None."""
        depth = self.depth_s
        if depth is None or len(self._depths) < 50 or self.reopens >= 20:
            return None
        want = self._depth_for(delay)
        if depth <= want + 0.01 and (depth >= 0.6 * want or self._latency_req >= 0.5):
            return None
        req = float(np.clip(self._latency_req * want / max(depth, 1e-3), 0.01, 0.5))
        if abs(req - self._latency_req) < 0.003:
            return None
        log.info("virtual microphone: device queue %.0f ms for a %.0f ms delay: "
                 "re-opening for %.0f ms", depth * 1000, delay * 1000, want * 1000)
        return req

    def _reopen(self, req: float, delay: float) -> None:  # noqa: ARG002
        with self._stream_lock:
            st, self._stream = self._stream, None
            if st is not None:
                self._close_stream(st)
            if self._stop.is_set():
                return
            with self._render_lock:
                self._open(req)
        self.reopens += 1

    def _render_loop(self) -> None:
        while not self._stop.wait(0.005):
            try:
                with self._render_lock:
                    reopen = self._render_step()
                if reopen is not None:
                    self._reopen(*reopen)
            except Exception as e:  # noqa: BLE001 -- keep the device fed
                self.render_errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                self._synced = False
                time.sleep(0.05)

    def _render_step(self, in_callback: bool = False) -> tuple[float, float] | None:
        """Render what the source has; returns (latency, delay) when the
        stream should be re-opened (done by the render thread, unlocked)."""
        self._update_clock()
        delay = self.delay_fn()
        if delay is None or self._a is None:
            self._synced = False
            return None
        if not in_callback and time.monotonic() - self._opened_at > 1.0:
            req = self._reopen_request(delay)
            if req is not None:
                return req, delay
        if self._synced and self._seek_delay is not None \
                and abs(delay - self._seek_delay) >= self.seek_on_change_s:
            self._synced = False  # a deliberate change of the target: seek to it
        chunk = self.rate // 100  # 10 ms: the ring fills steadily, whatever the block
        N = self._ring.shape[0]
        written = self.source.samples_written
        for _ in range(64):
            if self._synced:
                j = self._rendered
                if self._played > j:  # fell behind: skip what was played as silence
                    self._u += (1.0 - self._c) * (self._played - j)
                    j = self._played
            else:
                j = self._played + chunk
            if j + chunk > self._played + N - chunk:
                return None  # the ring is full
            t_play = self.play_time(j)
            k_des = self.source.sample_index(t_play - delay)
            if k_des is None:
                self._synced = False
                return None
            if not self._synced:
                self._seek(j, k_des)
                self._seek_delay = delay
            err = (self._src_index_of(self._u) - k_des) / self.src_rate  # > 0: too recent
            if abs(err) > self.seek_s:
                self._seek(j, k_des)
                self._seek_delay = delay
                err = 0.0
            # Enough captured to render this chunk (plus the filter's look-ahead)?
            s_end = self._src_index_of(self._u + chunk * (1.0 + self.fast_correction)) \
                + self._res.delay_s * self.src_rate + 2
            if s_end > written:
                written = self.source.samples_written
                if s_end > written:
                    return None
            # Slow correction: resample by c (> 0: the source advances slower).
            dt = chunk / self.rate
            self._err += (dt / 0.5) * (err - self._err)  # ~0.5 s smoothing of noise
            lim = self.max_correction if abs(self._err) < 0.03 else self.fast_correction
            self._integ = float(np.clip(self._integ + self._err * dt / (self.tau_s * 10.0),
                                        -self.max_correction, self.max_correction))
            self._c = float(np.clip(self._err / self.tau_s + self._integ, -lim, lim))
            ratio = 1.0 - self._c
            y = self._render(chunk, ratio)
            p = j % N
            first = min(chunk, N - p)
            self._ring[p:p + first] = y[:first]
            if first < chunk:
                self._ring[:chunk - first] = y[first:]
            self._rendered = j + chunk
            with self._lock:
                self._err_hist.append(err)
                self._model_hist.append((t_play, delay - err))
        return None

    def _render(self, n: int, ratio: float) -> np.ndarray:
        need = int(np.floor(self._u + ratio * (n - 1))) + 2
        while self._u_base + self._U.shape[0] < need:
            k = max(1, int(np.ceil((need - self._u_base - self._U.shape[0])
                                   * self.src_rate / self.rate)) + 1)
            x = self.source.read_span(self._feed_pos, k)
            self._feed_pos += k
            self._U = np.concatenate([self._U, self._res.process(x)])
        pos = self._u + ratio * np.arange(n) - self._u_base
        i0 = np.floor(pos).astype(np.int64)
        w = (pos - i0).astype(np.float32)
        U = self._U
        y = U[i0] + w * (U[i0 + 1] - U[i0])
        self._u += ratio * n
        drop = int(np.floor(self._u)) - self._u_base - 1
        if drop > 0:
            self._U = self._U[drop:]
            self._u_base += drop
        if self._fade > 0:
            total = int(0.005 * self.rate)
            m = min(n, self._fade)
            start = total - self._fade
            y[:m] *= (np.arange(start, start + m, dtype=np.float32) / total)
            self._fade -= m
        return y

    def modelled_delay_at(self, t: float) -> float | None:
        """The delay the player believes it achieves for audio playing at ``t``."""
        with self._lock:
            hist = list(self._model_hist)
        if not hist:
            return None
        ts = np.array([h[0] for h in hist])
        i = int(np.argmin(np.abs(ts - t)))
        return float(hist[i][1]) if abs(ts[i] - t) < 0.5 else None

    def stats(self) -> dict:
        with self._lock:
            hist = list(self._err_hist)[-200:]
        q = np.percentile(hist, [5, 50, 95]) * 1000.0 if hist else None
        depth = self.depth_s
        return {"synced": self._synced, "delay_error_ms": None if q is None else float(q[1]),
                "delay_error_p95_p5_ms": None if q is None else float(q[2] - q[0]),
                "drift_ppm": self._c * 1e6 if self._synced else 0.0,
                "underruns": self.underruns + self.underflow_flags, "starved": self.starved,
                "resyncs": self.resyncs, "reopens": self.reopens,
                "callbacks": self.callbacks, "callback_renders": self.callback_renders,
                "callback_errors": self.callback_errors,
                "render_errors": self.render_errors,
                "output_latency_ms": self.output_latency_s * 1000.0,
                "device_queue_ms": None if depth is None else depth * 1000.0,
                "latency_correction_ms": self.correction_s * 1000.0,
                "loop_updates": self.loop_updates,
                "last_error": self.last_error}


class LoopMeter:
    """Measures the delay the player really achieves and corrects it.

    A second capture of the feed sink's monitor (what the meeting app will
    record, with arrival timestamps like any capture) is cross-correlated
    every ``every_s`` with the source audio around ``delay`` earlier; the
    lag of the correlation peak is the error of the player's play-time
    estimate, and half of it is folded into ``player.correction_s`` each
    time (at most ``max_step_s``, and only over stretches without a seek or
    a starved block). It is measured against the delay the player believes
    it achieves at that moment (``modelled_delay_at``), so a slewing player
    does not wind it up. Silence (nothing to correlate) leaves it alone.
    """

    def __init__(self, source, monitor_device: str, player: DelayedPlayer,
                 every_s: float = 0.5, window_s: float = 1.0, search_s: float = 0.25,
                 gain: float = 0.5, max_step_s: float = 0.005) -> None:
        self.source = source
        self.max_step_s = max_step_s
        self.monitor_device = monitor_device
        self.player = player
        self.every_s, self.window_s, self.search_s, self.gain = every_s, window_s, search_s, gain
        self._mon = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.measured_ms: float | None = None  # last measured delay error (ms)
        self.measurements = 0
        self.error: str | None = None

    def start(self) -> None:
        from kf_desktop.audio.mic import MicSource

        self._mon = MicSource(self.monitor_device)
        self._mon.open()
        self._thread = threading.Thread(target=self._run, name="vmic-loop", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None
        mon, self._mon = self._mon, None
        if mon is not None:
            mon.close()

    def measure(self, t_end: float, delay: float) -> float | None:
        """Delay error (s): achieved - intended, from audio ending at ``t_end``
        on the monitor; None without enough signal."""
        sr = 16000
        m = self._mon.read_window(t_end, self.window_s)
        s = self.source.read_window(t_end - delay + self.search_s, self.window_s + 2 * self.search_s)
        if np.sqrt(np.mean(m ** 2)) < 1e-3 or np.sqrt(np.mean(s ** 2)) < 1e-3:
            return None
        n = 1 << int(np.ceil(np.log2(m.shape[0] + s.shape[0])))
        c = np.fft.irfft(np.fft.rfft(s, n) * np.conj(np.fft.rfft(m, n)), n)
        lags = c[: s.shape[0] - m.shape[0] + 1]  # m aligned at s[lag : lag + len(m)]
        k = int(np.argmax(lags))
        # Normalised peak: a real match, not noise.
        seg = s[k:k + m.shape[0]]
        den = np.sqrt(np.sum(seg ** 2) * np.sum(m ** 2))
        if den <= 0 or lags[k] / den < 0.6:
            return None
        # Sub-sample peak (parabola through the neighbours).
        frac = 0.0
        if 0 < k < lags.shape[0] - 1:
            a, b, cc = lags[k - 1], lags[k], lags[k + 1]
            d = a - 2 * b + cc
            frac = 0.5 * (a - cc) / d if d != 0 else 0.0
        # m = s shifted: monitor time T holds source time T - delay_actual.
        # s starts at source time t_end - delay + search - (window + 2 search);
        # m starts at t_end - window. Lag k means m[0] = s[k].
        src_t0 = t_end - delay + self.search_s - (self.window_s + 2 * self.search_s)
        actual = (t_end - self.window_s) - (src_t0 + (k + frac) / sr)
        return actual - delay

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                delay = self.player.delay_fn()
                if delay is None or not self.player._synced:  # noqa: SLF001
                    continue
                # Audio that has surely arrived on the monitor by now.
                t_end = time.monotonic() - 0.1
                # Against the delay the player believes it plays (it may be
                # slewing towards the target): what is left is the error of
                # its play clock, folded in (no windup while it slews).
                model = self.player.modelled_delay_at(t_end - 0.5 * self.window_s)
                if model is None or \
                        self.player.last_disturbance > t_end - self.window_s - 0.3:
                    continue  # only a steady stretch says anything about the clock
                err = self.measure(t_end, model)
                if err is None or abs(err) > self.search_s * 0.9:
                    continue
                self.measured_ms = err * 1000.0
                self.measurements += 1
                # Achieved delay too short (err < 0): the sound plays earlier than
                # the estimate says, so the estimate moves earlier. Small steps
                # (the player slews to them by resampling), none below 2 ms.
                if abs(err) >= 0.002:
                    self.player.correction_s += float(np.clip(self.gain * err,
                                                              -self.max_step_s, self.max_step_s))
                    self.player.loop_updates += 1
            except Exception as e:  # noqa: BLE001 -- the meter must not take the stream down
                self.error = f"{type(e).__name__}: {e}"

    def stats(self) -> dict:
        return {"loop_error_ms": self.measured_ms, "loop_measurements": self.measurements,
                "loop_error": self.error}


# ---------------------------------------------------------------------------
# The session-facing sink
# ---------------------------------------------------------------------------
class VirtualMicSink:
    """A session output (FrameSink interface) that publishes the delayed
    virtual microphone; it ignores frames.

    ``attach(session, video)`` before the session starts: the audio is the
    session's own audio source (one capture for the lip-sync and this), the
    delay is ``video.target_delay_s()`` (a ``HeldVirtualCameraSink``) + the
    session's ``audio_lag_ms`` + ``trim_ms``. Without an audio source (webcam
    only) there is no virtual microphone (status "off"). If the device cannot
    be made, the stream goes on without it (status "unavailable" with the
    reason and the fix) -- the video must not die for the audio.
    """

    def __init__(self, trim_ms: float = 0.0, *, output_device: str | None = None,
                 system: str | None = None, source_name: str = VMIC_SOURCE,
                 sink_name: str = VMIC_SINK, description: str = VMIC_DESCRIPTION,
                 closed_loop: bool = True) -> None:
        self.trim_ms = clamp_trim(trim_ms)
        self.closed_loop = closed_loop
        self._meter: LoopMeter | None = None
        self.output_device = output_device
        self.system = system or platform.system()
        self.source_name, self.sink_name, self.description = source_name, sink_name, description
        self._session = None
        self._video = None
        self._device: PulseVirtualMic | None = None
        self._player: DelayedPlayer | None = None
        self.status = "off"
        self.detail = ""
        self.fix = ""
        self.device_name: str | None = None

    def attach(self, session, video=None) -> "VirtualMicSink":
        self._session = session
        self._video = video
        return self

    def set_trim_ms(self, ms: float) -> None:
        self.trim_ms = clamp_trim(ms)

    def delay_s(self) -> float | None:
        """Total audio delay now (None while the video delay is measured)."""
        video = self._video
        target = video.target_delay_s() if video is not None else 0.0  # no camera: lag + trim
        if target is None:
            return None
        lag = getattr(getattr(self._session, "config", None), "audio_lag_ms", None) or 0.0
        return max(0.0, target + (lag + self.trim_ms) / 1000.0)

    # -- FrameSink -----------------------------------------------------------------
    def start(self) -> None:
        source = getattr(self._session, "audio_source", None)
        if source is None or not hasattr(source, "read_span"):
            self.status, self.detail, self.fix = "off", "no microphone: no virtual microphone", ""
            return
        try:
            self._start(source)
        except UserError as e:
            self._teardown()
            self.status, self.detail, self.fix = "unavailable", e.message, e.hint
            log.warning("virtual microphone not available: %s (fix: %s)", e.message, e.hint)
            return
        self.status, self.detail, self.fix = "live", f"'{self.device_name}'", ""

    def _start(self, source) -> None:
        if self.system == "Linux" and self.output_device is None:
            self._device = PulseVirtualMic(self.source_name, self.sink_name, self.description)
            self._device.create_sink()
            import sounddevice as sd

            pulse = [d["index"] for d in sd.query_devices()
                     if d["name"] == "pulse" and d["max_output_channels"] > 0]
            if not pulse:
                raise DeviceError("PortAudio has no ALSA 'pulse' device to play into",
                                  "sudo apt-get install libasound2-plugins")
            self._player = DelayedPlayer(source, self.delay_s, device=pulse[0],
                                         pulse_sink=self.sink_name)
            self._player.start()
            self._device.publish()
            if self.closed_loop:
                self._meter = LoopMeter(source, f"pulse:{self.source_name}",
                                        self._player)
                self._meter.start()
            self.device_name = self.description
            return
        else:
            if self.output_device is not None:
                found = find_cable_output((self.output_device,))
            else:
                found = find_cable_output()
            if found is None:
                raise DeviceError("no virtual audio cable found"
                                  + (f" named {self.output_device!r}" if self.output_device else ""),
                                  install_hint(self.system))
            import sounddevice as sd

            info = sd.query_devices(found[0])
            rate = int(info["default_samplerate"]) or 48000
            self._player = DelayedPlayer(source, self.delay_s, device=found[0], samplerate=rate,
                                         channels=min(2, int(info["max_output_channels"])))
            self.device_name = found[1]
        self._player.start()

    def submit(self, image, capture_ts: float) -> None:
        pass

    def _teardown(self) -> None:
        meter, self._meter = self._meter, None
        if meter is not None:
            meter.stop()
        player, self._player = self._player, None
        if player is not None:
            player.stop()
        dev, self._device = self._device, None
        if dev is not None:
            dev.remove()

    def stop(self) -> None:
        self._teardown()
        if self.status == "live":
            self.status, self.detail = "off", "stopped"

    def stats(self) -> dict:
        d = self.delay_s()
        out = {"status": self.status, "detail": self.detail, "fix": self.fix,
               "device": self.device_name, "trim_ms": self.trim_ms,
               "delay_ms": None if d is None else d * 1000.0}
        if self._player is not None:
            out.update(self._player.stats())
        if self._meter is not None:
            out.update(self._meter.stats())
        return out


def vmic_summary(snapshot: dict) -> str | None:
    """'mic +165 ms (0 underruns)' / 'mic unavailable' for status lines."""
    for s in (snapshot.get("sinks") or {}).values():
        if not isinstance(s, dict) or "trim_ms" not in s or "status" not in s:
            continue
        if s["status"] != "live":
            return f"virtual mic {s['status']}" + (f": {s['detail']}" if s.get("detail") else "")
        d = s.get("delay_ms")
        ds = f"{d:.0f} ms" if d is not None else "waiting for the video delay"
        return (f"virtual mic +{ds} (trim {s['trim_ms']:+.0f}), {s.get('underruns', 0)} underruns, "
                f"drift {s.get('drift_ppm', 0.0):+.0f} ppm")
    return None
