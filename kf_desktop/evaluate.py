"""``kf-desktop eval``: quality of the trained generator (DESIGN section 6).

Two cases, each run for the generator, guide-only, and the two ablations
(no knot: k = 0; no running ahead: fixed reference position), see
engine/evaluation/variants.py:

- self-reenactment on the HELD-OUT tail of every dataset clip (frames the
  trainer never samples): reference = the first held-out frame, driving =
  the following held-out frames' landmarks. PSNR / SSIM against the real
  frames, identity distance, landmark error, chunk-seam ratio.
- cross identity: portraits the model never saw (resources/portraits/*.png)
  driven by the held-out clips' motion (landmark displacements from the
  first held-out frame, scaled by the inter-ocular ratio): identity distance,
  landmark error, seam ratio, and drift over a long run (default 10 min at the
  clip's fps; the held-out motion is played back and forth).

Identity: dlib's 128-D face embedding (PyPI ``dlib-bin`` +
``face-recognition-models``, the ``[eval]`` extra); Euclidean distance to the
reference portrait (dlib's same-person threshold is 0.6). The head crop is
the face box (no detector), the 5-point shape predictor aligns it. Without
dlib the identity columns are "n/a". Landmark error: mediapipe on the output
frames (upscaled to 256 px), mean distance to the driving landmarks over
the inter-ocular distance; frames where no face is found are skipped, and
the share of such frames is reported.

Mouth (issue 17): clips built with ``--holdout-people`` (n_train = 0) are
a second self-reenactment group, people the model never saw (``people``),
reported beside the held-out tails. Two controls join guide-only there
(engine/evaluation/mouth_controls.py): ``ceiling`` (the real inner mouth
pasted into the guide) and ``interior`` (a fitted non-learned teeth band and
cavity). Mouth PSNR is also given per openness bin (closed / slight / open /
wide) and on open-mouth frames (``psnr_open``). A mouth-region model
(engine/mouth_region.py) runs on its region and is pasted back, as in the app.

Writes ``results.md`` (the tables), ``results.json``, ``contact_sheet.png``
and ``mouth_sheet.png`` (4x mouth close-ups of held-out people: real /
guide-only / generator).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from engine.evaluation.metrics import drift, landmark_error, psnr, region_boxes, region_psnr_ssim, seam_ratio, ssim
from engine.training.augment import LEFT_EYE, MOUTH, RIGHT_EYE
from engine.evaluation.mouth_controls import BINS, OPEN, bin_of, ceiling, fit_interior, with_interior
from engine.evaluation.variants import VARIANTS, run_variant
from engine.mouth_region import RegionSpec
from engine.training.data import mouth_openness
from engine.motion_guide import warp_guide
from engine.training.data import load_clips
from engine.weights import load_model
from kf_desktop.portrait import CROP_FACTOR, CROP_UP_SHIFT

REPO = Path(__file__).resolve().parents[1]
DETECT_SIZE = 256


def _print(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# identity: dlib embedding
# --------------------------------------------------------------------------
class DlibIdentity:
    """dlib_face_recognition_resnet_model_v1 on a head crop (whole crop = face box)."""

    def __init__(self) -> None:
        import dlib

        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("face-recognition-models is not installed")
        models = Path(list(spec.submodule_search_locations)[0]) / "models"
        self.dlib = dlib
        self.sp = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.net = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))

    def embed(self, img: np.ndarray) -> np.ndarray:
        """(S, S, 3) uint8 RGB head crop -> (128,) float."""
        if img.shape[0] < 150:
            img = cv2.resize(img, (150, 150), interpolation=cv2.INTER_CUBIC)
        img = np.ascontiguousarray(img)
        h, w = img.shape[:2]
        # Where the face sits in a head crop (kf_desktop.portrait's geometry),
        # as dlib's detector would box it: 0.2 face above the mesh top to
        # 0.12 below the chin, 0.66 face either side of the centre.
        half = 0.5 * CROP_FACTOR + CROP_UP_SHIFT  # face centre's depth in the crop, faces
        rect = self.dlib.rectangle(int((0.5 - 0.66 / CROP_FACTOR) * w),
                                   int((half - 0.7) / CROP_FACTOR * h),
                                   int((0.5 + 0.66 / CROP_FACTOR) * w),
                                   int((half + 0.62) / CROP_FACTOR * h))
        shape = self.sp(img, rect)
        return np.asarray(self.net.compute_face_descriptor(img, shape), np.float64)


def make_identity() -> DlibIdentity | None:
    try:
        return DlibIdentity()
    except Exception:
        return None


def _u8(x: torch.Tensor) -> np.ndarray:
    """(3, S, S) [0, 1] -> (S, S, 3) uint8."""
    return (x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float().div(255)


def output_landmarks(frames: torch.Tensor, analyzer) -> np.ndarray:
    """(N, 3, S, S) -> (N, 478, 2) crop px, NaN where no face is found."""
    s = frames.shape[-1]
    out = np.full((len(frames), 478, 2), np.nan, np.float32)
    for i, f in enumerate(frames):
        img = cv2.resize(_u8(f), (DETECT_SIZE, DETECT_SIZE), interpolation=cv2.INTER_CUBIC)
        face = analyzer.analyze(img)
        if face is not None:
            out[i] = np.asarray(face.landmarks)[:, :2] * (s / DETECT_SIZE)
    return out


def transfer_motion(portrait_lms: np.ndarray, drive: np.ndarray) -> np.ndarray:
    """Driving landmark displacements (from drive[0]) applied to a portrait,
    scaled by the inter-ocular ratio. -> (N, 478, 2)."""
    iod = lambda p: float(np.linalg.norm(p[33, :2] - p[263, :2]))  # noqa: E731
    scale = iod(portrait_lms) / max(iod(drive[0]), 1e-6)
    return portrait_lms[None, :, :2] + (drive[:, :, :2] - drive[:1, :, :2]) * scale


CONTROLS = ("ceiling", "interior")


def _guides(ref: torch.Tensor, ref_lms: np.ndarray, lms: np.ndarray, batch: int = 64):
    """Yield (guide (1, 3, S, S), its target landmarks (1, 478, 2)), computed in batches."""
    s = ref.shape[-1]
    for a in range(0, len(lms), batch):
        dst = torch.from_numpy(np.ascontiguousarray(lms[a:a + batch, :, :2], np.float32))
        n = len(dst)
        src = torch.from_numpy(np.asarray(ref_lms[:, :2], np.float32))[None].expand(n, -1, -1)
        g = warp_guide(ref[None].expand(n, -1, -1, -1), src, dst, grid=min(48, s))
        for x, lm in zip(g, dst):
            yield x[None], lm[None]


def mouth_psnr_frames(frames: torch.Tensor, real: torch.Tensor, boxes) -> list[float]:
    """Per-frame PSNR inside the mouth boxes."""
    return [psnr(frames[i, :, y0:y1, x0:x1], real[i, :, y0:y1, x0:x1]) for i, (x0, y0, x1, y1) in enumerate(boxes)]


def _lm_t(lms: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(lms[..., :2], np.float32))


def _pingpong(n_src: int, n: int) -> np.ndarray:
    period = max(1, 2 * (n_src - 1))
    i = np.arange(n) % period
    return np.where(i < n_src, i, period - i)


# --------------------------------------------------------------------------
# the evaluation
# --------------------------------------------------------------------------
def evaluate(data: str | Path, weights: str | Path, out: str | Path, *, variants: Sequence[str] = VARIANTS,
             max_frames: int | None = 250, drift_seconds: float = 600.0, portraits: Sequence[str] | None = None,
             seed: int = 0, progress=_print,
             drift_variants: Sequence[str] = ("generator", "guide_only"),
             clip_names: Sequence[str] | None = None) -> dict[str, Any]:
    from kf_desktop.face import FaceAnalyzer
    from kf_desktop.portrait import load_portrait

    t_start = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, info = load_model(weights)
    region = RegionSpec.from_record(info.training)
    scfg_dict = info.training.get("stream_config")
    from engine.config import StreamConfig, get_preset

    scfg = StreamConfig.from_dict(scfg_dict) if scfg_dict else get_preset(info.training.get("preset", "default")).stream
    manifest, clips = load_clips(data, list(clip_names) if clip_names else None)
    # evaluated at the dataset's crop size, which may exceed the model's (the
    # app's 256 px crop around a 128 px model): what users see
    size = int(manifest["size"])
    if region is None and (size < model.cfg.height or size % model.cfg.height):
        raise ValueError(f"dataset is {size}px, model {model.cfg.height}px: use a dataset at the model's "
                         f"size or a multiple of it (kf-desktop dataset --size {2 * model.cfg.height})")
    ident = make_identity()
    if ident is None:
        progress("dlib / face-recognition-models not installed: identity columns are n/a "
                 "(pip install 'kf-desktop[eval]')")
    analyzer = FaceAnalyzer(static=True)
    portraits = list(portraits) if portraits is not None else sorted(str(p) for p in (REPO / "resources" / "portraits").glob("*.png"))

    def id_dist(ref_emb, frames: torch.Tensor, every: int = 1) -> float:
        if ident is None or ref_emb is None:
            return math.nan
        ds = [np.linalg.norm(ident.embed(_u8(f)) - ref_emb) for f in frames[::every]]
        return float(np.mean(ds))

    model_variants = [v for v in variants if v not in CONTROLS]
    controls = [v for v in variants if v in CONTROLS]
    groups = ("tails", "people")
    rows: dict[str, dict[str, dict[str, list[float]]]] = {g: {v: {} for v in variants} for g in groups}

    def add(v: str, key: str, val: float, group: str = "tails") -> None:
        rows[group][v].setdefault(key, []).append(val)

    interior = fit_interior(clips) if "interior" in controls else None
    if interior is not None:
        progress(f"non-learned interior fitted on the training frames: {interior.to_dict()}")
    mouth_rows: list[tuple[str, torch.Tensor]] = []

    def run(v, ref, ref_lms, drive, **kw):
        return run_variant(v, model, scfg, ref[None], _guides(ref, ref_lms, drive), len(drive), seed,
                           region=region, ref_lms=_lm_t(ref_lms)[None], **kw)

    sheet: list[tuple[str, torch.Tensor]] = []
    # ---- self-reenactment on held-out frames (tails) and held-out people -------------------
    for ci, clip in enumerate(clips):
        group = "people" if clip.n_train == 0 else "tails"
        lo = clip.n_train
        hi = len(clip) if max_frames is None else min(len(clip), lo + 1 + max_frames)
        if hi - lo < scfg.frames_per_chunk + 2:
            continue
        ref = _t(clip.frames[lo])
        ref_lms = clip.landmarks[lo]
        drive = clip.landmarks[lo + 1:hi]
        real = torch.stack([_t(f) for f in clip.frames[lo + 1:hi]])
        # the regions the guide gets wrong, located on the real frames
        dlm = _lm_t(drive)
        mouth_boxes = region_boxes(dlm, MOUTH, size)
        eye_boxes = region_boxes(dlm, RIGHT_EYE + LEFT_EYE, size)
        bins = [bin_of(o) for o in mouth_openness(drive)]
        ref_emb = ident.embed(clip.frames[lo]) if ident else None
        progress(f"self-reenactment ({group}) {clip.name}: frames {lo + 1}..{hi - 1}")
        if ci == 0:
            sheet.append((f"{clip.name} real", real))
        guide_frames = None
        outs: dict[str, torch.Tensor] = {}
        for v in model_variants + controls:
            if v in CONTROLS:
                if guide_frames is None:
                    guide_frames = run("guide_only", ref, ref_lms, drive)
                frames = (ceiling(guide_frames, real, dlm) if v == "ceiling"
                          else with_interior(guide_frames, dlm, interior))
            else:
                frames = run(v, ref, ref_lms, drive)
                if v == "guide_only":
                    guide_frames = frames
            outs[v] = frames
            add(v, "psnr", psnr(frames, real), group)
            add(v, "ssim", ssim(frames, real), group)
            for rname, boxes in (("mouth", mouth_boxes), ("eyes", eye_boxes)):
                rp, rs = region_psnr_ssim(frames, real, boxes)
                add(v, f"psnr_{rname}", rp, group)
                add(v, f"ssim_{rname}", rs, group)
            per = mouth_psnr_frames(frames, real, mouth_boxes)
            for p_, b_, o_ in zip(per, bins, mouth_openness(drive)):
                if math.isfinite(p_):
                    add(v, f"psnr_mouth_{b_}", p_, group)
                    if o_ > OPEN:
                        add(v, "psnr_open", p_, group)
            if v in CONTROLS:
                continue
            add(v, "id_self", id_dist(ref_emb, frames, every=max(1, len(frames) // 25)), group)
            plm = output_landmarks(frames, analyzer)
            add(v, "lmk_self", landmark_error(torch.from_numpy(plm), torch.from_numpy(drive)), group)
            add(v, "noface_self", float(np.isnan(plm[:, 0, 0]).mean()), group)
            add(v, "seam_self", seam_ratio(frames, scfg.chunk), group)
            if ci == 0:
                sheet.append((f"{clip.name} {v}", frames))
        if group == "people" and len(mouth_rows) < 12:
            mouth_rows += _mouth_closeups(clip.name, real, outs, dlm, mouth_openness(drive))
    # ---- cross identity ----------------------------------------------------------------
    for pi, path in enumerate(portraits):
        with FaceAnalyzer(static=True, max_faces=2) as fa2:
            por = load_portrait(path, fa2, crop_size=size)
        ref = _t(por.crop)
        p_lms = np.asarray(por.crop_landmarks, np.float32)[:, :2]
        ref_emb = ident.embed(por.crop) if ident else None
        clip = clips[pi % len(clips)]
        lo = clip.n_train
        hi = len(clip) if max_frames is None else min(len(clip), lo + 1 + max_frames)
        drive = transfer_motion(p_lms, clip.landmarks[lo:hi])
        progress(f"cross identity {Path(path).name} driven by {clip.name} held-out motion ({len(drive)} frames)")
        for v in model_variants:
            frames = run(v, ref, p_lms, drive)
            add(v, "id_cross", id_dist(ref_emb, frames, every=max(1, len(frames) // 25)))
            plm = output_landmarks(frames, analyzer)
            add(v, "lmk_cross", landmark_error(torch.from_numpy(plm), torch.from_numpy(drive.astype(np.float32))))
            add(v, "seam_cross", seam_ratio(frames, scfg.chunk))
            if pi == 0:
                sheet.append((f"{Path(path).stem} {v}", frames))
            # drift over a long run (held-out motion played back and forth)
            if drift_seconds > 0 and pi == 0 and v in drift_variants:
                n_long = int(round(drift_seconds * clip.fps))
                idx = _pingpong(len(drive), n_long)
                every = max(1, int(round(clip.fps)))  # identity sampled once per second
                ds: list[float] = []

                def on_frame(i: int, f: torch.Tensor) -> None:
                    if i % every == 0 and ident is not None:
                        ds.append(float(np.linalg.norm(ident.embed(_u8(f.cpu())) - ref_emb)))

                t0 = time.monotonic()
                run(v, ref, p_lms, drive[idx], on_frame=on_frame, keep=False)
                add(v, "drift", drift(ds, fps=1.0, window_s=60.0))
                progress(f"  drift run {v}: {n_long} frames in {time.monotonic() - t0:.0f} s")
    analyzer.close()

    def means(group_rows):
        return {v: {k: float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan for k, vals in m.items()}
                for v, m in group_rows.items()}

    res = means(rows["tails"])
    people = means(rows["people"])
    table = markdown_table(res, drift_seconds)
    table += "\n\n" + mouth_table(res, "held-out clip tails")
    if any(people.values()):
        table += "\n\n" + markdown_table(people, drift_seconds, title="held-out people") + \
            "\n\n" + mouth_table(people, "held-out people")
    meta = {"weights": str(weights), "trained": info.trained, "steps": info.training.get("steps"),
            "stream_config": scfg.to_dict(), "size": size, "dlib": ident is not None,
            "clips": [c.name for c in clips], "portraits": [Path(p).name for p in portraits],
            "heldout_people": [c.name for c in clips if c.n_train == 0],
            "region": region.to_record() if region else None,
            "interior": interior.to_dict() if interior else None,
            "max_frames": max_frames, "drift_seconds": drift_seconds, "seconds": time.monotonic() - t_start}
    (out / "results.md").write_text(table + "\n\n" + _notes(meta) + "\n")
    (out / "results.json").write_text(json.dumps({"metrics": res, "people": people, "meta": meta}, indent=1,
                                                 default=str) + "\n")
    contact_sheet(sheet, out / "contact_sheet.png")
    mouth_sheet(mouth_rows, out / "mouth_sheet.png")
    progress(table)
    return {"metrics": res, "people": people, "meta": meta, "table": table}


#: Identity distance on other people may exceed guide-only's by at most this (issue 12).
ID_CROSS_TOLERANCE = 0.05


def evaluation_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The figures --mode auto decides from: generator minus guide-only."""
    m = res["metrics"]
    g, b = m.get("generator", {}), m.get("guide_only", {})

    def delta(key: str) -> float | None:
        x, y = g.get(key), b.get(key)
        return None if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)) else float(x - y)

    d = {k: delta(k) for k in ("psnr", "ssim", "psnr_mouth", "ssim_mouth", "psnr_eyes", "ssim_eyes",
                               "id_cross", "lmk_self")}
    beats = d["psnr_mouth"] is not None and d["ssim_mouth"] is not None and d["psnr_mouth"] > 0 and d["ssim_mouth"] > 0
    # what --mode auto also requires (issue 12's goals): the whole crop no
    # worse than the warp, and other people's identity kept (a model that
    # paints its training clips into an unseen portrait must not be picked)
    whole_ok = d["ssim"] is not None and d["ssim"] >= 0
    id_ok = d["id_cross"] is None or d["id_cross"] <= ID_CROSS_TOLERANCE
    return {"generator_minus_guide_only": d, "beats_guide_only_mouth": bool(beats),
            "whole_crop_not_worse": bool(whole_ok), "identity_cross_kept": bool(id_ok),
            "use_model": bool(beats and whole_ok and id_ok),
            "size": res["meta"]["size"], "steps": res["meta"]["steps"],
            "generator": g, "guide_only": b, "seconds": res["meta"]["seconds"]}


