"""Microphone capture with sounddevice (PortAudio), resampled to 16 kHz mono.

Threads: PortAudio's callback thread is the only producer. It downmixes into a
preallocated scratch buffer, copies into a preallocated native-rate ring and
stamps the block with ``time.monotonic()`` -- nothing else (no resampling, no
locks, no buffer allocation), so it cannot glitch the audio thread. Whoever
reads (``read_new`` / ``read_window``, the engine thread) pumps the native
ring through the polyphase resampler into a 16 kHz ring under a consumer-side
lock that the callback never touches.

Loss: when the stream dies (device unplugged, sound server gone) PortAudio
calls ``finished_callback`` and the stream goes inactive; a stream that stops
delivering without saying so is caught by a stall timeout. Either way
``lost`` becomes True, ``error`` says why, reads keep returning silence, and
a background thread tries to reopen the same device every ``reconnect_s``.

Device names: PortAudio's own names and indices, and, where PortAudio reaches
PulseAudio/PipeWire through ALSA's ``pulse`` device (PortAudio 19.6 has no
PulseAudio host API), each Pulse source as ``pulse:<source name>`` -- the
``pulse`` device is opened with ``PULSE_SOURCE`` set to that source.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass

import numpy as np

from kf_desktop.audio.resample import Resampler
from kf_desktop.audio.ring import BlockClock, RingBuffer
from kf_desktop.errors import DeviceError

log = logging.getLogger(__name__)

_PULSE_PREFIX = "pulse:"
# PULSE_SOURCE is process-wide; opening streams from two threads at once must
# not interleave their temporary settings.
_PULSE_ENV_LOCK = threading.Lock()


@dataclass(frozen=True)
class MicInfo:
    """One capture device. ``name`` is what ``MicSource(device=...)`` accepts."""

    name: str
    index: int  # PortAudio device index (for pulse sources: the ``pulse`` device)
    default_samplerate: float
    max_input_channels: int
    hostapi: str = ""
    is_default: bool = False
    pulse_source: str | None = None


def _sd():
    try:
        import sounddevice as sd
    except OSError as e:  # the PortAudio shared library is missing
        raise DeviceError("audio capture is unavailable: PortAudio library not found",
                          "install PortAudio (Debian/Ubuntu: apt-get install libportaudio2)") from e
    return sd


def _pulse_sources(timeout: float = 2.0) -> list[tuple[str, int, int]]:
    """(name, rate, channels) of every PulseAudio/PipeWire source, via pactl."""
    pactl = shutil.which("pactl")
    if not pactl:
        return []
    try:
        out = subprocess.run([pactl, "list", "short", "sources"], capture_output=True,
                             text=True, timeout=timeout, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    res = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) < 4:
            continue
        rate, ch = 48000, 2
        for tok in parts[3].split():
            if tok.endswith("Hz") and tok[:-2].isdigit():
                rate = int(tok[:-2])
            elif tok.endswith("ch") and tok[:-2].isdigit():
                ch = int(tok[:-2])
        res.append((parts[1], rate, ch))
    return res


def list_microphones(include_pulse: bool = True) -> list[MicInfo]:
    """Capture devices PortAudio sees, plus Pulse sources reachable through the
    ALSA ``pulse`` device. Raises DeviceError if PortAudio itself is missing."""
    sd = _sd()
    try:
        devices = sd.query_devices()
        hostapis = sd.query_hostapis()
        default_in = sd.default.device[0]
    except sd.PortAudioError as e:
        raise DeviceError(f"cannot list audio devices: {e}", "check the sound system (ALSA/PulseAudio)") from e
    if default_in is None or default_in < 0:
        try:
            default_in = sd.query_hostapis(0)["default_input_device"]
        except Exception:  # noqa: BLE001 -- no host API at all
            default_in = -1
    mics = []
    pulse_index = None
    for d in devices:
        if d["max_input_channels"] <= 0:
            continue
        mics.append(MicInfo(name=d["name"], index=d["index"],
                            default_samplerate=float(d["default_samplerate"]),
                            max_input_channels=int(d["max_input_channels"]),
                            hostapi=hostapis[d["hostapi"]]["name"],
                            is_default=d["index"] == default_in))
        if d["name"] == "pulse":
            pulse_index = d["index"]
    if include_pulse and pulse_index is not None:
        for name, rate, ch in _pulse_sources():
            mics.append(MicInfo(name=_PULSE_PREFIX + name, index=pulse_index,
                                default_samplerate=float(rate), max_input_channels=ch,
                                hostapi="ALSA/pulse", pulse_source=name))
    return mics


def _describe(mics: list[MicInfo]) -> str:
    if not mics:
        return ("no capture devices were found: connect a microphone (`kf-desktop doctor` "
                "lists what the sound system sees), or drive the mouth with --audio FILE.wav")
    return "available: " + ", ".join(
        f"{m.name!r}" if m.pulse_source else f"{m.index} {m.name!r}" for m in mics)


def resolve_microphone(device: str | int | None) -> MicInfo:
    """Find a capture device by PortAudio index, exact name, ``pulse:<source>``,
    bare Pulse source name, or unique case-insensitive substring."""
    mics = list_microphones(include_pulse=isinstance(device, str))
    hint_list = _describe(mics)
    if device is None:
        for m in mics:
            if m.is_default:
                return m
        plain = [m for m in mics if m.pulse_source is None]
        if plain:
            return plain[0]
        raise DeviceError("no microphone found", "connect a microphone or use --audio FILE.wav; " + hint_list)
    if isinstance(device, int) or (isinstance(device, str) and device.strip().isdigit()):
        idx = int(device)
        for m in mics:
            if m.index == idx and m.pulse_source is None:
                return m
        raise DeviceError(f"microphone index {idx} not found", hint_list)
    want = device.strip()
    low = want.lower()
    for m in mics:  # exact: PortAudio name or pulse:<source>
        if m.name == want or m.name.lower() == low:
            return m
    for m in mics:  # bare pulse source name
        if m.pulse_source is not None and m.pulse_source.lower() == low.removeprefix(_PULSE_PREFIX):
            return m
    if want.startswith(_PULSE_PREFIX) and any(m.name == "pulse" for m in mics) and not _pulse_sources():
        # pactl is not installed: trust the name, the sound server will check it.
        base = next(m for m in mics if m.name == "pulse")
        return MicInfo(want, base.index, base.default_samplerate, base.max_input_channels,
                       base.hostapi, False, want[len(_PULSE_PREFIX):])
    hits = [m for m in mics if low in m.name.lower()]
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise DeviceError(f"microphone name {want!r} is ambiguous",
                          "use the full name or the index; matches: " + _describe(hits))
    raise DeviceError(f"microphone {want!r} not found", hint_list)


class _Capture:
    """One open PortAudio stream and the producer-side state it writes."""

    def __init__(self, info: MicInfo, rate: int, channels: int, blocksize: int,
                 buffer_s: float, out_rate: int) -> None:
        self.info = info
        self.rate = rate
        self.channels = channels
        self.blocksize = blocksize
        self.ring = RingBuffer(int(buffer_s * rate))
        self.clock = BlockClock(rate)
        # Downmix scratch; PortAudio may hand over bigger blocks than asked.
        self.scratch = np.zeros(max(blocksize, 1) * 16, dtype=np.float32)
        self.inv_ch = np.float32(1.0 / channels)
        self.resampler = Resampler(rate, out_rate)
        self.read_pos = 0  # consumer cursor into ring
        self.out_start = 0  # 16 kHz ring index of this capture's first output sample
        self.overflows = 0
        self.callbacks = 0
        self.callback_errors = 0
        self.finished = False
        self.t_open = time.monotonic()
        self.stream = None
        self.latency_s = 0.0

    def callback(self, indata, frames, time_info, status) -> None:  # PortAudio thread
        t = time.monotonic()
        try:
            overflow = bool(status) and status.input_overflow
            if overflow:
                self.overflows += 1
            if self.channels == 1:
                self.ring.write(indata[:, 0])
            else:
                done = 0
                while done < frames:  # normally one pass
                    n = min(frames - done, self.scratch.shape[0])
                    s = self.scratch[:n]
                    np.sum(indata[done:done + n], axis=1, out=s)
                    np.multiply(s, self.inv_ch, out=s)
                    self.ring.write(s)
                    done += n
            self.clock.mark(self.ring.written, t, reset=overflow)
            self.callbacks += 1
        except Exception:  # noqa: BLE001 -- never let an exception abort the stream
            self.callback_errors += 1

    def on_finished(self) -> None:  # PortAudio thread
        self.finished = True


class MicSource:
    """Microphone as a 16 kHz mono source with ``time.monotonic()`` timestamps.

    ``open()`` raises DeviceError (with the device list) if the device is
    missing or refuses every format. After that nothing raises: a lost device
    sets ``lost``/``error`` and reads return silence until it comes back.

    Timestamps: a sample's time is when its block reached this process, with
    callback scheduling jitter removed (the earliest arrival over the last
    ~second). The device's own buffering before that is ``latency_s``
    (PortAudio's reported input latency), reported rather than subtracted
    because drivers report it inconsistently.
    """

    def __init__(self, device: str | int | None = None, samplerate: int = 16000,
                 block_ms: float = 10.0, buffer_s: float = 10.0,
                 stall_timeout_s: float = 1.0, reconnect_s: float = 2.0,
                 startup_timeout_s: float = 5.0) -> None:
        self.device = device
        self.samplerate = samplerate
        self.block_ms = block_ms
        self.buffer_s = buffer_s
        self.stall_timeout_s = stall_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.reconnect_s = reconnect_s
        self._out = RingBuffer(int(buffer_s * samplerate))
        self._lock = threading.Lock()  # consumer side only; never taken in the callback
        self._cap: _Capture | None = None
        self._offset: float | None = None  # time of 16 kHz sample 0 of the current capture
        self._new_pos = 0  # read_new cursor into _out
        self._closing = False
        self._lost = False
        self.error: str | None = None
        self.losses = 0
        self.reconnects = 0
        self.dropped = 0  # native samples dropped because nobody read for buffer_s
        self._overflows_done = 0  # overflows of captures already closed
        self._reconnect_thread: threading.Thread | None = None
        self._last_time: float | None = None  # end time of the newest sample

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> "MicSource":
        self._closing = False
        info = resolve_microphone(self.device)
        cap = self._open_capture(info)
        with self._lock:
            self._install(cap)
        return self

    def close(self) -> None:
        self._closing = True
        with self._lock:
            cap, self._cap = self._cap, None
        if cap is not None:
            _stop_stream(cap, wait=2.0)
        t = self._reconnect_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=max(2.0, self.reconnect_s + 1.0))

    def __enter__(self) -> "MicSource":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def _open_capture(self, info: MicInfo) -> _Capture:
        sd = _sd()
        rates = []
        for r in (int(info.default_samplerate), 48000, 44100, 32000, 16000):
            if r > 0 and r not in rates:
                rates.append(r)
        chans = [1] + ([2] if info.max_input_channels >= 2 else [])
        last_err = "no supported format"
        for rate in rates:
            for ch in chans:
                block = max(1, int(round(rate * self.block_ms / 1000.0)))
                cap = _Capture(info, rate, ch, block, self.buffer_s, self.samplerate)
                try:
                    with _PULSE_ENV_LOCK:
                        saved = os.environ.get("PULSE_SOURCE")
                        if info.pulse_source is not None:
                            os.environ["PULSE_SOURCE"] = info.pulse_source
                        try:
                            stream = sd.InputStream(
                                device=info.index, channels=ch, samplerate=rate, blocksize=block,
                                dtype="float32", latency="low", callback=cap.callback,
                                finished_callback=cap.on_finished)
                        finally:
                            if info.pulse_source is not None:
                                if saved is None:
                                    os.environ.pop("PULSE_SOURCE", None)
                                else:
                                    os.environ["PULSE_SOURCE"] = saved
                    cap.stream = stream
                    cap.latency_s = float(stream.latency)
                    cap.t_open = time.monotonic()
                    stream.start()
                    return cap
                except Exception as e:  # noqa: BLE001 -- PortAudioError, ValueError...
                    last_err = str(e)
                    if cap.stream is not None:
                        _stop_stream(cap, wait=1.0)
        raise DeviceError(f"cannot open microphone {info.name!r}: {last_err}",
                          "check that no other program holds it exclusively, or pick another "
                          "device; " + _describe(list_microphones()))

    def _install(self, cap: _Capture) -> None:
        """Make ``cap`` current (consumer lock held). After a loss, silence
        covers the gap so the 16 kHz ring stays continuous in time."""
        if self._last_time is not None:
            gap = int((cap.t_open - self._last_time) * self.samplerate)
            if gap > 0:
                self._out.write(np.zeros(min(gap, self._out.capacity), dtype=np.float32))
        cap.out_start = self._out.written
        self._cap = cap
        self._offset = None
        self._lost = False

    # -- consumer side -----------------------------------------------------------
    def _pump(self) -> None:
        """Move new native samples through the resampler (consumer lock held)."""
        cap = self._cap
        if cap is None:
            return
        w = cap.ring.written
        n = w - cap.read_pos
        if n > cap.ring.capacity:
            self.dropped += n - cap.ring.capacity
            cap.read_pos = w - cap.ring.capacity
            n = cap.ring.capacity
        if n > 0:
            x = cap.ring.read(cap.read_pos, n)
            cap.read_pos += n
            self._out.write(cap.resampler.process(x))
        off = cap.clock.offset()
        if off is not None:
            # 16 kHz output k of this capture is native time k/sr - delay.
            self._offset = off - cap.resampler.delay_s - cap.out_start / self.samplerate
            self._last_time = self._time_of(self._out.written)
        self._check_health(cap)

    def _time_of(self, index: int) -> float:
        return self._offset + index / self.samplerate

    def _check_health(self, cap: _Capture) -> None:
        if self._closing or self._lost:
            return
        reason = None
        last = cap.clock.last()
        now = time.monotonic()
        if cap.finished:
            reason = "the audio stream stopped (device disconnected or sound server gone)"
        else:
            try:
                if not cap.stream.active:
                    reason = "the audio stream is no longer active"
            except Exception as e:  # noqa: BLE001
                reason = f"the audio stream failed: {e}"
        if reason is None:
            if last is None:
                # Some drivers (ALSA's pulse plugin) take up to ~2 s to deliver
                # the first block: allow more time before the first one.
                since = now - cap.t_open
                if since > max(self.stall_timeout_s, self.startup_timeout_s):
                    reason = f"the device delivered no audio in {since:.1f} s after opening"
            elif now - last[1] > self.stall_timeout_s:
                reason = f"no audio from the device for {now - last[1]:.1f} s"
        if reason is not None:
            self._mark_lost(cap, reason)

    def _mark_lost(self, cap: _Capture, reason: str) -> None:
        self._lost = True
        self.losses += 1
        self.error = f"microphone {cap.info.name!r} lost: {reason}"
        log.warning("%s", self.error)
        self._overflows_done += cap.overflows
        self._cap = None
        # Closing a dead stream can block inside the driver: do it off-thread.
        threading.Thread(target=_stop_stream, args=(cap, 2.0), daemon=True,
                         name="mic-close").start()
        if self.reconnect_s > 0 and not self._closing:
            self._reconnect_thread = threading.Thread(target=self._reconnect_loop, args=(cap.info,),
                                                      daemon=True, name="mic-reconnect")
            self._reconnect_thread.start()

    def _reconnect_loop(self, info: MicInfo) -> None:
        while not self._closing:
            time.sleep(self.reconnect_s)
            if self._closing:
                return
            try:
                cap = self._open_capture(info)
            except Exception as e:  # noqa: BLE001 -- keep trying
                log.debug("microphone reopen failed: %s", e)
                continue
            # Wait for the first block so a stream that opens but never
            # delivers (server still starting) is not declared healthy.
            deadline = time.monotonic() + max(self.startup_timeout_s, self.stall_timeout_s)
            while cap.callbacks == 0 and not cap.finished and time.monotonic() < deadline:
                time.sleep(0.01)
            if cap.callbacks == 0 or cap.finished or self._closing:
                _stop_stream(cap, 1.0)
                continue
            with self._lock:
                if self._closing:
                    _stop_stream(cap, 1.0)
                    return
                self._install(cap)
                self.reconnects += 1
                self.error = None
            log.warning("microphone %r is back", info.name)
            return

    # -- public reading API ------------------------------------------------------------
    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Block until the first audio block has arrived (True) or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.latest_time() is not None and not self._lost:
                return True
            time.sleep(0.01)
        return False

    @property
    def lost(self) -> bool:
        """True while the device is gone (reads return silence meanwhile)."""
        with self._lock:
            if self._cap is not None:
                self._check_health(self._cap)
            return self._lost

    @property
    def overflows(self) -> int:
        """Input overflows PortAudio reported (samples lost before we saw them)."""
        cap = self._cap
        return self._overflows_done + (cap.overflows if cap is not None else 0)

    @property
    def latency_s(self) -> float:
        """PortAudio's input latency of the open stream (device buffering)."""
        cap = self._cap
        return cap.latency_s if cap is not None else 0.0

    @property
    def native_samplerate(self) -> int:
        cap = self._cap
        return cap.rate if cap is not None else 0

    @property
    def name(self) -> str:
        cap = self._cap
        return cap.info.name if cap is not None else str(self.device)

    def latest_time(self) -> float | None:
        """Time just after the newest 16 kHz sample (None before the first block)."""
        with self._lock:
            self._pump()
            return self._last_time

    def read_new(self, max_samples: int | None = None) -> tuple[np.ndarray, float]:
        """16 kHz samples captured since the previous call and the time just
        after the last of them. Never raises; empty while lost."""
        with self._lock:
            try:
                self._pump()
            except Exception as e:  # noqa: BLE001 -- reading must not take the session down
                self.error = f"microphone read failed: {e}"
            w = self._out.written
            if w - self._new_pos > self._out.capacity:
                self.dropped += w - self._new_pos - self._out.capacity
                self._new_pos = w - self._out.capacity
            end = w if max_samples is None else min(w, self._new_pos + max_samples)
            x = self._out.read(self._new_pos, end - self._new_pos)
            self._new_pos = end
            if self._offset is None:
                return x, time.monotonic()
            return x, self._time_of(end)

    def read_window(self, t_end: float, seconds: float) -> np.ndarray:
        """The ``seconds`` of 16 kHz audio ending at ``t_end`` (monotonic time).
        Samples not captured (future, lost, before start) are zeros."""
        n = int(round(seconds * self.samplerate))
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            try:
                self._pump()
                if self._offset is None:
                    return out
                end = int(round((t_end - self._offset) * self.samplerate))
                self._out.read_into(end - n, out)
            except Exception as e:  # noqa: BLE001
                self.error = f"microphone read failed: {e}"
                out[:] = 0.0
        return out

    # -- by sample index (a second, independent reader: the virtual microphone) --
    def sample_index(self, t: float) -> float | None:
        """Position (in 16 kHz samples, fractional) of time ``t`` in this
        source's continuous sample stream; None before the first block. The
        stream stays continuous across a device loss (silence fills the gap)."""
        with self._lock:
            try:
                self._pump()
            except Exception:  # noqa: BLE001
                pass
            if self._offset is None:
                return None
            return (t - self._offset) * self.samplerate

    @property
    def samples_written(self) -> int:
        """16 kHz samples in the stream so far (after pumping the device ring)."""
        with self._lock:
            try:
                self._pump()
            except Exception:  # noqa: BLE001
                pass
            return self._out.written

    def read_span(self, start: int, n: int) -> np.ndarray:
        """16 kHz samples ``[start, start + n)`` of the stream by index; zeros
        where none exist (not captured yet, or older than ``buffer_s``). Does
        not move ``read_new``'s cursor."""
        out = np.zeros(max(0, int(n)), dtype=np.float32)
        with self._lock:
            try:
                self._pump()
                self._out.read_into(int(start), out)
            except Exception:  # noqa: BLE001
                out[:] = 0.0
        return out

    def stats(self) -> dict:
        cap = self._cap
        return {"source": "mic", "name": self.name, "native_rate": self.native_samplerate,
                "latency_s": self.latency_s, "block_ms": self.block_ms,
                "overflows": self.overflows, "dropped": self.dropped,
                "callbacks": cap.callbacks if cap is not None else 0,
                "lost": self._lost, "losses": self.losses, "reconnects": self.reconnects,
                "error": self.error}


def _stop_stream(cap: _Capture, wait: float) -> None:
    """Abort and close a stream; give up after ``wait`` seconds (a dead driver
    may block, and the thread doing this is expendable)."""
    stream = cap.stream
    if stream is None:
        return

    def stop() -> None:
        try:
            stream.abort(ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass
        try:
            stream.close(ignore_errors=True)
        except Exception:  # noqa: BLE001
            pass

    t = threading.Thread(target=stop, daemon=True, name="mic-stop")
    t.start()
    t.join(wait)
