"""Offline rendering: a portrait driven by a video file, every frame, to mp4.

Unlike the live session nothing is dropped: each output frame is computed
from the driver frame at the same time, so the result is reproducible.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kf_desktop.audio_track import AudioTrack
from kf_desktop.blas_threads import limit_blas_threads
from kf_desktop.cli_args import FPS_RANGE
from kf_desktop.compute import resolve_device
from kf_desktop.errors import UserError
from kf_desktop.face import FaceAnalyzer
from kf_desktop.generators import make_generator
from kf_desktop.pipeline import AvatarRenderer, DrivingSignal
from kf_desktop.portrait import load_portrait
from kf_desktop.progress import ProgressBar
from kf_desktop.signals import handle_termination
from kf_desktop.input_path import ffmpeg_url, regular_file
from kf_desktop.output_lock import OutputLock
from kf_desktop.output_path import FRAGMENTED, check_video_out, replace_into, video_format
from kf_desktop.sinks import RecorderSink, verify_mp4
from kf_desktop.temp_files import discard, forget, new_temp
from kf_desktop.sources import VideoFileSource


@dataclass(frozen=True)
class RenderRequest:
    portrait: Path
    driver: Path | None
    out: Path
    audio: Path | None = None
    seconds: float | None = None
    size: tuple[int, int] = (1280, 720)
    fps: float | None = None
    mode: str = "guide"
    device: str = "auto"
    crop_size: int = 256
    generator_options: dict | None = None
    overwrite: bool = False  # replace an existing --out (else asked on a terminal, or refused)


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    fps: float
    seconds: float
    size: tuple[int, int]
    label: str  # what produced the frames, e.g. "guide-only"
    wall_seconds: float


#: Beyond this head turn the webcam mouth is unreliable and audio takes over.
AUDIO_TAKEOVER_YAW = 35.0


def _warn(message: str, hint: str = "") -> None:
    print(f"warning: {message}" + (f"\n  fix: {hint}" if hint else ""), file=sys.stderr)


def render(req: RenderRequest, progress: bool = True) -> RenderResult:
    """Render to ``req.out``. SIGTERM and SIGHUP end it like Ctrl-C
    (KeyboardInterrupt): the temporary file is removed, nothing is left."""
    with handle_termination():
        return _render(req, progress)


def _render(req: RenderRequest, progress: bool) -> RenderResult:
    if req.driver is None and req.audio is None:
        raise UserError("nothing drives the portrait",
                        "pass --driver VIDEO, --audio SPEECH.wav, or both")
    # Every input and the output are checked before any work: a FIFO would
    # block a decoder for ever, an output naming an input would destroy it.
    regular_file(req.portrait, "portrait photo", "--portrait")
    if req.driver is not None:
        regular_file(req.driver, "driving video", "--driver")
    if req.audio is not None:
        regular_file(req.audio, "speech WAV", "--audio")
    agreed = check_video_out(req.out, [("portrait", req.portrait), ("driving video", req.driver),
                                       ("speech WAV", req.audio)], overwrite=req.overwrite)
    with OutputLock(req.out) as lock:
        return _render_locked(req, agreed, lock, progress)


def _render_locked(req: RenderRequest, agreed: bool, lock: OutputLock,
                   progress: bool) -> RenderResult:
    device = resolve_device(req.device)
    limit_blas_threads(1)  # the guide's small solves: 1 thread is fastest (blas_threads.py)
    track = AudioTrack(req.audio, max_seconds=req.seconds) if req.audio is not None else None
    source = VideoFileSource(req.driver, realtime=False) if req.driver else None
    if source is not None:
        source.open()  # fails fast on a missing or corrupt driver
    try:
        fps = _output_fps(req, source)
        with FaceAnalyzer(static=True, max_faces=2) as still:
            portrait = load_portrait(req.portrait, still, crop_size=req.crop_size)
        generator = make_generator(req.mode, device, **(req.generator_options or {}),
                                   on_fallback=_warn)
        recorder = RecorderSink(req.out, req.size[0], req.size[1], fps, overwrite=agreed,
                                lock=lock)
        recorder.start()  # fails fast on an unwritable output path
        try:
            result = _render_frames(req, source, track, portrait, generator, recorder, fps,
                                    device, progress)
        except BaseException:
            recorder.abort()
            raise
    finally:
        if source is not None:
            source.close()
    if track is not None:
        mux_audio(result.path, track.path, result.seconds, video_frames=result.frames)
    return result


def _output_fps(req: RenderRequest, source: VideoFileSource | None) -> float:
    """--fps, else the driver's rate kept inside the one range kf-desktop
    writes (the same range --fps accepts); and at least one frame."""
    if req.fps:
        fps = float(req.fps)
    elif source is not None:
        lo, hi = FPS_RANGE
        fps = min(max(float(source.fps), lo), hi)
        if fps != source.fps:
            _warn(f"the driver video runs at {source.fps:g} fps; the render is at {fps:g} fps, "
                  f"the nearest rate kf-desktop writes ({lo:g}-{hi:g})",
                  "pass --fps to choose another rate in that range")
    else:
        fps = 25.0
    if req.seconds is not None and round(req.seconds * fps) < 1:
        raise UserError(f"--seconds {req.seconds:g} is shorter than one frame at {fps:g} fps",
                        f"pass --seconds {1 / fps:.3g} or more")
    return fps


def mux_audio(video: Path, wav: Path, seconds: float, video_frames: int | None = None) -> None:
    """Put the speech into the rendered mp4 (AAC), when ffmpeg is available.

    The result is verified before it replaces the silent video (ffmpeg exits
    0 even when it could not write the end of the file, e.g. on a full disk);
    on failure the silent video stays as it was and a UserError says so."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("note: ffmpeg not found, the video has no sound track", file=sys.stderr)
        return
    fmt = video_format(video)
    with tempfile.TemporaryDirectory(prefix="kf-mux-") as work:
        # The sound track is the audio the app itself read and analysed, as
        # plain 16-bit PCM: a WAV that only the app's reader accepts (an odd
        # data chunk, a cut-off file) muxes the same as a clean one, and
        # ffmpeg never opens a user's file name.
        clean = Path(work) / "speech.wav"
        _write_pcm16(wav, clean, seconds)
        _mux(ffmpeg, video, clean, seconds, video_frames, fmt)