def record_evaluation(weights: str | Path, res: dict[str, Any]) -> Path:
    """Add ``evaluation`` to the weights' config.json (the weight files and
    their sha256 are untouched). Written atomically."""
    from engine.weights import read_config

    path = Path(weights) / "config.json"
    doc = read_config(weights)
    doc["evaluation"] = evaluation_summary(res)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


COLUMNS = (
    ("psnr", "PSNR dB ↑", "{:.2f}"),
    ("ssim", "SSIM ↑", "{:.3f}"),
    ("psnr_mouth", "mouth PSNR ↑", "{:.2f}"),
    ("ssim_mouth", "mouth SSIM ↑", "{:.3f}"),
    ("psnr_eyes", "eyes PSNR ↑", "{:.2f}"),
    ("ssim_eyes", "eyes SSIM ↑", "{:.3f}"),
    ("id_self", "identity self ↓", "{:.3f}"),
    ("id_cross", "identity cross ↓", "{:.3f}"),
    ("lmk_self", "landmark err self ↓", "{:.3f}"),
    ("lmk_cross", "landmark err cross ↓", "{:.3f}"),
    ("noface_self", "no face found", "{:.0%}"),
    ("seam_self", "seam ratio self (1 = seamless)", "{:.2f}"),
    ("seam_cross", "seam ratio cross", "{:.2f}"),
    ("drift", "drift ↓", "{:+.3f}"),
)


