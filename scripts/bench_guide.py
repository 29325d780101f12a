"""Median CPU time of MotionGuide.render and PasteBack.compose.

    .venv/bin/python scripts/bench_guide.py [--iters 200] [--threads N] [--out 1280x720]

Runs on the default portrait: mediapipe finds its landmarks once, the head
crop is cut like the engine tests cut it (square, 1.8x the landmark box),
and the driving landmarks are the portrait's own moved by a few pixels, once
with the mouth closed as in the photo and once opened (mouth interior drawn).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.motion_guide import INNER_LIP_LOWER, MotionGuide  # noqa: E402
from engine.paste_back import CropBox, PasteBack  # noqa: E402


def _timeit(fn, iters: int, warmup: int = 20) -> tuple[float, float]:
    """Median wall and median CPU time of this thread, ms. On a shared box
    the CPU figure is what the code costs; wall adds waiting for a core."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return statistics.median(wall) * 1e3, statistics.median(cpu) * 1e3


def _landmarks(img: np.ndarray) -> np.ndarray:
    import mediapipe as mp

    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                         max_num_faces=1) as fm:
        res = fm.process(img)
    if not res.multi_face_landmarks:
        raise SystemExit("no face found in the default portrait")
    h, w = img.shape[:2]
    return np.array([[p.x * w, p.y * h] for p in res.multi_face_landmarks[0].landmark],
                    np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--size", type=int, default=256, help="crop size S")
    ap.add_argument("--out", default="1280x720", help="output frame WxH")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    img = cv2.cvtColor(cv2.imread(str(REPO / "resources/portraits/astronaut.png")),
                       cv2.COLOR_BGR2RGB)
    full = _landmarks(img)
    lo, hi = full.min(0), full.max(0)
    size = float(1.8 * (hi - lo).max())
    box = CropBox(float((lo[0] + hi[0] - size) / 2), float((lo[1] + hi[1] - size) / 2),
                  size)
    s = args.size
    k = s / box.size  # crop pixel c covers [x0 + c/k, x0 + (c+1)/k)
    m = np.array([[k, 0, (0.5 - box.x0) * k - 0.5], [0, k, (0.5 - box.y0) * k - 0.5]])
    crop = cv2.warpAffine(img, m, (s, s), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    lms = (full @ m[:, :2].T + m[:, 2]).astype(np.float32)

    guide = MotionGuide(s)
    guide.set_portrait(crop, lms)
    moved = lms + np.float32([4.0, -2.0])
    opened = moved.copy()
    opened[list(INNER_LIP_LOWER[1:-1])] += np.float32([0.0, 14.0])

    out_w, out_h = (int(v) for v in args.out.lower().split("x"))
    pb = PasteBack(img, box, s, (out_w, out_h))
    frame = guide.render(moved)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, S={s}, "
          f"out {out_w}x{out_h}, median of {args.iters}; wall ms (CPU ms of this thread)")
    for name, fn in (("MotionGuide.render (moved)", lambda: guide.render(moved)),
                     ("MotionGuide.render (mouth open)", lambda: guide.render(opened)),
                     ("PasteBack.compose", lambda: pb.compose(frame))):
        wall, cpu = _timeit(fn, args.iters)
        print(f"{name:34s} {wall:6.2f} ({cpu:5.2f})")

if __name__ == "__main__":
    main()
