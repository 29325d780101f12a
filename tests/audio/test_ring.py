"""Ring buffer, block clock and resampler: the pieces under MicSource."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from kf_desktop.audio.resample import Resampler, resample
from kf_desktop.audio.ring import BlockClock, RingBuffer


def test_ring_wraps_and_reads_by_absolute_index():
    r = RingBuffer(100)
    data = np.arange(250, dtype=np.float32)
    for i in range(0, 250, 30):
        r.write(data[i:i + 30])
    assert r.written == 250
    out = np.empty(50, np.float32)
    assert r.read_into(190, out) == 50
    assert np.array_equal(out, data[190:240])
    # Older than the ring (overwritten) and newer than written: zeros.
    assert r.read_into(100, out) == 0 and not out.any()
    out = np.empty(40, np.float32)
    assert r.read_into(230, out) == 20
    assert np.array_equal(out[:20], data[230:250]) and not out[20:].any()


def test_ring_write_longer_than_capacity_keeps_the_tail():
    r = RingBuffer(64)
    data = np.arange(1000, dtype=np.float32)
    r.write(data)
    assert r.written == 1000
    assert np.array_equal(r.read(936, 64), data[936:])


def test_ring_concurrent_producer_consumer_never_returns_torn_data():
    """A producer thread writes a ramp; whatever the consumer reads as valid
    must be exactly the ramp values for those indices."""
    r = RingBuffer(4096)
    stop = threading.Event()
    block = np.zeros(128, np.float32)

    def produce():
        n = 0
        while not stop.is_set() and n < 3_000_000:
            block[:] = np.arange(n, n + 128) % 1_000_000
            r.write(block)
            n += 128

    t = threading.Thread(target=produce)
    t.start()
    out = np.empty(1024, np.float32)
    bad = 0
    try:
        for _ in range(3000):
            w = r.written
            start = max(0, w - 2048)
            valid = r.read_into(start, out)
            if valid:
                # Valid samples are a contiguous run; check them against the ramp.
                nz = np.flatnonzero(out != 0) if start else np.arange(valid)
                if nz.size:
                    i0 = nz[0]
                    seg = out[i0:i0 + valid]
                    expect = (np.arange(start + i0, start + i0 + len(seg)) % 1_000_000).astype(np.float32)
                    bad += int(np.count_nonzero(seg != expect))
    finally:
        stop.set()
        t.join()
    assert bad == 0


def test_block_clock_removes_jitter_and_resets_after_overflow():
    c = BlockClock(48000)
    rng = np.random.default_rng(0)
    t0 = 100.0
    for k in range(1, 200):
        idx = k * 480
        c.mark(idx, t0 + idx / 48000 + 0.004 + rng.uniform(0, 0.003))  # 4 ms + jitter
    assert c.offset() == pytest.approx(t0 + 0.004, abs=2e-4)
    # 100 ms of samples lost: the mapping moves on at once.
    for k in range(200, 260):
        idx = k * 480
        c.mark(idx, t0 + 0.1 + idx / 48000 + 0.004, reset=(k == 200))
    assert c.offset() == pytest.approx(t0 + 0.104, abs=2e-4)


@pytest.mark.parametrize("sr_in", [8000, 22050, 32000, 44100, 48000, 96000])
def test_resampler_keeps_a_tone_and_removes_aliases(sr_in):
    t = np.arange(sr_in) / sr_in
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = resample(x, sr_in, 16000)
    assert len(y) == 16000
    ref = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000)
    core = slice(500, -500)
    # Amplitude and phase (delay compensated to a fraction of a sample).
    assert np.sqrt(np.mean((y[core] - ref[core]) ** 2)) < 0.03
    if sr_in > 16000:
        f_alias = min(0.45 * sr_in, 12000)  # above 8 kHz: must not fold back
        xa = (0.5 * np.sin(2 * np.pi * f_alias * t)).astype(np.float32)
        ya = resample(xa, sr_in, 16000)
        assert np.sqrt(np.mean(ya[core] ** 2)) < 0.5 * 10 ** (-50 / 20)


def test_resampler_streaming_equals_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, 44100).astype(np.float32)
    r = Resampler(44100, 16000)
    parts, i = [], 0
    while i < len(x):
        n = int(rng.integers(1, 1500))
        parts.append(r.process(x[i:i + n]))
        i += n
    y_stream = np.concatenate(parts)
    y_batch = Resampler(44100, 16000).process(x)
    assert len(y_stream) == len(y_batch)
    assert np.allclose(y_stream, y_batch, atol=1e-5)
    assert r.delay_s < 0.002
