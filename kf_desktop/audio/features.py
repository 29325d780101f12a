"""Streaming speech features on a fixed 10 ms hop, looked up by video frame time.

Each feature frame describes the 25 ms of audio centred on its time ``t``:
loudness (dBFS and normalised by a running noise floor / speech level
tracker), three band energies, spectral centroid, zero-crossing rate, voicing
(normalised autocorrelation peak in the 70-400 Hz pitch range) and the first
two formants from LPC. The hop is independent of the video rate: a video
frame at time ``t`` takes the frame nearest ``t`` (``FeatureTracker.at``), and
lip-sync runs on the 10 ms hop so short events (a 60 ms /m/) are never missed
between two 33 ms video frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SR = 16000
EPS = 1e-10

# Band edges in Hz. low: F1 of close vowels and nasal murmur; mid: F1 of open
# vowels and F2 of back vowels; high: F2/F3 of front vowels and fricatives.
BANDS = {"low": (100.0, 900.0), "mid": (900.0, 2500.0), "high": (2500.0, 6000.0)}


@dataclass(frozen=True)
class AudioFeatures:
    """Features of the 25 ms window centred on ``t`` (time.monotonic() seconds
    of the source clock).

    rms_db: dBFS of the window. loudness: 0 (at the noise floor) .. 1 (at the
    running speech level). low_db/mid_db/high_db: band energies in dBFS.
    centroid_hz: spectral centroid 100-6000 Hz. zcr: zero crossings per
    sample. voicing: 0..1 autocorrelation peak. f1_hz, f2_hz: LPC formant
    estimates (0 when none was found). speech: voiced-or-loud frame flag.
    floor_db / level_db: the tracker state used for ``loudness``.
    """

    t: float
    rms_db: float
    loudness: float
    low_db: float
    mid_db: float
    high_db: float
    centroid_hz: float
    zcr: float
    voicing: float
    f1_hz: float
    f2_hz: float
    speech: bool
    floor_db: float
    level_db: float


class FrameAnalyzer:
    """Stateless spectral analysis of one window (precomputed window/FFT bins)."""

    def __init__(self, samplerate: int = SR, win: int = 400, lpc_order: int = 16) -> None:
        self.sr = samplerate
        self.win = win
        # Pitch lags 70-400 Hz.
        self._lag_lo = int(samplerate / 400.0)
        self._lag_hi = int(samplerate / 70.0)
        self.nfft = nfft = 1 << (win + self._lag_hi).bit_length()
        self.window = np.hanning(win).astype(np.float32)
        freqs = np.fft.rfftfreq(nfft, 1.0 / samplerate)
        self._band_masks = {k: (freqs >= lo) & (freqs < hi) for k, (lo, hi) in BANDS.items()}
        self._cent_mask = (freqs >= 100.0) & (freqs < 6000.0)
        self._cent_freqs = freqs[self._cent_mask]
        self.lpc_order = lpc_order
        self._wnorm = float(np.sum(self.window ** 2))
        lags = np.arange(self._lag_lo, self._lag_hi + 1)
        self._unbias = win / (win - lags)
        idx = np.arange(lpc_order)
        self._toeplitz = np.abs(idx[:, None] - idx[None, :])
        self._env_nfft = 512
        self._env_hz = samplerate / self._env_nfft
        self._env_lo = int(180.0 / self._env_hz)
        self._env_hi = int(3500.0 / self._env_hz) + 2

    def analyze(self, x: np.ndarray) -> dict:
        """x: (win,) float32 samples in [-1, 1]. Returns raw (unnormalised) features."""
        x = np.asarray(x, dtype=np.float32)
        x = x - x.mean()
        ms = float(np.dot(x, x)) / len(x)
        rms_db = 10.0 * np.log10(ms + EPS)
        # nfft >= win + the longest pitch lag: autocorrelations taken from
        # these spectra have no circular wrap-around.
        spec = np.fft.rfft(x * self.window, self.nfft)
        power = spec.real ** 2 + spec.imag ** 2
        pn = power * (2.0 / (self.nfft * self._wnorm))  # Parseval: band mean-square of x
        bands = {k: 10.0 * np.log10(float(np.sum(pn[m])) + EPS) for k, m in self._band_masks.items()}
        pc = power[self._cent_mask]
        centroid = float(np.dot(pc, self._cent_freqs) / (np.sum(pc) + EPS))
        signs = np.signbit(x)
        zcr = float(np.count_nonzero(signs[1:] != signs[:-1])) / (len(x) - 1)
        voicing = 0.0
        ac = None
        if ms > 1e-9:
            ac = np.fft.irfft(power, self.nfft)[: self.lpc_order + 2]  # windowed, for LPC
            # Voicing from the unwindowed frame's autocorrelation, normalised
            # for the shrinking overlap at long lags (the windowed one
            # under-reads frames whose level or pitch changes).
            full = np.fft.rfft(x, self.nfft)
            acu = np.fft.irfft(full.real ** 2 + full.imag ** 2, self.nfft)
            r = acu[self._lag_lo:self._lag_hi + 1] / acu[0] * self._unbias
            voicing = float(np.clip(r.max(), 0.0, 1.0))
        f1 = f2 = 0.0
        if ac is not None and voicing > 0.3 and rms_db > -75.0:  # meaningless in noise/silence
            f1, f2 = self._formants(ac)
        return {"rms_db": rms_db, "low_db": bands["low"], "mid_db": bands["mid"],
                "high_db": bands["high"], "centroid_hz": centroid, "zcr": zcr,
                "voicing": voicing, "f1_hz": f1, "f2_hz": f2}

    def _formants(self, ac: np.ndarray) -> tuple[float, float]:
        """F1, F2: the first two peaks of the LPC envelope (autocorrelation
        method). ``ac`` is the windowed frame's autocorrelation; pre-emphasis
        (1 - 0.97 z^-1) is applied to it directly:
        r_p(k) = (1 + a^2) r(k) - a (r(k - 1) + r(k + 1))."""
        p = self.lpc_order
        a_pre = 0.97
        r0 = ac[: p + 2].astype(np.float64)
        prev = np.concatenate([[r0[1]], r0[:p]])  # r(k-1), with r(-1) = r(1)
        r = (1 + a_pre * a_pre) * r0[: p + 1] - a_pre * (prev + r0[1:p + 2])
        if r[0] <= EPS:
            return 0.0, 0.0
        r[0] *= 1.0 + 1e-4  # white-noise correction keeps the system well conditioned
        try:
            a = np.linalg.solve(r[self._toeplitz], -r[1:p + 1])
        except np.linalg.LinAlgError:
            return 0.0, 0.0
        coeffs = np.zeros(self._env_nfft)
        coeffs[0] = 1.0
        coeffs[1:p + 1] = a
        spec = np.fft.rfft(coeffs)
        env = -np.log(spec.real ** 2 + spec.imag ** 2 + EPS)  # log LPC envelope
        e = env[self._env_lo:self._env_hi]
        pk = np.flatnonzero((e[1:-1] > e[:-2]) & (e[1:-1] >= e[2:])) + 1
        if pk.size == 0:
            return 0.0, 0.0
        # Parabolic interpolation of each peak between bins.
        num = e[pk - 1] - e[pk + 1]
        den = e[pk - 1] - 2 * e[pk] + e[pk + 1]
        safe = np.where(np.abs(den) > EPS, den, 1.0)
        frac = np.where(np.abs(den) > EPS, 0.5 * num / safe, 0.0)
        freqs = (pk + self._env_lo + frac) * self._env_hz
        f1 = float(freqs[0]) if freqs[0] < 1200.0 else 0.0
        rest = freqs[freqs > f1 + 150.0] if f1 > 0 else freqs[freqs > 600.0]
        f2 = float(rest[0]) if rest.size > 0 else 0.0
        return f1, f2


class LevelTracker:
    """Running noise floor and speech level in dB.

    The floor follows drops quickly (0.3 s) and rises slowly (~8 s), so it sits
    at the quietest recent frames (pauses between words). The speech level
    follows rises quickly (50 ms; at once for the first 0.3 s of speech) and, on frames that are clearly above the
    floor, falls slowly, so it tracks the peaks of recent speech without
    sinking during pauses. Microphones differ by 30 dB and more, so while
    little speech has been heard the level adapts downward quickly (0.4 s,
    lengthening to 4 s after ~5 s of speech). It stays ``min_range_db`` above
    the floor so that noise alone never normalises itself into "speech".
    """

    def __init__(self, hop_s: float = 0.01, init_floor_db: float = -70.0,
                 init_level_db: float = -25.0, min_range_db: float = 15.0) -> None:
        self.hop_s = hop_s
        self.floor = init_floor_db
        self.level = init_level_db
        self.min_range = min_range_db
        self.speech_s = 0.0  # how much speech the level has seen
        self._floor_down = 1.0 - np.exp(-hop_s / 0.3)
        self._floor_up = 1.0 - np.exp(-hop_s / 8.0)
        self._level_up = 1.0 - np.exp(-hop_s / 0.05)

    def update(self, db: float) -> float:
        """Feed one frame's dB; return its loudness 0..1."""
        # A digital-silence frame (-100 dB) must not drag the floor to -100 so
        # that the next breath counts as speech: clamp what the floor sees.
        d = max(db, -90.0)
        self.floor += (d - self.floor) * (self._floor_down if d < self.floor else self._floor_up)
        speechy = d > self.floor + 15.0
        if speechy:
            self.speech_s += self.hop_s
        if d > self.level:
            # Until ~0.3 s of speech has been heard, jump straight to a louder
            # frame: the first syllable sets the scale (cold start).
            a = 1.0 if self.speech_s < 0.3 else self._level_up
            self.level += (d - self.level) * a
        elif speechy:  # speech-like frame quieter than the level
            tau = 0.4 + 3.6 * min(1.0, self.speech_s / 5.0)
            self.level += (d - self.level) * (1.0 - np.exp(-self.hop_s / tau))
        self.level = max(self.level, self.floor + self.min_range)
        # 6 dB above the floor is still "quiet": room noise plus breath.
        lo = self.floor + 6.0
        return float(np.clip((db - lo) / (self.level - lo), 0.0, 1.0))


