"""The measured A/V sync check (`kf-desktop avsync-check`).

Everything real except the person: a private PulseAudio server whose null
sink stands in for the microphone; tone bursts played into it (sox, or
numpy when sox is missing); the live session in mic-only mode (the mouth
opens on each burst) publishing to the virtual camera (a real
``pyvirtualcam.Camera`` on the in-memory backend) and to the delayed virtual
microphone (real ``pactl`` modules in that server, real PortAudio output).
The virtual camera's frames (a crop around the face, with their send times)
and the virtual microphone's audio (recorded from its source with a second
``MicSource``, with capture times) are kept, then:

- the mouth opening of every frame is measured with mediapipe on the frame;
- the mouth the avatar *should* show for the recorded audio is computed by
  running the same LipSync over it (so its own attack/look-ahead shaping is
  not counted as a sync error);
- for each burst, the offset is the time shift that best aligns the two
  (correlation, 1 ms steps; frames sample the curve at many phases, so the
  estimate is finer than a frame period).

Offset > 0: the sound comes after the lips. Jitter: p95 - p5 of the per-burst
offsets. Drift: the fitted change of the offset over the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

MIC_SINK = "kf_avsync_mic"
#: ATSC IS-191 tolerance at the device: sound at most 15 ms ahead of the
#: picture, at most 45 ms behind it.
GOAL_MS = (-15.0, 45.0)
GOAL_JITTER_MS = 20.0


@dataclass
class AVSyncResult:
    offset_ms: float
    jitter_ms: float
    drift_ms: float
    seconds: float
    bursts: int
    offsets_ms: list[float] = field(default_factory=list)
    burst_times: list[float] = field(default_factory=list)
    video_delay_ms: float | None = None
    video_jitter_ms: float | None = None
    audio_delay_ms: float | None = None
    underruns: int = 0
    resyncs: int = 0
    late_frames: int = 0
    frames: int = 0
    #: The audio path alone, per burst: achieved - intended delay of the
    #: virtual microphone (recorded audio vs the session's microphone).
    audio_path_ms: list[float | None] = field(default_factory=list)
    starved: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"A/V offset: {self.offset_ms:+.0f} ms (jitter {self.jitter_ms:.0f} ms, "
                f"drift {self.drift_ms:+.0f} ms over {self.seconds:.0f} s)")

    def within_goal(self) -> bool:
        return GOAL_MS[0] <= self.offset_ms <= GOAL_MS[1] and self.jitter_ms <= GOAL_JITTER_MS


def make_bursts(path: Path, seconds: float, period_s: float = 0.9, burst_s: float = 0.22,
                lead_s: float = 0.5, rate: int = 48000) -> list[float]:
    """A WAV of vowel-like tone bursts (a 140 Hz harmonic tone, 1 kHz-ish
    formant region) every ``period_s``; returns the burst start times (s
    from the file start). Uses sox when installed, numpy otherwise."""
    n = max(1, int((seconds - lead_s) // period_s))
    starts = [lead_s + i * period_s for i in range(n)]
    total = lead_s + n * period_s + 0.5
    sox = shutil.which("sox")
    if sox is not None:
        one = path.with_suffix(".one.wav")
        # One period: burst (140 Hz sawtooth through a 700 Hz band-pass, like /a/),
        # 10 ms fades, then silence.
        subprocess.run([sox, "-n", "-r", str(rate), "-c", "1", "-b", "16", str(one),
                        "synth", f"{burst_s}", "sawtooth", "140", "sinc", "300-1500",
                        "fade", "0.005", f"{burst_s}", "0.01", "gain", "-n", "-6",
                        "pad", "0", f"{period_s - burst_s}"], check=True, capture_output=True)
        subprocess.run([sox, "-n", "-r", str(rate), "-c", "1", "-b", "16",
                        str(path.with_suffix(".lead.wav")), "trim", "0", f"{lead_s}"],
                       check=True, capture_output=True)
        subprocess.run([sox, str(path.with_suffix(".lead.wav"))] + [str(one)] * n
                       + [str(path), "pad", "0", "0.5"], check=True, capture_output=True)
        return starts
    t = np.arange(int(burst_s * rate)) / rate
    saw = 2 * ((140 * t) % 1.0) - 1
    burst = np.convolve(saw, np.hanning(25) / np.hanning(25).sum(), "same")
    ramp = np.minimum(1, np.minimum(t / 0.005, (burst_s - t) / 0.01))
    burst = 0.5 * burst * ramp / np.max(np.abs(burst))
    x = np.zeros(int(total * rate), np.float32)
    for s in starts:
        a = int(s * rate)
        x[a:a + burst.shape[0]] = burst
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return starts


class _FrameLog:
    """on_frame hook of the memory camera: keeps a crop around the face and
    the send time of every frame (whole frames would be ~100 MB a minute)."""

    def __init__(self) -> None:
        self.box: tuple[int, int, int, int] | None = None
        self.crops: list[np.ndarray] = []
        self.times: list[float] = []
        self.lock = threading.Lock()
        self.recording = False
        self.first: np.ndarray | None = None

    def __call__(self, img: np.ndarray, t: float) -> None:
        if self.first is None and img.any():
            self.first = img.copy()
        if not self.recording or self.box is None:
            return
        x0, y0, x1, y1 = self.box
        with self.lock:
            self.crops.append(img[y0:y1, x0:x1].copy())
            self.times.append(t)


def _face_box(img: np.ndarray, analyzer) -> tuple[int, int, int, int]:
    # At the check's 640x360 the portrait's face is ~60 px, about the
    # detector's smallest (~12% of the long side), where it has been seen to
    # find a face in a frame and miss it in the mirrored frame: try both, at
    # 1x and 2x.
    h, w = img.shape[:2]
    lm = None
    for scale in (1.0, 2.0):
        big = img if scale == 1.0 else cv2.resize(img, None, fx=scale, fy=scale,
                                                  interpolation=cv2.INTER_LINEAR)
        for flip in (False, True):
            face = analyzer.analyze(np.ascontiguousarray(big[:, ::-1]) if flip else big)
            if face is not None:
                lm = face.landmarks[:, :2] / scale
                if flip:
                    lm = np.stack([w - lm[:, 0], lm[:, 1]], 1)
                break
        if lm is not None:
            break
    if lm is None:
        raise RuntimeError("no face found in the virtual camera's frames")
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    m = 0.35 * max(x1 - x0, y1 - y0)
    return (int(max(0, x0 - m)), int(max(0, y0 - m)), int(min(w, x1 + m)), int(min(h, y1 + m)))


def _mouth_series(crops: list[np.ndarray], analyzer) -> np.ndarray:
    out = np.full(len(crops), np.nan)
    for i, c in enumerate(crops):
        f = analyzer.analyze(np.ascontiguousarray(c))
        if f is not None:
            out[i] = f.mouth_open
    return out


def _onsets(env_t: np.ndarray, env: np.ndarray, min_gap_s: float) -> list[float]:
    """Times where the envelope first rises past half its high level."""
    hi = np.percentile(env, 99)
    thr = 0.5 * hi
    above = env > thr
    out: list[float] = []
    for i in np.flatnonzero(above[1:] & ~above[:-1]) + 1:
        t = env_t[i]
        if not out or t - out[-1] > min_gap_s:
            out.append(float(t))
    return out


def _best_shift(ts: np.ndarray, m: np.ndarray, jt: np.ndarray, jv: np.ndarray,
                shifts: np.ndarray) -> float | None:
    """Shift tau maximising corr(m(ts), J(ts + tau))."""
    ok = np.isfinite(m)
    if ok.sum() < 6 or np.std(m[ok]) < 1e-4:
        return None
    best, best_c = None, -2.0
    mm = m[ok] - m[ok].mean()
    for tau in shifts:
        j = np.interp(ts[ok] + tau, jt, jv)
        jd = j - j.mean()
        den = np.sqrt((jd ** 2).sum() * (mm ** 2).sum())
        if den <= 0:
            continue
        c = float((jd * mm).sum() / den)
        if c > best_c:
            best, best_c = float(tau), c
    return best if best_c > 0.5 else None


def analyse(frame_times: np.ndarray, mouth: np.ndarray, rec_t0: float, rec: np.ndarray,
            lookahead_ms: float, period_s: float, sr: int = 16000) -> tuple[list[float], list[float]]:
    """Per-burst (time, offset s) from the frames' mouth and the recorded audio."""
    from kf_desktop.audio.lipsync import mouth_track

    jt, shapes = mouth_track(rec, sr, lookahead_ms=lookahead_ms, t0=rec_t0)
    jv = np.array([s.jaw_open for s in shapes])
    hop = 160
    env = np.sqrt(np.convolve(rec ** 2, np.ones(hop) / hop, "same"))[::hop // 4]
    env_t = rec_t0 + np.arange(env.shape[0]) * (hop // 4) / sr
    bursts = _onsets(env_t, env, 0.5 * period_s)
    shifts = np.arange(-0.25, 0.35, 0.001)
    times, offsets = [], []
    for b in bursts:
        # Frames whose content can belong to this burst, whatever the offset.
        lo, hi = b - 0.35 - 0.25, b + 0.35 + 0.35
        sel = (frame_times >= lo) & (frame_times <= hi)
        win = (jt >= b - 0.35) & (jt <= b + 0.45)
        if sel.sum() < 8 or not win.any():
            continue
        # Restrict J to this burst (zero outside) so neighbours cannot match.
        jv_b = np.where(win, jv, 0.0)
        tau = _best_shift(frame_times[sel], mouth[sel], jt, jv_b, shifts)
        if tau is not None:
            times.append(b)
            offsets.append(tau)
    return times, offsets


def audio_path_errors(src: np.ndarray, src_t0: float, rec: np.ndarray, rec_t0: float,
                      delay_s: float, bursts: list[float], sr: int = 16000,
                      search_s: float = 0.15) -> list[float | None]:
    """Per burst (absolute times in ``bursts``, on the recording): achieved
    minus intended delay (s) of the recorded audio against the source (None
    where it cannot be measured)."""
    out = []
    for b in bursts:
        a = int(round((b - 0.05 - rec_t0) * sr))
        m = rec[max(0, a):max(0, a) + int(0.35 * sr)]
        s0 = b - 0.05 - delay_s - search_s
        i = int(round((s0 - src_t0) * sr))
        s = src[max(0, i):max(0, i) + m.shape[0] + int(2 * search_s * sr)]
        if i < 0 or m.shape[0] < int(0.3 * sr) or s.shape[0] < m.shape[0] + 10 \
                or np.std(m) < 1e-4:
            out.append(None)
            continue
        c = np.correlate(s, m, "valid")
        k = int(np.argmax(c))
        # m[0] (recorded at b - 0.05) is s[k] (source time s0 + k / sr).
        out.append((b - 0.05) - (s0 + k / sr) - delay_s)
    return out


def run_check(seconds: float = 20.0, *, trim_ms: float = 0.0, fps: float = 30.0,
              out_size: tuple[int, int] = (640, 360), period_s: float = 0.9,
              portrait: str | Path | None = None, video_delay_ms: float | None = None,
              log=print) -> AVSyncResult:
    """Run the whole check (needs pulseaudio, pactl, paplay, PortAudio with
    ALSA's pulse plugin, mediapipe). ``log`` gets progress lines."""
    from kf_desktop.audio.mic import MicSource
    from kf_desktop.audio.pulse_server import PulseServer, refresh_portaudio
    from kf_desktop.audio.virtual_mic import DEFAULT_AUDIO_LAG_MS, VirtualMicSink
    from kf_desktop.av_delay import HeldVirtualCameraSink
    from kf_desktop.cli import DEFAULT_PORTRAIT
    from kf_desktop.face import FaceAnalyzer
    from kf_desktop.generators import GuideOnlyGenerator
    from kf_desktop.idle_motion import IdleMotion
    from kf_desktop.session import Session, SessionConfig
    from kf_desktop.vcam_memory import MemoryVcam

    tmp = Path(tempfile.mkdtemp(prefix="kf-avsync-"))
    srv = PulseServer({MIC_SINK: 48000})
    saved_env = {k: os.environ.get(k) for k in srv.env()}
    frames = _FrameLog()
    vc = MemoryVcam(keep_last=1, name="kf_avsync_mem", on_frame=frames)
    session = rec = None
    try:
        srv.start()
        os.environ.update(srv.env())
        refresh_portaudio()
        wav = tmp / "bursts.wav"
        make_bursts(wav, seconds, period_s=period_s)
        vc.register()
        w, h = out_size
        vcam = HeldVirtualCameraSink(w, h, fps, backend=vc.name, delay_ms=video_delay_ms)
        vmic = VirtualMicSink(trim_ms)
        cfg = SessionConfig(portrait=str(portrait or DEFAULT_PORTRAIT), source_factory=None,
                            out_size=out_size, fps=fps,
                            generator_factory=GuideOnlyGenerator,
                            audio_factory=lambda: MicSource(f"pulse:{MIC_SINK}.monitor",
                                                            buffer_s=seconds + 60.0),
                            idle_motion=IdleMotion(seed=0), audio_lag_ms=DEFAULT_AUDIO_LAG_MS)
        session = Session(cfg, [vcam, vmic])
        vmic.attach(session, vcam)
        log("starting the session (mic-only, virtual camera + virtual microphone)...")
        session.start()
        if vmic.status != "live":
            raise RuntimeError(f"virtual microphone {vmic.status}: {vmic.detail} ({vmic.fix})")
        # The whole run stays in the recorder's ring (MicSource keeps buffer_s).
        rec = MicSource("pulse:kf_desktop_mic", buffer_s=seconds + 60.0).open()
        rec.wait_ready(5.0)
        # Warm-up: the video delay is measured, the player locks on.
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            st = vmic.stats()
            if vcam.target_delay_s() is not None and st.get("synced") and frames.first is not None:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError("the video delay / virtual microphone did not settle in 20 s")
        time.sleep(2.0)  # let the drift controller settle after the lock
        with FaceAnalyzer(static=True, max_faces=1) as fa:
            frames.box = _face_box(frames.first, fa)
        log(f"video delay held at {vcam.target_delay_s() * 1000:.0f} ms; "
            f"audio delay {vmic.delay_s() * 1000:.0f} ms; playing {seconds:.0f} s of tone bursts")
        frames.recording = True
        rec_i0 = rec.samples_written
        t_play = time.monotonic()
        p = srv.play(wav, MIC_SINK)
        p.wait(timeout=seconds + 30)
        time.sleep(1.0 + (vmic.delay_s() or 0.0))
        frames.recording = False
        rec_i1 = rec.samples_written
        rec_audio = rec.read_span(rec_i0, rec_i1 - rec_i0)
        rec_t0 = rec._time_of(rec_i0)  # noqa: SLF001 -- capture time of sample rec_i0
        snap = session.snapshot()
        delay_now = vmic.delay_s() or 0.0
        src = session.audio_source
        src_i1 = src.samples_written
        src_i0 = max(0, src_i1 - int((time.monotonic() - t_play + delay_now + 2.0) * 16000))
        src_audio = src.read_span(src_i0, src_i1 - src_i0)
        src_t0 = src._time_of(src_i0)  # noqa: SLF001
    finally:
        if rec is not None:
            rec.close()
        if session is not None:
            session.stop()
        vc.unregister()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"measuring the mouth in {len(frames.crops)} frames...")
    with FaceAnalyzer(static=False, max_faces=1) as fa:
        mouth = _mouth_series(frames.crops, fa)
    ft = np.array(frames.times)
    dump = os.environ.get("KF_AVSYNC_DUMP")
    if dump:  # raw material for looking at a failed run
        np.savez(dump, frame_times=ft, mouth=mouth, rec=rec_audio, rec_t0=rec_t0)
    times, offs = analyse(ft, mouth, rec_t0, rec_audio, lookahead_ms=20.0, period_s=period_s)
    if len(offs) < 3:
        raise RuntimeError(f"only {len(offs)} bursts could be measured")
    o = np.array(offs) * 1000.0
    tt = np.array(times)
    dur = float(tt[-1] - tt[0]) if len(tt) > 1 else 0.0
    slope = float(np.polyfit(tt - tt[0], o, 1)[0]) if len(tt) > 2 else 0.0
    vs = next((s for s in snap["sinks"].values() if "hold" in s), {})
    ms = next((s for s in snap["sinks"].values() if "trim_ms" in s), {})
    hold = vs.get("hold") or {}
    res = AVSyncResult(offset_ms=float(np.median(o)),
                       jitter_ms=float(np.percentile(o, 95) - np.percentile(o, 5)),
                       drift_ms=slope * dur, seconds=float(time.monotonic() - t_play) if dur else 0.0,
                       bursts=len(o), offsets_ms=[float(v) for v in o],
                       burst_times=[float(v - tt[0]) for v in tt],
                       video_delay_ms=hold.get("target_ms"), video_jitter_ms=hold.get("jitter_ms"),
                       audio_delay_ms=ms.get("delay_ms"), underruns=int(ms.get("underruns") or 0),
                       resyncs=int(ms.get("resyncs") or 0),
                       late_frames=int(hold.get("late") or 0), frames=len(frames.crops),
                       starved=int(ms.get("starved") or 0))
    res.audio_path_ms = [None if v is None else v * 1000.0 for v in audio_path_errors(
        src_audio, src_t0, rec_audio, rec_t0, delay_now, list(times))]
    res.seconds = dur
    return res


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="kf-desktop avsync-check",
                                description="measure the avatar's lips against the delayed "
                                            "virtual microphone (private PulseAudio server)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the tone-burst run")
    p.add_argument("--av-trim", type=float, default=0.0, help="virtual microphone trim (ms)")
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--video-delay", type=float, default=None,
                   help="fixed video delay in ms (default: measured)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every burst")
    args = p.parse_args(argv)
    res = run_check(args.seconds, trim_ms=args.av_trim, fps=args.fps,
                    video_delay_ms=args.video_delay,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
    if args.verbose:
        for t, o, a in zip(res.burst_times, res.offsets_ms, res.audio_path_ms):
            ap = f" (audio path {a:+5.1f} ms)" if a is not None else ""
            print(f"  burst at {t:6.2f} s: {o:+6.1f} ms{ap}", file=sys.stderr)
        a = np.array([v for v in res.audio_path_ms if v is not None])
        if a.size:
            print(f"audio path alone (virtual mic, achieved - intended delay): median "
                  f"{np.median(a):+.1f} ms, p95-p5 {np.percentile(a, 95) - np.percentile(a, 5):.1f}"
                  f" ms over {a.size} bursts", file=sys.stderr)
    print(f"video delay {res.video_delay_ms or 0:.0f} ms (send jitter "
          f"{res.video_jitter_ms or 0:.1f} ms, {res.late_frames} late), audio delay "
          f"{res.audio_delay_ms or 0:.0f} ms, {res.underruns} underruns, {res.starved} starved "
          f"blocks, {res.resyncs} resyncs, "
          f"{res.bursts} bursts",
          file=sys.stderr)
    print(res.line(), flush=True)
    return 0 if res.within_goal() else 1


if __name__ == "__main__":
    sys.exit(main())