def _write_pcm16(wav: Path, dest: Path, seconds: float) -> None:
    from kf_desktop.audio.wav import load_wav

    x, rate = load_wav(wav, max_seconds=seconds + 0.1)
    pcm = (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(dest), "wb") as w:
        w.setnchannels(pcm.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _mux(ffmpeg: str, video: Path, wav: Path, seconds: float, video_frames: int | None,
         fmt: str) -> None:
    try:
        tmp = new_temp(video, "mux")
    except OSError as e:
        raise UserError(f"could not add the sound track: {e.strerror or e}; the silent video "
                        f"was kept at {video}", "check free disk space and render again") from e
    # Fragmented like the recording: no second pass over the file (+faststart
    # needs room for a second copy of the index) and playable up to the end.
    cmd = [ffmpeg, "-v", "error", "-nostdin", "-y", "-i", ffmpeg_url(video), "-i", ffmpeg_url(wav),
           "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "128k",
           "-t", f"{seconds:.3f}"]
    if fmt in FRAGMENTED:
        cmd += ["-movflags", "+frag_keyframe+empty_moov+default_base_moof"]
    cmd += ["-f", fmt, ffmpeg_url(tmp)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True)
        problem = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else (
            f"ffmpeg exited with code {res.returncode}" if res.returncode else None)
        if problem is None:
            problem = verify_mp4(tmp, video_frames=video_frames, need_audio=True)
        if problem:
            full = "No space left" in (res.stderr + problem)
            try:
                full = full or shutil.disk_usage(video.parent).free < 1 << 20
            except OSError:
                pass
            what = "disk full (no space left on device)" if full else problem[-300:]
            raise UserError(f"could not add the sound track: {what}; the silent video was "
                            f"kept at {video}",
                            "free some disk space and render again" if full else
                            "check that ffmpeg works (`ffmpeg -version`) and render again")
        replace_into(tmp, video)
        forget(tmp)
    finally:
        discard(tmp)


class _DriverFaces:
    """The driver's face at any output time: reads forward through the video
    (repeating or skipping frames to resample its fps) and tracks the face
    with mediapipe in tracking mode."""

    def __init__(self, source: VideoFileSource) -> None:
        self._source = source
        self._index = -1
        self._frame = None
        self._analyzer = FaceAnalyzer(static=False)

    def face_at(self, t: float):
        """(False, None) once the video has ended, else (True, face or None)."""
        want = int(t * self._source.fps + 1e-6)
        while self._index < want:
            self._frame = self._source.read()
            if self._frame is None:
                return False, None
            self._index += 1
        return True, self._analyzer.analyze(self._frame.image)

    def close(self) -> None:
        self._analyzer.close()


def _render_frames(req, source, track, portrait, generator, recorder, fps, device,
                   progress) -> RenderResult:
    t_start = time.monotonic()
    renderer = AvatarRenderer(portrait, out_size=req.size, device=device, generator=generator)
    renderer.configure_thread()
    total = None
    if req.seconds is not None:
        total = int(round(req.seconds * fps))
    elif source is not None and source.frame_count:
        total = int(source.frame_count / source.fps * fps)
    if track is not None and req.seconds is None:
        # The speech sets the length (a shorter driver ends the render first).
        audio_frames = int(track.duration * fps)
        total = audio_frames if total is None else min(total, audio_frames)
    bar = ProgressBar("rendering", total or 0, stream=sys.stderr) if progress else None
    written = 0
    faces_missing = 0
    driver = _DriverFaces(source) if source is not None else None
    try:
        j = 0
        while total is None or j < total:
            t = j / fps
            face = None
            if driver is not None:
                found, face = driver.face_at(t)
                if not found:
                    break  # the driver ended
                if face is None:
                    faces_missing += 1
                elif track is not None and abs(face.yaw) > AUDIO_TAKEOVER_YAW:
                    face = None  # turned away: the audio mouth and idle motion lead
            params = track.params(t) if track is not None else None
            for out in renderer.step(DrivingSignal(timestamp=t, face=face, params=params,
                                                   index=j)):
                recorder.submit(out.image, out.timestamp)
                written += 1
            j += 1
            if bar:
                bar.update(j, total)
        for out in renderer.flush():
            recorder.submit(out.image, out.timestamp)
            written += 1
    finally:
        if driver is not None:
            driver.close()
    if bar:
        bar.close()
    recorder.stop()
    if written == 0:
        raise UserError(f"no frames rendered from {req.driver}",
                        "check that the driver video plays and is long enough")
    if source is not None and source.damage is not None:
        reached, claim = source.damage
        _warn(f"the driver video {req.driver} is damaged: decoding stopped after {reached} of "
              f"{claim} frames ({reached / source.fps:.1f} s of {claim / source.fps:.1f} s), so "
              f"the render is {written / fps:.1f} s instead of "
              f"{(total or 0) / fps:.1f} s", "re-download or re-export the driver video")
    elif total and written < total and source is not None and req.seconds is not None:
        print(f"note: the driver video {req.driver} is {written / fps:.2f} s long, shorter than "
              f"the {req.seconds:g} s asked: the render is {written / fps:.2f} s",
              file=sys.stderr)
    if faces_missing > 0.5 * max(j, 1):
        print(f"warning: no face found in {faces_missing} of {j} driver frames; "
              "the portrait stayed neutral there", file=sys.stderr)
    label = generator.name
    if not generator.trained and generator.name != "guide-only":
        label += ": random weights, the output is not meaningful"
    for message in generator.pop_events():
        _warn(message, "re-download or re-train the weights; --mode guide skips the model")
    if generator.never_finite:
        # What the user got is the motion guide, whatever the model was meant to do.
        label = f"guide-only: {generator.name} produced no finite frame"
    return RenderResult(req.out, written, fps, written / fps, req.size, label,
                        time.monotonic() - t_start)
