"""WAV file audio source with the MicSource interface.

``WavSource(path, realtime=True)`` releases samples as the clock advances, like
a microphone would (for previews and the audio-only demo); ``realtime=False``
releases one block per ``read_new()`` call on a virtual clock (tests, offline
rendering, benchmarks). Any PCM (8/16/24/32-bit) or float WAV, mono or
multi-channel, at any rate is read and converted to 16 kHz mono.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kf_desktop.audio.resample import resample
from kf_desktop.errors import UserError
from kf_desktop.input_path import kind_of

_HINT = "use a PCM or float WAV file, e.g. convert with `ffmpeg -i INPUT -ac 1 -ar 16000 out.wav`"
_FMT_PCM, _FMT_FLOAT, _FMT_EXT = 1, 3, 0xFFFE


def load_wav(path: str | Path, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Read a WAV file. Returns ``(samples (n, channels) float32 in [-1, 1], rate)``.

    Raises UserError for a missing, unreadable, corrupt or unsupported file.
    A data chunk whose declared size runs past the end of the file (a
    recording that was cut off) is read up to the end of the file. With
    ``max_seconds`` only that much is read from the disk (a one-hour file
    for a two-second render costs two seconds of audio).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"audio file not found: {path}", "check the path given to --audio") from None
    except OSError as e:
        raise UserError(f"cannot read audio file {path}: {e.strerror or e}",
                        "check the file's permissions") from None
    if not stat.S_ISREG(st.st_mode):
        # Never opened: reading a FIFO would block for ever.
        raise UserError(f"the audio file {path} is {kind_of(st)}, not a WAV file",
                        "give --audio the path of a WAV file")
    try:
        with open(path, "rb") as f:
            return _read_wav(f, path, st.st_size, max_seconds)
    except OSError as e:
        raise UserError(f"cannot read audio file {path}: {e.strerror or e}", "check the file's permissions") from e


def _read_wav(f, path: Path, size_on_disk: int, max_seconds: float | None) -> tuple[np.ndarray, int]:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
        raise UserError(f"{path.name} is not a WAV file (no RIFF/WAVE header)", _HINT)
    if head[:4] == b"RIFX":
        raise UserError(f"{path.name} is a big-endian (RIFX) WAV, which is not supported", _HINT)
    pos = 12
    fmt = None
    data = None
    while pos + 8 <= size_on_disk:
        f.seek(pos)
        hdr = f.read(8)
        if len(hdr) < 8:
            break
        cid = hdr[:4]
        (size,) = struct.unpack_from("<I", hdr, 4)
        body = pos + 8
        if cid == b"fmt ":
            chunk = f.read(min(size, 64))
            if size < 16 or len(chunk) < 16:
                raise UserError(f"{path.name}: corrupt WAV format chunk", _HINT)
            tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", chunk, 0)
            if tag == _FMT_EXT and size >= 40 and len(chunk) >= 26:
                (tag,) = struct.unpack_from("<H", chunk, 24)  # sub-format GUID's first field
            fmt = (tag, channels, rate, block_align, bits)
        elif cid == b"data":
            want = min(size, size_on_disk - body)
            if max_seconds is not None and fmt is not None and fmt[3] > 0:
                frames = int(max_seconds * fmt[2]) + 1
                want = min(want, frames * fmt[3])
            data = f.read(max(0, want))
            break
        pos = body + size + (size & 1)  # chunks are word aligned
    if fmt is None:
        raise UserError(f"{path.name}: WAV file has no format chunk (corrupt file)", _HINT)
    if data is None:
        raise UserError(f"{path.name}: WAV file has no audio data chunk (corrupt or truncated)", _HINT)
    tag, channels, rate, block_align, bits = fmt
    if channels < 1 or rate < 1000 or rate > 768000:
        raise UserError(f"{path.name}: implausible WAV header ({channels} channels, {rate} Hz)", _HINT)
    width = bits // 8
    if bits not in (8, 16, 24, 32, 64) or block_align == 0 or width * channels != block_align:
        raise UserError(f"{path.name}: inconsistent WAV header ({bits} bits, block {block_align})", _HINT)
    n = len(data) // block_align
    data = data[: n * block_align]
    if tag == _FMT_PCM and bits == 8:
        x = (np.frombuffer(data, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == _FMT_PCM and bits == 16:
        x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
    elif tag == _FMT_PCM and bits == 24:
        b = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        v = np.where(v >= 1 << 23, v - (1 << 24), v)
        x = v.astype(np.float32) / float(1 << 23)
    elif tag == _FMT_PCM and bits == 32:
        x = (np.frombuffer(data, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    elif tag == _FMT_FLOAT and bits == 32:
        x = np.frombuffer(data, "<f4").astype(np.float32)
    elif tag == _FMT_FLOAT and bits == 64:
        x = np.frombuffer(data, "<f8").astype(np.float32)
    else:
        raise UserError(f"{path.name}: unsupported WAV encoding (format {tag}, {bits} bits)", _HINT)
    x = np.nan_to_num(x.reshape(-1, channels), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(x, -1.0, 1.0), int(rate)


def load_mono16k(path: str | Path, samplerate: int = 16000,
                 max_seconds: float | None = None) -> np.ndarray:
    """A WAV file (its first ``max_seconds``) as mono float32 at ``samplerate``
    (channels averaged)."""
    x, rate = load_wav(path, max_seconds)
    mono = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    return resample(mono, rate, samplerate)


class WavSource:
    """Audio source from a WAV file, same interface as ``MicSource``.

    Times are ``clock()`` seconds (time.monotonic by default): sample ``i``
    (16 kHz) is at ``t0 + i / 16000`` where ``t0`` is the time ``open()`` ran.
    realtime=True: a sample is available once the clock has passed it.
    realtime=False: each ``read_new()`` releases the next block (``block_ms``)
    and the virtual clock advances by that much, as fast as the caller reads.
    loop=True: the file repeats forever.
    """

    def __init__(self, path: str | Path, realtime: bool = True, loop: bool = False,
                 samplerate: int = 16000, block_ms: float = 10.0, buffer_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.samplerate = samplerate
        self.block = max(1, int(round(samplerate * block_ms / 1000.0)))
        self.buffer = int(buffer_s * samplerate)
        self._clock = clock
        self._data: np.ndarray | None = None
        self._t0 = 0.0
        self._avail_fast = 0  # samples released so far (fast mode)
        self._read_pos = 0  # read_new cursor
        self.overflows = 0  # read_new calls that skipped audio older than buffer_s
        self.lost = False  # a file never disappears mid-stream (it is in memory)
        self.error: str | None = None
        self.latency_s = 0.0

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> "WavSource":
        self._data = load_mono16k(self.path, self.samplerate)
        if self._data.shape[0] == 0:
            raise UserError(f"{self.path.name}: the WAV file contains no audio", _HINT)
        self._t0 = self._clock()
        self._avail_fast = 0
        self._read_pos = 0
        return self

    def close(self) -> None:
        self._data = None

    def __enter__(self) -> "WavSource":
        return self.open() if self._data is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- properties ------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def duration_s(self) -> float:
        return 0.0 if self._data is None else self._data.shape[0] / self.samplerate

    @property
    def samples(self) -> np.ndarray:
        """The whole file at 16 kHz mono (after open)."""
        self._require_open()
        return self._data

    @property
    def t0(self) -> float:
        return self._t0

    @property
    def eof(self) -> bool:
        """True once every sample has been handed out by read_new (never when looping)."""
        return (not self.loop and self._data is not None
                and self._read_pos >= self._data.shape[0])

    def _require_open(self) -> None:
        if self._data is None:
            raise RuntimeError("WavSource is not open")

    def _available(self) -> int:
        """Samples released so far (absolute count; may exceed the file when looping)."""
        if self.realtime:
            n = int((self._clock() - self._t0) * self.samplerate)
        else:
            n = self._avail_fast
        n = max(0, n)
        return n if self.loop else min(n, self._data.shape[0])

    def latest_time(self) -> float:
        """Time just after the newest available sample."""
        self._require_open()
        return self._t0 + self._available() / self.samplerate

    def _take(self, start: int, n: int) -> np.ndarray:
        """Samples [start, start+n) of the (possibly looped) stream; zero past the end."""
        d = self._data
        out = np.zeros(n, dtype=np.float32)
        if n <= 0:
            return out
        if self.loop:
            idx = (np.arange(start, start + n) % d.shape[0])
            valid = np.arange(start, start + n) >= 0
            out[valid] = d[idx[valid]]
            return out
        lo, hi = max(start, 0), min(start + n, d.shape[0])
        if hi > lo:
            out[lo - start:hi - start] = d[lo:hi]
        return out

    # -- reading ----------------------------------------------------------------
    def read_new(self, max_samples: int | None = None) -> tuple[np.ndarray, float]:
        """Samples released since the previous call and the time just after the
        last of them. Fast mode releases one block (or ``max_samples``) per call.
        Returns an empty array at the end of a non-looping file."""
        self._require_open()
        if not self.realtime:
            step = self.block if max_samples is None else max_samples
            self._avail_fast = self._read_pos + step
        avail = self._available()
        if avail - self._read_pos > self.buffer:  # the reader fell behind: drop, like a mic ring
            self._read_pos = avail - self.buffer
            self.overflows += 1
        end = avail if max_samples is None else min(avail, self._read_pos + max_samples)
        out = self._take(self._read_pos, end - self._read_pos)
        self._read_pos = end
        return out, self._t0 + end / self.samplerate

    def read_window(self, t_end: float, seconds: float) -> np.ndarray:
        """The ``seconds`` of audio ending at time ``t_end``; zeros where no
        sample is available (before the start, in the future, past the end)."""
        self._require_open()
        n = int(round(seconds * self.samplerate))
        end = int(round((t_end - self._t0) * self.samplerate))
        end_avail = min(end, self._available())
        out = np.zeros(n, dtype=np.float32)
        start = end - n
        if end_avail > start:
            seg = self._take(start, end_avail - start)
            out[: end_avail - start] = seg
        return out

    # -- by sample index (same API as MicSource) ------------------------------
    def sample_index(self, t: float) -> float | None:
        """Position of time ``t`` in 16 kHz samples of the (looped) stream."""
        self._require_open()
        return (t - self._t0) * self.samplerate

    @property
    def samples_written(self) -> int:
        return self._available()

    def read_span(self, start: int, n: int) -> np.ndarray:
        """Samples ``[start, start + n)`` by index; zeros where none are
        available yet (or before the start / past the end of the file)."""
        self._require_open()
        n = max(0, int(n))
        out = np.zeros(n, dtype=np.float32)
        end = min(int(start) + n, self._available())
        if end > start:
            out[:end - int(start)] = self._take(int(start), end - int(start))
        return out

    def stats(self) -> dict:
        return {"source": "wav", "name": self.name, "realtime": self.realtime,
                "loop": self.loop, "duration_s": self.duration_s,
                "overflows": self.overflows, "lost": False, "error": None}
