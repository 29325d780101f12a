"""Lock-free single-producer / single-consumer buffers for audio capture.

The producer is the PortAudio callback thread. It must never block or allocate
sample buffers (a Python callback still creates small objects such as views;
that is unavoidable and cheap), so both classes preallocate everything and the
producer publishes progress by assigning one Python int (atomic under the GIL)
*after* the samples are in place. The consumer reads by absolute sample index
and re-checks the published count afterwards to detect samples the producer
overwrote while they were being copied.
"""

from __future__ import annotations

import numpy as np


class RingBuffer:
    """Preallocated float32 ring addressed by absolute sample index.

    Sample ``i`` (0-based count since creation) lives at ``buf[i % capacity]``
    while ``written - capacity <= i < written``.
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = int(capacity)
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0  # total samples ever written; only the producer assigns it
        self.overwritten = 0  # samples the consumer asked for that were already gone

    @property
    def written(self) -> int:
        return self._written

    def write(self, x: np.ndarray) -> None:
        """Producer: append ``x`` (1-D float32-convertible). No allocation when
        ``x`` is already float32; if ``x`` is longer than the ring only its tail
        is kept (the head would be overwritten anyway)."""
        n = x.shape[0]
        w = self._written
        if n > self.capacity:
            x = x[n - self.capacity:]
            w += n - self.capacity
            n = self.capacity
        pos = w % self.capacity
        first = min(n, self.capacity - pos)
        self._buf[pos:pos + first] = x[:first]
        if first < n:
            self._buf[:n - first] = x[first:]
        self._written = w + n  # publish last

    def read_into(self, start: int, out: np.ndarray) -> int:
        """Consumer: copy samples ``[start, start + len(out))`` into ``out``.

        Samples that do not exist (not yet written, or already overwritten) are
        zero. Returns how many samples are valid.
        """
        n = out.shape[0]
        out[:] = 0.0
        written = self._written
        lo = max(start, written - self.capacity, 0)
        hi = min(start + n, written)
        if hi <= lo:
            return 0
        self._copy(lo, hi, out[lo - start:hi - start])
        # The producer may have wrapped over [lo, ...) while we copied.
        oldest = self._written - self.capacity
        if oldest > lo:
            bad = min(oldest, hi) - lo
            out[lo - start:lo - start + bad] = 0.0
            self.overwritten += bad
            lo += bad
        return max(0, hi - lo)

    def read(self, start: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.float32)
        self.read_into(start, out)
        return out

    def _copy(self, lo: int, hi: int, dst: np.ndarray) -> None:
        pos = lo % self.capacity
        n = hi - lo
        first = min(n, self.capacity - pos)
        dst[:first] = self._buf[pos:pos + first]
        if first < n:
            dst[first:] = self._buf[:n - first]


class BlockClock:
    """Maps absolute sample indices to ``time.monotonic()`` capture times.

    The producer calls ``mark(end_index, t)`` once per audio callback: the block
    ending at ``end_index`` was delivered at time ``t``. Delivery times carry
    scheduling jitter that is always >= 0, so the earliest (minimum) of
    ``t - end_index / sr`` over recent blocks is the best estimate of the clock
    offset. Sample ``i`` was then captured at ``i / sr + offset``. After an
    input overflow (samples lost) the producer calls ``mark(..., reset=True)``
    so anchors from before the gap are ignored.
    """

    def __init__(self, samplerate: float, slots: int = 256) -> None:
        self.samplerate = float(samplerate)
        self._idx = np.zeros(slots, dtype=np.int64)
        self._t = np.zeros(slots, dtype=np.float64)
        self._slots = slots
        self._count = 0  # marks ever made; published last
        self._epoch = 0  # index of the first mark after the latest reset

    def mark(self, end_index: int, t: float, reset: bool = False) -> None:
        k = self._count % self._slots
        self._idx[k] = end_index
        self._t[k] = t
        if reset:
            self._epoch = self._count
        self._count += 1

    @property
    def marks(self) -> int:
        return self._count

    def last(self) -> tuple[int, float] | None:
        c = self._count
        if c == 0:
            return None
        k = (c - 1) % self._slots
        return int(self._idx[k]), float(self._t[k])

    def offset(self, window: int = 100) -> float | None:
        """Clock offset (seconds) from the most recent ``window`` marks."""
        c = self._count
        first = max(c - window, self._epoch, c - self._slots + 1, 0)
        if c <= first:
            return None
        ks = np.arange(first, c) % self._slots
        return float(np.min(self._t[ks] - self._idx[ks] / self.samplerate))
