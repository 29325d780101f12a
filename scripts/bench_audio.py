#!/usr/bin/env python3
"""Audio-to-mouth latency: where the time goes between a sound and the mouth.

Loopback through a private PulseAudio null sink (no microphone needed):
PortAudio plays tone bursts into the sink at known DAC times, MicSource
records the sink's monitor, LipSync turns it into mouth shapes, and the bench
notes the wall-clock time at which each stage saw each burst onset.

    .venv/bin/python scripts/bench_audio.py [--bursts 12] [--lookahead 40]

Stages (medians over the bursts):
  emit -> timestamped   sound server + PortAudio input path: from the DAC time
                        of the burst onset to the capture timestamp MicSource
                        gives its first sample (includes the null sink's
                        playback side, so it is an upper bound for a real mic)
  timestamped -> read   the block reaching the reader (block size, poll)
  read -> shape         analysis window (half of 25 ms) + look-ahead +
                        compute, until LipSync has emitted the shape for the
                        onset's audio time
  onset -> jaw > 0.5    how far the opening lags (or leads: look-ahead lets the
                        jaw start opening before the sound) the onset, in audio time
plus CPU time per 10 ms hop. Needs pulseaudio, paplay and libasound2-plugins.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kf_desktop.audio.lipsync import LipSync  # noqa: E402
from kf_desktop.audio.pulse_server import PulseServer, refresh_portaudio  # noqa: E402


def burst(sr: int, seconds: float) -> np.ndarray:
    """A vowel-like burst: 140 Hz harmonics shaped like an /a/ (F1 ~ 750 Hz)."""
    t = np.arange(int(sr * seconds)) / sr
    x = np.zeros_like(t)
    for k in range(1, 30):
        f = 140.0 * k
        gain = 1.0 / k * (1.0 + 3.0 * np.exp(-((f - 750.0) / 200.0) ** 2)
                          + 1.5 * np.exp(-((f - 1100.0) / 250.0) ** 2))
        x += gain * np.sin(2 * np.pi * f * t)
    x *= 0.25 / np.max(np.abs(x))
    ramp = int(0.003 * sr)
    x[:ramp] *= np.linspace(0, 1, ramp)
    x[-ramp:] *= np.linspace(1, 0, ramp)
    return x.astype(np.float32)


class Player:
    """Output stream into the null sink; schedules bursts and records the
    monotonic time at which each burst's first sample reaches the DAC."""

    def __init__(self, sd, sink: str, sr: int = 48000) -> None:
        self.sr = sr
        self.pending: np.ndarray | None = None
        self.pos = 0
        self.onsets: list[float] = []  # estimated DAC time of each burst's first sample
        self.writes: list[float] = []  # when the callback wrote it
        self.lock = threading.Lock()
        saved = os.environ.get("PULSE_SINK")
        os.environ["PULSE_SINK"] = sink
        try:
            self.stream = sd.OutputStream(device="pulse", channels=1, samplerate=sr, blocksize=480,
                                          dtype="float32", latency="low", callback=self._cb)
        finally:
            if saved is None:
                os.environ.pop("PULSE_SINK", None)
            else:
                os.environ["PULSE_SINK"] = saved
        self.stream.start()

    def _cb(self, out, frames, time_info, status) -> None:
        now = time.monotonic()
        out[:] = 0.0
        with self.lock:
            if self.pending is None:
                return
            if self.pos == 0:
                # PortAudio's times are on its own clock: use only the
                # difference (how far ahead of "now" this buffer plays).
                ahead = max(0.0, time_info.outputBufferDacTime - time_info.currentTime)
                self.onsets.append(now + ahead)
                self.writes.append(now)
            n = min(frames, len(self.pending) - self.pos)
            out[:n, 0] = self.pending[self.pos:self.pos + n]
            self.pos += n
            if self.pos >= len(self.pending):
                self.pending, self.pos = None, 0

    def play(self, x: np.ndarray) -> None:
        with self.lock:
            self.pending, self.pos = x, 0

    def close(self) -> None:
        self.stream.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bursts", type=int, default=12)
    ap.add_argument("--lookahead", type=float, default=40.0, help="LipSync look-ahead, ms")
    ap.add_argument("--block-ms", type=float, default=10.0)
    ap.add_argument("--poll-ms", type=float, default=5.0, help="reader poll interval (engine loop)")
    args = ap.parse_args()

    srv = PulseServer({"kfbench": 48000}).start()
    os.environ.update(srv.env())
    refresh_portaudio()
    import sounddevice as sd

    from kf_desktop.audio.mic import MicSource

    mic = MicSource("pulse:kfbench.monitor", block_ms=args.block_ms).open()
    player = None
    try:
        if not mic.wait_ready(8.0):
            print("microphone delivered nothing:", mic.error)
            return 1
        player = Player(sd, "kfbench")
        ls = LipSync(lookahead_ms=args.lookahead)
        x_burst = burst(48000, 0.35)
        results = []
        cpu = 0.0
        hops = 0
        # Per burst: wall time when the reader first holds onset samples, and
        # when LipSync first has a shape for the onset's audio time.
        for i in range(args.bursts + 1):  # the first one warms up
            player.play(x_burst)
            n0 = len(player.onsets)
            t_read = t_shape = None
            onset_audio = None
            shapes = []
            t_end_loop = time.monotonic() + 0.9
            while time.monotonic() < t_end_loop:
                x, t_end = mic.read_new()
                now = time.monotonic()
                if len(x):
                    c0 = time.process_time()
                    new = ls.push(x, t_end)
                    cpu += time.process_time() - c0
                    hops += len(new)
                    shapes.extend(new)
                    if onset_audio is None:
                        # Onset: first sample above -30 dBFS in this chunk.
                        loud = np.flatnonzero(np.abs(x) > 0.03)
                        if loud.size:
                            onset_audio = t_end - (len(x) - loud[0]) / 16000
                            t_read = now
                    if onset_audio is not None and t_shape is None and new and new[-1][0] >= onset_audio:
                        t_shape = now
                time.sleep(args.poll_ms / 1000.0)
            if len(player.onsets) <= n0 or onset_audio is None or t_shape is None:
                print(f"burst {i}: not seen")
                continue
            t_emit = player.onsets[n0]
            t_write = player.writes[n0]
            jaw_t = [t for t, s in shapes if s.jaw_open > 0.5]
            lead = (jaw_t[0] - onset_audio) if jaw_t else float("nan")
            if i > 0:
                results.append((onset_audio - t_emit, t_read - onset_audio, t_shape - t_read, lead,
                                t_shape - t_emit, onset_audio - t_write))
        if not results:
            print("no burst was measured")
            return 1
        r = np.array(results) * 1000.0
        med = np.median(r, axis=0)
        spread = np.percentile(r, 90, axis=0) - np.percentile(r, 10, axis=0)
        half_win = ls.features.latency_s * 1000
        print(f"audio-to-mouth latency, {len(r)} bursts through a PulseAudio null sink "
              f"(device {mic.native_samplerate} Hz, block {args.block_ms:g} ms, "
              f"look-ahead {args.lookahead:g} ms, poll {args.poll_ms:g} ms)")
        print(f"  PortAudio-reported input latency ......... {mic.latency_s * 1000:6.1f} ms "
              f"(output {player.stream.latency * 1000:.1f} ms)")
        rows = [("emit -> capture timestamp (loopback)", 0), ("capture timestamp -> in reader", 1),
                ("in reader -> shape emitted", 2)]
        for name, k in rows:
            print(f"  {name:<40s} {med[k]:6.1f} ms  (p10-p90 spread {spread[k]:5.1f})")
        print(f"  (written by the output callback -> capture timestamp: {med[5]:.1f} ms; the null sink "
              "has no hardware, so the loopback adds ~nothing beyond the reported output latency)")
        print(f"      of which: half analysis window {half_win:.1f} ms + look-ahead "
              f"{ls.lookahead_s * 1000:.0f} ms = {half_win + ls.lookahead_s * 1000:.1f} ms")
        print(f"  total: sound emitted -> mouth shape ready  {med[4]:6.1f} ms")
        print(f"  jaw > 0.5 relative to the onset (audio time): {med[3]:+.1f} ms "
              f"(negative: look-ahead opens the jaw before the sound)")
        print(f"  +~{1000 / 60:.0f} ms average at a 30 fps frame clock (frame sampling), "
              "then render + output")
        print(f"  CPU: {cpu / max(hops, 1) * 1e6:.0f} us per 10 ms hop "
              f"({cpu / max(hops, 1) / 0.01 * 100:.1f} % of one core)")
        st = mic.stats()
        print(f"  mic: overflows {st['overflows']}, dropped {st['dropped']}, lost {st['lost']}")
    finally:
        if player is not None:
            player.close()
        mic.close()
        srv.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
