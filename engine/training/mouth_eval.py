"""Held-out mouth PSNR of the real streaming sampler, measured while training.

The loss can fall while the stream gets worse (issue 12's run), so the
trainer keeps the checkpoint that this measurement likes best. Segments of
``n`` frames, fixed once per dataset:

- held-out people (clips built with ``--holdout-people``): the n-frame
  stretch with the most open-mouth frames; the reference is the most closed
  frame outside it (a closed-mouth photo, as users give);
- held-out tails (the last 20 % of up to ``max_tails`` other clips): the
  same rule inside the tail; the reference comes from the clip's training
  part (the portrait was seen, the motion was not).

Every segment is one batch row of a MouthRegionStream (the stream the app
runs, engine/mouth_region.py), fed the guide (reference warped to the real
frame's landmarks, the app's warp) frame by frame. Metrics are PSNR inside
the soft lips ellipse of the real frame, cut at the frame's region
(``mouth``), the same on open-mouth frames only (``open``, openness > 0.10),
and guide-only beside each (the guide pasted unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.motion_guide import warp_guide
from engine.mouth_region import (MouthRegionStream, RegionSpec, crop, eye_distance, mouth_weight, region_box,
                                 to_region)
from engine.training.data import Clip, mouth_openness

OPEN = 0.10


@dataclass
class Segment:
    clip: int
    ref: int
    start: int
    kind: str  # "people" | "tails"


def pick_segments(clips: list[Clip], n: int, max_tails: int = 6) -> list[Segment]:
    out: list[Segment] = []
    tails = [i for i, c in enumerate(clips) if c.n_train > 0 and len(c) - c.n_train >= n]
    if len(tails) > max_tails:  # evenly spread over the list, deterministic
        tails = [tails[int(j)] for j in np.linspace(0, len(tails) - 1, max_tails).round()]
    people = [i for i, c in enumerate(clips) if c.n_train == 0 and len(c) >= 2 * n]
    for kind, ids in (("people", people), ("tails", tails)):
        for ci in ids:
            c = clips[ci]
            op = mouth_openness(c.landmarks)
            lo = c.n_train
            opened = np.convolve((op[lo:] > OPEN).astype(np.float64), np.ones(n), "valid")  # per start
            start = lo + int(np.argmax(opened))
            if kind == "tails":
                cand = np.arange(0, c.n_train)
            else:
                cand = np.concatenate([np.arange(0, max(0, start - 10)), np.arange(min(len(c), start + n + 10), len(c))])
            if len(cand) == 0:
                continue
            ref = int(cand[np.argmin(op[cand])])
            out.append(Segment(ci, ref, start, kind))
    return out


def _psnr(mse: float) -> float:
    return 10 * math.log10(1.0 / max(mse, 1e-10))


@torch.no_grad()
def stream_mouth_psnr(model, scfg, clips: list[Clip], segments: list[Segment], n: int, spec: RegionSpec,
                      device: torch.device, autocast: bool = False) -> dict[str, float]:
    """-> {"people_mouth", "people_mouth_guide", "people_open", "people_open_guide", "tails_...", ...} dB,
    PSNR of the pooled weighted squared error over the segments' frames."""
    from engine.stream import KnotForcingStream

    if not segments:
        return {}
    was_training = model.training
    model.eval()
    b = len(segments)

    def frames_of(seg: Segment) -> tuple[torch.Tensor, torch.Tensor]:
        c = clips[seg.clip]
        idx = np.arange(seg.start, seg.start + n)
        return (torch.from_numpy(c.frames[idx]).permute(0, 3, 1, 2).float() / 255,
                torch.from_numpy(c.landmarks[idx]).float())

    ref = torch.stack([torch.from_numpy(clips[s.clip].frames[s.ref]).permute(2, 0, 1).float() / 255 for s in segments])
    ref_lms = torch.stack([torch.from_numpy(clips[s.clip].landmarks[s.ref]).float() for s in segments])
    real, lms = zip(*(frames_of(s) for s in segments))
    real, lms = torch.stack(real).to(device), torch.stack(lms).to(device)  # (B, n, 3, S, S), (B, n, P, 2)
    ref, ref_lms = ref.to(device), ref_lms.to(device)
    st = KnotForcingStream(model, scfg, batch_size=b, seed=0, allow_untrained=True, check_values=False)
    mrs = MouthRegionStream(st, spec)
    mrs.set_reference(ref, ref_lms)
    outs, guides = [], []
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for j in range(n):
            g = warp_guide(ref, ref_lms, lms[:, j], grid=min(48, ref.shape[-1]))
            guides.append(g)
            outs += mrs.push(g, lms[:, j])
    model.train(was_training)
    gen = torch.stack(outs, 1).float()  # (B, m, 3, S, S)
    m = gen.shape[1]
    guide = torch.stack(guides[:m], 1)
    eye_d = eye_distance(ref_lms)
    acc: dict[str, list[float]] = {}
    for bi, seg in enumerate(segments):
        lm = lms[bi, :m]
        cen, half = region_box(lm, eye_d[bi].expand(m), spec)
        w = mouth_weight(to_region(lm, cen, half, spec), spec)  # (m, 1, h, w)
        tgt = crop(real[bi, :m], cen, half, spec)
        op = mouth_openness(lm.cpu().numpy())
        for name, img in (("", gen[bi]), ("_guide", guide[bi])):
            err = ((crop(img, cen, half, spec) - tgt) ** 2 * w).sum((1, 2, 3)) / (3 * w.sum((1, 2, 3)))  # (m,)
            for sub, sel in (("mouth", np.ones(m, bool)), ("open", op > OPEN)):
                key = f"{seg.kind}_{sub}{name}"
                acc.setdefault(key, []).extend(err[torch.from_numpy(sel).to(err.device)].tolist())
    return {k: round(_psnr(float(np.mean(v))), 3) for k, v in acc.items() if v}


