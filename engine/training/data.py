"""Training data: the cache written by kf_desktop/dataset_build.py, read with
numpy/torch only (no cv2, no mediapipe), and the window sampler.

A training sample is one self-reenactment window of a clip, planned exactly
like a KnotForcingStream chunk (engine/stream.py ``plan_chunk``):

    reference  a frame of the same clip, far (>= ``min_ref_gap`` frames)
               from every frame of the window, or with probability
               ``p_still`` a "still": a frame used for both reference and
               targets under a synthetic rigid motion (see augment.py)
    context    the n_window = min(i, L) frames before the chunk
    chunk      c + k consecutive frames (the first k are the knot)

and the temporal RoPE positions come from the plan (relative to the window
start): the reference sits where running ahead puts it for this chunk, or,
with probability ``p_ref_jitter``, at any distance 1..s+c+k past the chunk's
last frame (the range running ahead produces). Only frames [0, n_train) of
every clip are ever sampled; the held-out tail is for evaluation.

Guides (the reference warped to each frame's landmarks with
engine.motion_guide.warp_guide, the code the app uses) are computed per
batch on the training device (see trainer.py), not here.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import StreamConfig
from engine.stream import plan_chunk

DATASET_FORMAT = "kf-desktop-dataset/1"


class DatasetError(ValueError):
    pass


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # (N, S, S, 3) uint8
    landmarks: np.ndarray  # (N, 478, 2) float32 crop px
    n_train: int
    fps: float
    sha256: str

    def __len__(self) -> int:
        return len(self.frames)


def _decode_jpeg(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        out.append(np.asarray(Image.open(io.BytesIO(blob[a:b].tobytes())).convert("RGB")))
    return np.stack(out)


def load_manifest(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    mf = root / "manifest.json"
    if not mf.is_file():
        raise DatasetError(f"no manifest.json in {root}: build the dataset first "
                           f"(`kf-desktop dataset --out {root}`, see README)")
    try:
        doc = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{mf} cannot be read ({e}): rebuild the dataset with `kf-desktop dataset`") from None
    if not isinstance(doc, dict) or doc.get("format") != DATASET_FORMAT:
        doc = doc if isinstance(doc, dict) else {}
        raise DatasetError(f"{mf}: unknown dataset format {doc.get('format')!r}")
    return doc


def load_clips(root: str | Path, names: list[str] | None = None) -> tuple[dict[str, Any], list[Clip]]:
    root = Path(root)
    doc = load_manifest(root)
    clips = []
    for e in doc["clips"]:
        if names and e["name"] not in names:
            continue
        # a manifest names files inside its own folder, nothing else
        path = (root / str(e.get("file", ""))).resolve()
        if not path.is_relative_to(root.resolve()) or not path.is_file():
            raise DatasetError(f"{root / 'manifest.json'}: clip file {e.get('file')!r} is not a file inside {root}")
        z = np.load(path, allow_pickle=False)
        frames = z["frames"] if "frames" in z.files else _decode_jpeg(z["jpeg"], z["jpeg_offsets"])
        n_train = int(z["n_train"])
        if n_train != e["n_train"]:
            raise DatasetError(f"{e['file']}: split {n_train} does not match the manifest's {e['n_train']}")
        clips.append(Clip(e["name"], frames, z["landmarks"].astype(np.float32), n_train, float(e["fps"]), e["sha256"]))
    if not clips:
        raise DatasetError(f"no clips in {root}")
    return doc, clips


@dataclass
class SampleSpec:
    """How windows are drawn (see module docstring)."""

    min_ref_gap: int = 25  # frames between the reference and the window (when the clip allows)
    p_still: float = 0.15  # synthetic-motion samples
    p_ref_jitter: float = 0.5  # reference distance drawn uniformly from 1..s+c+k
    p_knot: float = 0.85  # chunk gets a knot condition (the stream's first chunk has none)
    max_chunk_index: int = 8  # chunk indices drawn in [0, max]: early chunks and steady state
    p_steady: float = 0.6  # probability of a steady-state chunk (full window)
    # Mouth pairs (issue 17): this share of samples takes a closed-mouth
    # reference (openness < closed_thr) and a chunk with an open mouth
    # (openness > open_thr) where the clip has both; openness = inner-lip gap
    # / outer-eye-corner distance (median over the registry + shared clips: 0.06).
    p_open_pair: float = 0.0
    open_thr: float = 0.10
    closed_thr: float = 0.03


@dataclass
class Window:
    """Host-side description of one sample (indices into one clip)."""

    clip: int
    ref: int  # reference frame index
    frames: np.ndarray  # (n_ctx + F,) frame indices of the context then the chunk
    n_ctx: int
    t_pos: np.ndarray  # (1 + n_ctx + F,) float temporal positions: [ref, ctx..., chunk...]
    chunk_start: int  # absolute index i of the chunk in the stream's numbering
    knot: bool
    still: bool


def plan_positions(cfg: StreamConfig, chunk_index: int, rng: np.random.Generator | None, p_jitter: float,
                   ref_schedule_fixed: int | None = None) -> tuple[int, np.ndarray, int]:
    """(n_ctx, t_pos (1 + n_ctx + F,), chunk_start) for chunk ``chunk_index``,
    positions relative to the window start, as the stream computes them."""
    plan = plan_chunk(cfg, chunk_index)
    f = cfg.frames_per_chunk
    ref_rel = plan.ref_rel
    if ref_schedule_fixed is not None:
        ref_rel = ref_schedule_fixed - plan.window_start
    elif rng is not None and rng.random() < p_jitter:
        ref_rel = plan.chunk_rel + f - 1 + int(rng.integers(1, cfg.ref_step + f + 1))
    ctx = np.arange(plan.n_window, dtype=np.float32)
    chunk = plan.chunk_rel + np.arange(f, dtype=np.float32)
    return plan.n_window, np.concatenate([[float(ref_rel)], ctx, chunk]).astype(np.float32), plan.start


def mouth_openness(landmarks: np.ndarray) -> np.ndarray:
    """(N, 478, 2) -> (N,) inner-lip gap / outer-eye-corner distance."""
    from engine.motion_guide import mouth_gap
    from engine.mouth_region import eye_distance

    lm = torch.from_numpy(np.ascontiguousarray(landmarks, dtype=np.float32))
    return (mouth_gap(lm) / eye_distance(lm)).numpy()


def context_frame_mask(cfg: StreamConfig, chunk_start: int, n_ctx: int) -> torch.Tensor:
    """(1 + n_ctx + F)^2 bool block mask, True = may attend (the stream's plain
    path): reference -> itself; context frame -> reference + context frames of
    the same or an earlier chunk; chunk -> everything."""
    f = cfg.frames_per_chunk
    n = 1 + n_ctx + f
    m = torch.ones(n, n, dtype=torch.bool)
    m[0, 1:] = False
    if n_ctx:
        abs_idx = torch.arange(chunk_start - n_ctx, chunk_start)
        cid = torch.div(abs_idx, cfg.chunk, rounding_mode="floor")
        m[1:1 + n_ctx, 1:1 + n_ctx] = cid[None, :] <= cid[:, None]
        m[1:1 + n_ctx, 1 + n_ctx:] = False
    return m


class WindowSampler:
    """Draws Windows from the training part of the clips. Windows in one
    batch share n_ctx (so they stack); each batch draws its own chunk index."""

    def __init__(self, clips: list[Clip], cfg: StreamConfig, spec: SampleSpec | None = None, seed: int = 0,
                 split: str = "train") -> None:
        self.clips, self.cfg = clips, cfg
        self.spec = spec or SampleSpec()
        self.rng = np.random.default_rng(seed)
        self.split = split
        f = cfg.frames_per_chunk
        self.ranges = []
        for c in clips:
            lo, hi = (0, c.n_train) if split == "train" else (c.n_train, len(c))
            if hi - lo < f + 1:
                if split == "train" and c.n_train == 0:  # a held-out person: never trained on
                    self.ranges.append((0, 0))
                    continue
                raise DatasetError(f"clip {c.name}: {hi - lo} {split} frames, need at least {f + 1}")
            self.ranges.append((lo, hi))
        w = np.array([hi - lo for lo, hi in self.ranges], np.float64)
        self.weights = w / w.sum()
        self.openness = [mouth_openness(c.landmarks) for c in clips] if self.spec.p_open_pair > 0 else None

    def frame_indices(self) -> set[tuple[int, int]]:
        """Every (clip, frame) this sampler can touch (for the held-out test)."""
        return {(ci, i) for ci, (lo, hi) in enumerate(self.ranges) for i in range(lo, hi)}

    def _chunk_index(self) -> int:
        sp, cfg = self.spec, self.cfg
        steady = -(-cfg.window // cfg.chunk)  # first chunk with a full window
        if self.rng.random() < sp.p_steady:
            return int(self.rng.integers(steady, max(steady, sp.max_chunk_index) + 1))
        return int(self.rng.integers(0, steady + 1))

    def sample_batch(self, batch: int) -> list[Window]:
        f = self.cfg.frames_per_chunk
        j = self._chunk_index()
        out = []
        for _ in range(batch):
            ci = int(self.rng.choice(len(self.clips), p=self.weights))
            lo, hi = self.ranges[ci]
            jj = j
            n_ctx, t_pos, start = plan_positions(self.cfg, jj, self.rng, self.spec.p_ref_jitter)
            while n_ctx + f > hi - lo:  # short clip: fewer context frames
                jj -= 1
                n_ctx, t_pos, start = plan_positions(self.cfg, jj, self.rng, self.spec.p_ref_jitter)
            first = int(self.rng.integers(lo, hi - (n_ctx + f) + 1))
            pair = self.openness is not None and self.rng.random() < self.spec.p_open_pair
            if pair:
                op = self.openness[ci][lo:hi]
                opened = np.flatnonzero(op > self.spec.open_thr) + lo
                if len(opened) and (op < self.spec.closed_thr).any():
                    o = int(self.rng.choice(opened))  # this frame lands inside the chunk
                    first = int(np.clip(o - n_ctx - self.rng.integers(0, f), lo, hi - (n_ctx + f)))
                else:
                    pair = False
            frames = np.arange(first, first + n_ctx + f)
            still = (not pair) and self.rng.random() < self.spec.p_still
            ref = self._reference(lo, hi, first, first + n_ctx + f, closed=ci if pair else None)
            # the stream's first chunk has no knot; every later one has
            knot = f > self.cfg.chunk and jj > 0 and self.rng.random() < self.spec.p_knot
            out.append(Window(ci, ref, frames, n_ctx, t_pos, start, bool(knot), bool(still)))
        # one batch shares n_ctx: trim to the smallest
        m = min(w.n_ctx for w in out)
        for w in out:
            if w.n_ctx > m:
                d = w.n_ctx - m
                w.frames = w.frames[d:]
                w.t_pos = np.concatenate([w.t_pos[:1], w.t_pos[1 + d:]])
                w.n_ctx = m
        return out

    def _reference(self, lo: int, hi: int, a: int, b: int, closed: int | None = None) -> int:
        gap = self.spec.min_ref_gap
        cand = np.concatenate([np.arange(lo, max(lo, a - gap)), np.arange(min(hi, b + gap), hi)])
        if closed is not None and len(cand):
            shut = cand[self.openness[closed][cand] < self.spec.closed_thr]
            if len(shut) == 0:  # nothing closed far enough away: the closest-to-closed frames outside
                shut = cand[np.argsort(self.openness[closed][cand])[:8]]
            cand = shut
        if len(cand) == 0:  # short clip: anything outside the window, else anything
            cand = np.concatenate([np.arange(lo, a), np.arange(b, hi)])
        if len(cand) == 0:
            cand = np.arange(lo, hi)
        return int(self.rng.choice(cand))