class FeatureTracker:
    """Streaming features on a fixed hop from chunks of 16 kHz audio.

    ``push(samples, t_end)`` appends samples whose last sample is at
    ``t_end - 1/sr`` (i.e. ``t_end`` is the time just after the chunk) and
    returns the feature frames that became complete. Frame ``k`` is centred on
    sample ``k * hop``; it needs audio up to half a window after its centre, so
    the newest frame lags the newest sample by ``win / 2`` (12.5 ms).
    """

    def __init__(self, samplerate: int = SR, hop_ms: float = 10.0, win_ms: float = 25.0,
                 history_s: float = 2.0) -> None:
        self.sr = samplerate
        self.hop = int(round(samplerate * hop_ms / 1000.0))
        self.win = int(round(samplerate * win_ms / 1000.0))
        self.hop_s = self.hop / samplerate
        self.analyzer = FrameAnalyzer(samplerate, self.win)
        self.levels = LevelTracker(self.hop_s)
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = -(self.win // 2)  # absolute index of _buf[0]; pad so frame 0 centres on sample 0
        self._buf = np.zeros(self.win // 2, dtype=np.float32)
        self._n = 0  # samples pushed
        self._t0: float | None = None  # time of sample 0
        self._next = 0  # next frame index
        self._history: list[AudioFeatures] = []
        self._history_len = max(1, int(history_s / self.hop_s))

    @property
    def latency_s(self) -> float:
        """How far the newest complete frame's centre lags the newest sample."""
        return (self.win - self.win // 2) / self.sr

    def push(self, samples: np.ndarray, t_end: float) -> list[AudioFeatures]:
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = samples.shape[0]
        if n == 0:
            return []
        if self._t0 is None:
            self._t0 = t_end - n / self.sr
        else:
            expect = self._t0 + (self._n + n) / self.sr
            if abs(t_end - expect) > 0.1:
                # A jump (the source skipped audio): take the caller's clock.
                self._t0 = t_end - (self._n + n) / self.sr
            else:
                # Follow the caller's clock slowly (device clock drift, jitter).
                self._t0 += 0.01 * (t_end - expect)
        self._buf = np.concatenate([self._buf, samples])
        self._n += n
        out = []
        half = self.win // 2
        while True:
            centre = self._next * self.hop
            lo = centre - half
            hi = lo + self.win
            if hi > self._buf_start + self._buf.shape[0]:
                break
            x = self._buf[lo - self._buf_start:hi - self._buf_start]
            raw = self.analyzer.analyze(x)
            loud = self.levels.update(raw["rms_db"])
            speech = loud > 0.15 or (raw["voicing"] > 0.5 and loud > 0.05)
            f = AudioFeatures(t=self._t0 + centre / self.sr, loudness=loud, speech=speech,
                              floor_db=self.levels.floor, level_db=self.levels.level, **raw)
            out.append(f)
            self._next += 1
        # Drop samples no future frame needs.
        keep_from = self._next * self.hop - half
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        self._history.extend(out)
        if len(self._history) > self._history_len:
            del self._history[: len(self._history) - self._history_len]
        return out

    def at(self, t: float) -> AudioFeatures | None:
        """The frame nearest ``t`` among the recent history (None if empty)."""
        if not self._history:
            return None
        t0 = self._history[0].t
        k = int(round((t - t0) / self.hop_s))
        k = min(max(k, 0), len(self._history) - 1)
        return self._history[k]

    def latest(self) -> AudioFeatures | None:
        return self._history[-1] if self._history else None


def features_of(samples: np.ndarray, samplerate: int = SR, hop_ms: float = 10.0,
                t0: float = 0.0) -> list[AudioFeatures]:
    """Offline helper: features of a whole signal (frame k centred at t0 + k*hop)."""
    tr = FeatureTracker(samplerate, hop_ms)
    samples = np.asarray(samples, dtype=np.float32)
    # Flush: pad half a window of zeros so the last frames complete.
    padded = np.concatenate([samples, np.zeros(tr.win, dtype=np.float32)])
    frames = tr.push(padded, t0 + padded.shape[0] / samplerate)
    n_frames = (samples.shape[0] + tr.hop - 1) // tr.hop
    return frames[:n_frames]