def gain(res: dict[str, float]) -> float:
    """The checkpoint score: mean gain over guide-only of open-mouth PSNR on
    held-out people and tails (mouth PSNR where a group has no open frame)."""
    gs = []
    for kind in ("people", "tails"):
        for sub in ("open", "mouth"):
            if f"{kind}_{sub}" in res:
                gs.append(res[f"{kind}_{sub}"] - res[f"{kind}_{sub}_guide"])
                break
    return float(np.mean(gs)) if gs else float("nan")


def main(argv=None) -> int:
    """``python -m engine.training.mouth_eval --data DIR --weights DIR [--steps 1 2]``:
    the trainer's held-out streaming mouth PSNR for a saved checkpoint, for
    each number of denoising steps S (and the schedule shift) asked for."""
    import argparse
    import dataclasses
    import json
    import time

    from engine.config import StreamConfig
    from engine.hardware import cpu_has_native_bf16
    from engine.training.data import load_clips
    from engine.weights import load_model

    ap = argparse.ArgumentParser(prog="python -m engine.training.mouth_eval")
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--frames", type=int, default=36, help="frames per segment")
    ap.add_argument("--steps", type=int, nargs="*", default=[], help="S values to compare (default: the trained S)")
    ap.add_argument("--shift", type=float, nargs="*", default=[], help="schedule shifts to compare")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    model, info = load_model(a.weights)
    spec = RegionSpec.from_record(info.training)
    if spec is None:
        raise SystemExit(f"{a.weights} is not a mouth-region model")
    scfg = StreamConfig.from_dict(info.training["stream_config"])
    _, clips = load_clips(a.data)
    segs = pick_segments(clips, a.frames)
    dev = torch.device("cpu")
    rows = []
    for s in a.steps or [scfg.steps]:
        for sh in a.shift or [scfg.shift]:
            cfg = dataclasses.replace(scfg, steps=s, shift=sh).validate()
            t0 = time.monotonic()
            res = stream_mouth_psnr(model, cfg, clips, segs, a.frames, spec, dev, cpu_has_native_bf16())
            res["gain"] = round(gain(res), 3)
            rows.append({"steps": s, "shift": sh, **res, "seconds": round(time.monotonic() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
