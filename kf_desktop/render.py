"""Offline rendering: a portrait driven by a video file, every frame, to mp4.

Unlike the live session nothing is dropped: each output frame is computed
from the driver frame at the same time, so the result is reproducible.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kf_desktop.compute import resolve_device
from kf_desktop.errors import UserError
from kf_desktop.face import FaceAnalyzer
from kf_desktop.generators import make_generator
from kf_desktop.pipeline import AvatarRenderer, DrivingSignal
from kf_desktop.portrait import load_portrait
from kf_desktop.progress import ProgressBar
from kf_desktop.sinks import RecorderSink
from kf_desktop.sources import VideoFileSource


@dataclass(frozen=True)
class RenderRequest:
    portrait: Path
    driver: Path | None
    out: Path
    seconds: float | None = None
    size: tuple[int, int] = (1280, 720)
    fps: float | None = None
    mode: str = "guide"
    device: str = "auto"
    crop_size: int = 256


@dataclass(frozen=True)
class RenderResult:
    path: Path
    frames: int
    fps: float
    seconds: float
    size: tuple[int, int]
    label: str  # what produced the frames, e.g. "guide-only"
    wall_seconds: float


def render(req: RenderRequest, progress: bool = True) -> RenderResult:
    if req.driver is None:
        raise UserError("nothing drives the portrait", "pass --driver VIDEO")
    device = resolve_device(req.device)
    source = VideoFileSource(req.driver, realtime=False)
    source.open()  # fails fast on a missing or corrupt driver
    try:
        fps = float(req.fps or source.fps)
        with FaceAnalyzer(static=True, max_faces=2) as still:
            portrait = load_portrait(req.portrait, still, crop_size=req.crop_size)
        generator = make_generator(req.mode, device)
        recorder = RecorderSink(req.out, req.size[0], req.size[1], fps)
        recorder.start()  # fails fast on an unwritable output path
        try:
            return _render_frames(req, source, portrait, generator, recorder, fps, device,
                                  progress)
        except BaseException:
            recorder.abort()
            raise
    finally:
        source.close()


def _render_frames(req, source, portrait, generator, recorder, fps, device,
                   progress) -> RenderResult:
    t_start = time.monotonic()
    renderer = AvatarRenderer(portrait, out_size=req.size, device=device, generator=generator)
    src_fps = source.fps
    total = None
    if req.seconds is not None:
        total = int(round(req.seconds * fps))
    elif source.frame_count:
        total = int(source.frame_count / src_fps * fps)
    bar = ProgressBar("rendering", total or 0, stream=sys.stderr) if progress else None
    written = 0
    src_index = -1
    frame = None
    faces_missing = 0
    with FaceAnalyzer(static=False) as analyzer:
        j = 0
        while total is None or j < total:
            # The driver frame shown at output time j / fps (resamples fps).
            want = int(j / fps * src_fps + 1e-6)
            face_frame = None
            while src_index < want:
                frame = source.read()
                if frame is None:
                    break
                src_index += 1
            if frame is None or src_index < want:
                break
            face = analyzer.analyze(frame.image)
            if face is None:
                faces_missing += 1
            face_frame = DrivingSignal(timestamp=j / fps, face=face, index=j)
            for out in renderer.step(face_frame):
                recorder.submit(out.image, out.timestamp)
                written += 1
            j += 1
            if bar:
                bar.update(j, total)
        for out in renderer.flush():
            recorder.submit(out.image, out.timestamp)
            written += 1
    if bar:
        bar.close()
    recorder.stop()
    if written == 0:
        raise UserError(f"no frames rendered from {req.driver}",
                        "check that the driver video plays and is long enough")
    if faces_missing > 0.5 * max(j, 1):
        print(f"warning: no face found in {faces_missing} of {j} driver frames; "
              "the portrait stayed neutral there", file=sys.stderr)
    label = generator.name + ("" if generator.trained or generator.name == "guide-only"
                              else " (UNTRAINED weights: output is not meaningful)")
    return RenderResult(req.out, written, fps, written / fps, req.size, label,
                        time.monotonic() - t_start)
