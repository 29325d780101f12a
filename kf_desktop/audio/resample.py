"""Streaming rational (polyphase) resampler in numpy.

scipy is not a dependency, so this is a small windowed-sinc polyphase filter:
upsample by ``up``, low-pass, downsample by ``down`` (``sr_out / sr_in =
up / down`` in lowest terms), evaluated only at the output samples. The filter
has 2 * ``zero_crossings`` taps per output at the lower of the two rates and a
Kaiser window, which gives ~70 dB stop band and a pass band to 0.9 x the lower
Nyquist frequency -- more than lip-sync features need (they stop at 6 kHz).
"""

from __future__ import annotations

from math import ceil, gcd

import numpy as np


class Resampler:
    """Chunk-by-chunk resampler with constant group delay ``delay_s``.

    Output sample ``m`` represents input time ``m / sr_out - delay_s`` (input
    time 0 = first input sample), so a caller that timestamps input samples can
    timestamp the output exactly.
    """

    def __init__(self, sr_in: int, sr_out: int, zero_crossings: int = 16,
                 beta: float = 7.0, rolloff: float = 0.9) -> None:
        sr_in, sr_out = int(round(sr_in)), int(round(sr_out))
        if sr_in <= 0 or sr_out <= 0:
            raise ValueError("sample rates must be positive")
        g = gcd(sr_in, sr_out)
        self.sr_in, self.sr_out = sr_in, sr_out
        self.up, self.down = sr_out // g, sr_in // g
        self.passthrough = self.up == self.down
        self._m = 0  # next output index
        self._n_in = 0  # input samples consumed so far
        if self.passthrough:
            self.delay_s = 0.0
            self.delay_samples = 0
            return
        up, down = self.up, self.down
        # Prototype length at the upsampled rate: about 2 * zero_crossings taps
        # at the lower rate, adjusted so the filter's centre falls exactly on
        # an output sample -- the group delay is a whole number D of output
        # samples, which callers can remove without a fractional error.
        want = int(ceil(2 * zero_crossings * max(1.0, down / up))) * up
        d_out = int(ceil((want - 1) / (2 * down)))
        length = 2 * d_out * down + 1
        taps = int(ceil(length / up))
        cutoff = 0.5 * rolloff * min(1.0, up / down)  # cycles per input sample
        k = (np.arange(length) - (length - 1) / 2.0) / up  # in input samples
        h = 2 * cutoff * np.sinc(2 * cutoff * k) * np.kaiser(length, beta)
        h = np.concatenate([h, np.zeros(taps * up - length)])
        # Polyphase matrix: branch p uses h[p + t * up], t = 0..taps-1.
        hp = h.reshape(taps, up).T.copy()  # (up, taps)
        # Unity DC gain: each branch sums to 1 (they are equal up to ripple).
        hp /= hp.sum(axis=1, keepdims=True)
        self._hp = hp.astype(np.float32)
        self._taps = taps
        self._hist = np.zeros(taps - 1, dtype=np.float32)
        self.delay_samples = d_out  # in output samples
        self.delay_s = d_out / sr_out
        self._tap_offsets = np.arange(taps)  # t = 0..taps-1

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feed input samples (1-D); return every output sample now computable."""
        x = np.asarray(x, dtype=np.float32)
        if self.passthrough:
            self._n_in += x.shape[0]
            self._m += x.shape[0]
            return x.copy()
        up, down, taps = self.up, self.down, self._taps
        buf = np.concatenate([self._hist, x])  # buf[i] = input (n_in - taps + 1 + i)
        base = self._n_in - (taps - 1)
        last = self._n_in + x.shape[0] - 1  # newest input index available
        m_max = ((last + 1) * up - 1) // down  # largest m whose branch input q <= last
        if m_max < self._m:
            self._n_in += x.shape[0]
            self._hist = buf[-(taps - 1):] if taps > 1 else buf[:0]
            return np.zeros(0, dtype=np.float32)
        ms = np.arange(self._m, m_max + 1, dtype=np.int64)
        j = ms * down  # upsampled-domain position of each output
        q = j // up  # newest input sample each output touches
        p = j - q * up  # polyphase branch
        rel = (q - base)[:, None] - self._tap_offsets[None, :]  # (M, taps) into buf
        y = np.einsum("mt,mt->m", self._hp[p], buf[rel])
        self._m = m_max + 1
        self._n_in += x.shape[0]
        self._hist = buf[-(taps - 1):].copy()
        return y.astype(np.float32, copy=False)

    def reset(self) -> None:
        self._m = 0
        self._n_in = 0
        if not self.passthrough:
            self._hist[:] = 0.0


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Whole-signal resampling with the group delay removed (output sample m is
    input time m / sr_out)."""
    x = np.asarray(x, dtype=np.float32)
    r = Resampler(sr_in, sr_out)
    if r.passthrough:
        return x.copy()
    shift = r.delay_samples
    pad = np.zeros(int(ceil(r.delay_s * sr_in)) + r._taps + 1, dtype=np.float32)
    y = np.concatenate([r.process(x), r.process(pad)])
    n_out = int(round(x.shape[0] * sr_out / sr_in))
    return y[shift:shift + n_out]