def mouth_table(res: dict[str, dict[str, float]], title: str) -> str:
    """Mouth PSNR per openness bin and on open-mouth frames, each variant
    and control, with the gain over guide-only."""
    keys = [f"psnr_mouth_{b}" for b, _, _ in BINS] + ["psnr_open", "psnr_mouth"]
    base = res.get("guide_only", {})
    lines = [f"Mouth PSNR dB by openness, {title} (gain over guide-only in brackets)", "",
             "| variant | " + " | ".join(k.replace("psnr_mouth_", "").replace("psnr_", "") for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for v, m in res.items():
        cells = []
        for k in keys:
            x, y = m.get(k), base.get(k)
            if x is None or not math.isfinite(x):
                cells.append("n/a")
            elif v == "guide_only" or y is None or not math.isfinite(y):
                cells.append(f"{x:.2f}")
            else:
                cells.append(f"{x:.2f} ({x - y:+.2f})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mouth_closeups(name: str, real: torch.Tensor, outs: dict[str, torch.Tensor], lms: torch.Tensor,
                    openness: np.ndarray, n: int = 6, zoom: int = 4) -> list[tuple[str, torch.Tensor]]:
    """Rows (label, (n, 3, h, w) close-ups) of the n most open frames' mouths,
    zoomed ``zoom`` x: real, guide-only, generator."""
    import torch.nn.functional as F

    idx = np.sort(np.argsort(-openness)[:n])
    rows = []
    for label, frames in [("real", real)] + [(v, outs[v]) for v in ("guide_only", "generator") if v in outs]:
        tiles = []
        for i in idx:
            c = lms[i, list(MOUTH)].mean(0)
            w = float((lms[i, 61] - lms[i, 291]).norm()) * 1.6
            x0, y0 = int(c[0] - w / 2), int(c[1] - w * 0.35)
            x0, y0 = max(0, min(x0, frames.shape[-1] - int(w))), max(0, min(y0, frames.shape[-2] - int(0.7 * w)))
            t = frames[i, :, y0:y0 + int(0.7 * w), x0:x0 + int(w)][None]
            tiles.append(F.interpolate(t, size=(28 * zoom, 40 * zoom), mode="bicubic", align_corners=False)[0])
        rows.append((f"{name[:18]} {label}", torch.stack(tiles).clamp(0, 1)))
    return rows


def mouth_sheet(rows: list[tuple[str, torch.Tensor]], path: Path) -> None:
    from PIL import Image, ImageDraw

    if not rows:
        return
    th, tw = rows[0][1].shape[-2:]
    label_w = 190
    cols = max(len(r[1]) for r in rows)
    sheet = Image.new("RGB", (label_w + cols * tw, len(rows) * th), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, tiles) in enumerate(rows):
        for c, t in enumerate(tiles):
            sheet.paste(Image.fromarray(_u8(t)), (label_w + c * tw, r * th))
        draw.text((4, r * th + th // 2 - 6), name[:30], fill="black")
    sheet.save(path)


def markdown_table(res: dict[str, dict[str, float]], drift_seconds: float, title: str = "") -> str:
    cols = [c for c in COLUMNS if any(c[0] in m for m in res.values())]
    head = (f"{title}\n\n" if title else "") + "| variant | " + " | ".join(c[1] if c[0] != "drift" else f"drift ({drift_seconds:g} s) ↓" for c in cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    lines = [head, sep]
    for v, m in res.items():
        if not m:
            continue
        cells = []
        for key, _, fmt in cols:
            x = m.get(key, math.nan)
            cells.append("n/a" if x is None or not math.isfinite(x) else fmt.format(x))
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _notes(meta: dict[str, Any]) -> str:
    return (f"Weights: {meta['weights']} (steps {meta['steps']}), {meta['size']}px, stream {meta['stream_config']}.\n"
            f"Self-reenactment on the held-out 20% of {', '.join(meta['clips'])} (up to {meta['max_frames']} frames each); "
            f"cross identity: {', '.join(meta['portraits'])} driven by held-out motion. Identity = dlib 128-D "
            f"embedding distance to the reference ({'dlib' if meta['dlib'] else 'dlib not installed: n/a'}). "
            f"Landmark error / inter-ocular distance (mediapipe on outputs upscaled to {DETECT_SIZE}px). "
            f"Ablations: no_knot = k 0; fixed_ref = reference at a fixed position (no running ahead).")


def contact_sheet(rows: list[tuple[str, torch.Tensor]], path: Path, cols: int = 8, tile: int = 96) -> None:
    from PIL import Image, ImageDraw

    if not rows:
        return
    label_w = 170
    sheet = Image.new("RGB", (label_w + cols * tile, len(rows) * tile), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, frames) in enumerate(rows):
        idx = np.linspace(0, len(frames) - 1, min(cols, len(frames))).round().astype(int)
        for c, i in enumerate(idx):
            im = Image.fromarray(_u8(frames[i])).resize((tile, tile), Image.NEAREST if frames.shape[-1] < tile else Image.BILINEAR)
            sheet.paste(im, (label_w + c * tile, r * tile))
        draw.text((4, r * tile + tile // 2 - 6), name[:26], fill="black")
    sheet.save(path)


def main(argv: Sequence[str] | None = None, prog: str = "kf-desktop eval") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="evaluate the generator vs guide-only and ablations")
    ap.add_argument("--data", required=True, help="dataset dir (its held-out frames are used)")
    ap.add_argument("--weights", default=None, help="weights dir (default: resources/models/default)")
    ap.add_argument("--out", required=True, help="where results.md, results.json and contact_sheet.png go")
    ap.add_argument("--max-frames", type=int, default=250, help="held-out frames per clip (0 = all)")
    ap.add_argument("--drift-seconds", type=float, default=600.0, help="length of the drift run (0 = skip)")
    ap.add_argument("--portraits", nargs="*", default=None, help="unseen portraits (default resources/portraits/*.png)")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS) + list(CONTROLS),
                    choices=list(VARIANTS) + list(CONTROLS),
                    help="model variants and the mouth controls (ceiling, interior)")
    ap.add_argument("--drift-variants", nargs="+", default=["generator", "guide_only"], choices=VARIANTS,
                    help="variants that get the long drift run (each costs drift-seconds of video)")
    ap.add_argument("--clips", nargs="+", default=None, metavar="NAME",
                    help="only these dataset clips (names as in its manifest; default: all)")
    ap.add_argument("--record", action="store_true",
                    help="write the generator-vs-guide-only summary into the weights' config.json "
                         "(what --mode auto reads to decide whether the model beats the warp)")
    a = ap.parse_args(argv)
    from engine.weights import default_weights_dir

    weights = a.weights or default_weights_dir()
    res = evaluate(a.data, weights, a.out, variants=a.variants,
                   max_frames=a.max_frames or None, drift_seconds=a.drift_seconds, portraits=a.portraits,
                   drift_variants=a.drift_variants, clip_names=a.clips)
    if a.record:
        path = record_evaluation(weights, res)
        print(f"recorded the evaluation summary in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
