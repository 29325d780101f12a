"""``python -m engine.training`` / ``kf-desktop train``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from engine.config import PRESET_NAMES
from engine.training.trainer import TrainConfig, train


def build_parser(prog: str = "python -m engine.training") -> argparse.ArgumentParser:
    d = TrainConfig()
    ap = argparse.ArgumentParser(prog=prog, description="train the Knot Forcing generator (self-reenactment)")
    ap.add_argument("--data", required=True, help="dataset dir from `python -m kf_desktop.dataset_build`")
    ap.add_argument("--out", required=True, help="run dir: model/ (weights), state/ (resume), train.log")
    ap.add_argument("--preset", default=d.preset, choices=PRESET_NAMES)
    ap.add_argument("--size", type=int, default=None, help="override the preset's frame size")
    ap.add_argument("--stage", default=d.stage, choices=("diffusion", "self_forcing"))
    ap.add_argument("--steps", type=int, default=d.steps, help="total steps (a resumed run continues up to it)")
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup", type=int, default=d.warmup)
    ap.add_argument("--ema", type=float, default=d.ema, help="EMA decay (0 = off)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", default=d.device, help="auto | cpu | cuda")
    ap.add_argument("--no-bf16", action="store_true", help="fp32 on CUDA")
    ap.add_argument("--sf-prob", type=float, default=d.sf_prob, help="self_forcing: share of rollout batches")
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    ap.add_argument("--ckpt-minutes", type=float, default=d.ckpt_minutes,
                    help="also checkpoint after this many minutes (e.g. 10)")
    ap.add_argument("--eval-every", type=int, default=d.eval_every)
    ap.add_argument("--eval-batches", type=int, default=d.eval_batches)
    ap.add_argument("--save-dtype", default=d.save_dtype, choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--max-shard-mib", type=float, default=d.max_shard_bytes / 2**20)
    ap.add_argument("--max-minutes", type=float, default=d.max_minutes, help="stop with a checkpoint after this")
    ap.add_argument("--init", default="", help="start from these weights (fresh optimizer)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/state")
    ap.add_argument("--no-augment", action="store_true", help="no flips / colour / scale jitter / stills")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="any other TrainConfig field, e.g. --set region_extra=3 --set 'sample={\"p_still\":0}'")
    return ap


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    tc = TrainConfig(
        data=a.data, out=a.out, preset=a.preset, size=a.size, stage=a.stage, steps=a.steps, batch=a.batch,
        lr=a.lr, warmup=a.warmup, ema=a.ema, seed=a.seed, device=a.device, bf16=not a.no_bf16,
        sf_prob=a.sf_prob, log_every=a.log_every, ckpt_every=a.ckpt_every, ckpt_minutes=a.ckpt_minutes, eval_every=a.eval_every,
        eval_batches=a.eval_batches, save_dtype=a.save_dtype, max_shard_bytes=int(a.max_shard_mib * 2**20),
        max_minutes=a.max_minutes, init=a.init, resume=a.resume,
    )
    if a.no_augment:
        tc.p_flip = tc.p_color = tc.p_scale = 0.0
        tc.sample = dict(tc.sample, p_still=0.0)
    for kv in a.set:
        key, _, val = kv.partition("=")
        if not hasattr(tc, key):
            raise SystemExit(f"--set: unknown TrainConfig field {key!r}")
        setattr(tc, key, json.loads(val))
    return tc


def main(argv: Sequence[str] | None = None, prog: str = "python -m engine.training") -> int:
    a = build_parser(prog).parse_args(argv)
    from engine.training.data import DatasetError
    from engine.training.trainer import ResumeError

    try:
        res = train(config_from_args(a))
    except (ResumeError, DatasetError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    ev = res["eval"]
    print(f"done: step {res['step']} ({res['stopped']}), held-out loss {ev[0]['loss']:.4f} -> {ev[-1]['loss']:.4f}, "
          f"{res['seconds']:.0f} s; weights in {res['out']}/model", flush=True)
    return 0 if res["stopped"] != "nan" else 1


if __name__ == "__main__":
    sys.exit(main())
