"""Trainer: flow matching with x-prediction on self-reenactment windows.

One step (``stage="diffusion"``):

1. Draw windows (data.py), gather frames + landmarks, augment (scale jitter,
   colour jitter, stills with synthetic motion), compute every frame's guide
   = reference warped to the frame's landmarks (engine.motion_guide.warp_guide,
   the app's code), flip some samples (images only, after the guide).
2. Build the full sequence [reference, context..., chunk (c + k)] exactly as
   the stream's conventions: reference [ref, ref, 0, 0] at sigma 0; context
   [x, guide, 0, 0] with diffusion-forcing noise (sigma_ctx, embedded as its
   own per-frame timestep); chunk [x_sigma, guide, knot mask, knot frame] at one
   shifted-logit-normal sigma; the knot frames (first k) get mask 1 and a
   perturbed real frame; the last k frames' guides are held at the c-th
   guide as the live stream does (``knot_guide="hold"``).
3. One forward_full with the stream's block mask and the planned positions;
   loss = region-weighted L1 + MSE between the chunk's x0 prediction and
   the real frames.

``stage="self_forcing"``: with probability ``sf_prob`` a batch's context
(and its knot) comes from the model's own rollout: a KnotForcingStream (the
inference code, no grad) generates the chunks before the trained one from
the same guides; the trained chunk then learns to produce the real frames
from its own imperfect past. (A regression "self forcing": the target stays
the real frame; no distribution-matching critic.)

Checkpoints (``out/``): ``model/`` = engine.weights.save_model (trained=True,
training info: step, losses, data hashes; EMA weights when EMA is on), and
``state/`` = ``trainer.safetensors`` (raw weights, optimizer moments, EMA) +
``state.json`` (step, optimizer hyper-parameters, loss history). No pickle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import EngineError, ModelConfig, StreamConfig, get_preset
from engine.hardware import cpu_has_native_bf16
from engine.model import KnotForcingDiT, build_model, count_parameters
from engine.motion_guide import warp_guide
from engine.mouth_region import (RegionSpec, blank_inner_mouth, crop, eye_distance, inner_mouth_mask,
                                 mouth_weight, paste_mask, region_box, to_region)
from engine.sampler import sample_training_sigmas
from engine.training.augment import color_jitter, region_weights, scale_jitter, synthetic_motion
from engine.training.data import Clip, SampleSpec, Window, WindowSampler, context_frame_mask, load_clips
from engine.weights import load_model, save_model


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "out/train"
    preset: str = "default"
    size: int | None = None  # override the preset's frame size (must match the dataset)
    stage: str = "diffusion"  # "diffusion" | "self_forcing"
    steps: int = 1000  # total steps (a resumed run continues up to this)
    batch: int = 8
    lr: float = 2e-4
    warmup: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema: float = 0.0  # 0 = off; e.g. 0.999
    seed: int = 0
    device: str = "auto"
    bf16: bool = True  # autocast bf16 (CUDA, and CPUs with native bf16: AVX-512 BF16 / AMX)
    # objective
    t_mean: float = 0.0
    t_std: float = 1.0
    t_shift: float | None = None  # None -> the stream's shift
    l1: float = 1.0
    mse: float = 1.0
    # L1 between the horizontal and vertical pixel differences of prediction
    # and target (same weight map): a pixel loss alone is minimised by the
    # blurred conditional mean, which drew the mouth model's teeth as a soft
    # band (docs/MOUTH_MODEL.md, "Where it stands"); 0 = off
    grad: float = 0.0
    region_extra: float = 2.0  # extra weight inside eyes / mouth
    # "real": the target is the real frame; "masked_guide": the real frame
    # inside soft mouth/eye regions, the frame's own guide elsewhere
    target: str = "real"
    # conditioning noise
    p_ctx_noise: float = 0.7
    ctx_sigma_max: float = 0.3
    knot_noise: float = 0.05
    p_hold_guide: float = 0.8
    # augmentation
    p_flip: float = 0.5
    p_color: float = 0.8
    p_scale: float = 0.5
    scale_amount: float = 0.08
    # mouth region (issue 17, docs/MOUTH_MODEL.md): None = the preset's choice
    # (on for the "mouth" preset); the model then sees the region of the
    # full-size crops cut by engine/mouth_region.py, with the guide's inner
    # mouth blanked, and the loss is mouth_extra heavier inside the mouth.
    region: bool | None = None
    region_width_eyes: float = 1.35
    mouth_extra: float = 4.0
    # held-out streaming mouth PSNR (engine/training/mouth_eval.py) every
    # ckpt_every steps: the best checkpoint by it is kept in OUT/best
    stream_eval: bool = True
    stream_eval_frames: int = 36
    # self forcing
    sf_prob: float = 0.5
    # bookkeeping
    log_every: int = 10
    ckpt_every: int = 200
    ckpt_minutes: float = 0.0  # also checkpoint (and stream-evaluate) after this much wall time; 0 = off
    eval_every: int = 0  # 0 = only at start and end
    eval_batches: int = 2
    save_dtype: str = "float32"
    max_shard_bytes: int = 16 * 2**20
    max_minutes: float = 0.0  # stop (with a checkpoint) after this wall time; 0 = no limit
    init: str = ""  # weights dir to start from (fresh optimizer)
    resume: bool = False
    sample: dict = field(default_factory=dict)  # SampleSpec overrides
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields over the preset's
    stream_overrides: dict = field(default_factory=dict)  # StreamConfig fields over the preset's

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def uses_region(tc: TrainConfig) -> bool:
    return bool(get_preset(tc.preset).extra.get("region")) if tc.region is None else bool(tc.region)


def model_and_stream_config(tc: TrainConfig) -> tuple[ModelConfig, StreamConfig]:
    p = get_preset(tc.preset)
    mc, sc = p.model, p.stream
    if tc.model_overrides:
        mc = ModelConfig.from_dict(dict(mc.to_dict(), **tc.model_overrides))
    if tc.stream_overrides:
        sc = StreamConfig.from_dict(dict(sc.to_dict(), **tc.stream_overrides))
    if tc.size and not uses_region(tc):
        mc = dataclasses.replace(mc, height=tc.size, width=tc.size).validate()
    return mc, sc


# --------------------------------------------------------------------------
# batch assembly
# --------------------------------------------------------------------------
@dataclass
class Batch:
    frames: torch.Tensor  # (B, n, 3C+1, H, W) model input (codec space)
    sigma: torch.Tensor  # (B, n)
    t_pos: torch.Tensor  # (n,)
    mask: torch.Tensor  # (n, n) bool
    target: torch.Tensor  # (B, F, C, H, W) real chunk frames, codec space
    weight: torch.Tensor  # (B, F, 1, H, W)
    n_ctx: int
    # for self forcing: images in [0, 1]
    ref_img: torch.Tensor | None = None  # (B, 3, S, S)
    guides_img: torch.Tensor | None = None  # (B, n_ctx + F, 3, S, S)


def _to_codec(x: torch.Tensor) -> torch.Tensor:
    return x * 2.0 - 1.0


class BatchBuilder:
    def __init__(self, clips: list[Clip], scfg: StreamConfig, tc: TrainConfig, device: torch.device, seed: int) -> None:
        self.clips, self.scfg, self.tc, self.device = clips, scfg, tc, device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.cpu_gen = torch.Generator().manual_seed(seed + 1)
        # frames stay uint8 on the host; landmarks as tensors
        self.frames = [torch.from_numpy(c.frames) for c in clips]
        self.lms = [torch.from_numpy(c.landmarks) for c in clips]
        self.region: RegionSpec | None = None

    def use_region(self, spec: RegionSpec) -> "BatchBuilder":
        self.region = spec
        return self

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.gen, device=self.device)

    def images(self, wins: list[Window], augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> ref (B,3,S,S), ref_lms (B,478,2), imgs (B,n,3,S,S), lms (B,n,478,2), on device, [0, 1]."""
        dev = self.device
        refs, rlms, imgs, lms = [], [], [], []
        for w in wins:
            fr, lm = self.frames[w.clip], self.lms[w.clip]
            if w.still and augment:
                still = fr[w.ref].to(dev).permute(2, 0, 1).float() / 255
                moved, mlms = synthetic_motion(still, lm[w.ref].to(dev), len(w.frames) + 1, self.gen)
                refs.append(moved[0]); rlms.append(mlms[0]); imgs.append(moved[1:]); lms.append(mlms[1:])
                continue
            refs.append(fr[w.ref].to(dev).permute(2, 0, 1).float() / 255)
            rlms.append(lm[w.ref].to(dev))
            idx = torch.from_numpy(w.frames)
            imgs.append(fr[idx].to(dev).permute(0, 3, 1, 2).float() / 255)
            lms.append(lm[idx].to(dev))
        ref, ref_lms = torch.stack(refs), torch.stack(rlms)
        im, lm = torch.stack(imgs), torch.stack(lms)
        if augment and self.region is None:  # (the region path jitters its cut instead: 10x fewer pixels)
            tc = self.tc
            b = len(wins)
            if tc.p_scale > 0:
                allim = torch.cat([ref[:, None], im], 1)
                alllm = torch.cat([ref_lms[:, None], lm], 1)
                jim, jlm = scale_jitter(allim, alllm, self.gen, tc.scale_amount)
                use = (self._rand(b) < tc.p_scale).view(b, 1, 1, 1, 1)
                allim = torch.where(use, jim, allim)
                alllm = torch.where(use.view(b, 1, 1, 1), jlm, alllm)
                ref, im, ref_lms, lm = allim[:, 0], allim[:, 1:], alllm[:, 0], alllm[:, 1:]
            if tc.p_color > 0:
                allim = torch.cat([ref[:, None], im], 1)
                jit = color_jitter(allim, self.gen)
                use = (self._rand(b) < tc.p_color).view(b, 1, 1, 1, 1)
                allim = torch.where(use, jit, allim)
                ref, im = allim[:, 0], allim[:, 1:]
        return ref, ref_lms, im, lm

    def guides(self, ref: torch.Tensor, ref_lms: torch.Tensor, lms: torch.Tensor) -> torch.Tensor:
        """ref (B,3,S,S), ref_lms (B,P,2), lms (B,n,P,2) -> (B,n,3,S,S) guides in [0, 1]."""
        b, n = lms.shape[:2]
        g = warp_guide(ref[:, None].expand(-1, n, -1, -1, -1).flatten(0, 1),
                       ref_lms[:, None].expand(-1, n, -1, -1).flatten(0, 1), lms.flatten(0, 1),
                       grid=min(48, ref.shape[-1]))
        return g.view(b, n, *g.shape[1:])

    def _cut_region(self, ref: torch.Tensor, ref_lms: torch.Tensor, im: torch.Tensor, lm: torch.Tensor,
                    g: torch.Tensor, n_ctx: int, augment: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full crops -> mouth regions (engine/mouth_region.py), as the stream
        wrapper cuts them: ref (B,3,S,S), im/g (B,n,3,S,S), lm (B,n,P,2) ->
        ref (B,3,h,w), im (B,n,3,h,w), g (B,n,3,h,w) inner mouth blanked,
        loss weight (B,F,1,h,w) = paste mask * (1 + mouth_extra * lips).
        Augmentation here: the region's scale and centre (one draw per
        sample: crop jitter, and the live eye-distance estimate's noise) and
        colour, on the small cut images."""
        spec, tc = self.region, self.tc
        b, n = im.shape[:2]
        eye_d = eye_distance(ref_lms)  # (B,) one scale per stream: the reference's
        shift = torch.zeros(b, 2, device=im.device)
        if augment and tc.p_scale > 0:
            r = self._rand(b, 3) * 2 - 1
            use = (self._rand(b) < tc.p_scale).float()
            eye_d = eye_d * (1 + tc.scale_amount * r[:, 0] * use)
            shift = tc.scale_amount * r[:, 1:] * use[:, None]  # in half sizes
        rc, rh = region_box(ref_lms, eye_d, spec)
        ref_r = crop(ref, rc + shift * rh, rh, spec)
        flat_lm = lm.flatten(0, 1)
        ed = eye_d[:, None].expand(b, n).flatten()
        cen, half = region_box(flat_lm, ed, spec)
        cen = cen + (shift[:, None] * half.view(b, n, 2)).flatten(0, 1)
        g_r = crop(g.flatten(0, 1), cen, half, spec).view(b, n, 3, *spec.hw)
        im_r = crop(im.flatten(0, 1), cen, half, spec).view(b, n, 3, *spec.hw)
        if augment and tc.p_color > 0:
            allim = torch.cat([ref_r[:, None], im_r, g_r], 1)
            jit = color_jitter(allim, self.gen)
            use = (self._rand(b) < tc.p_color).view(b, 1, 1, 1, 1)
            allim = torch.where(use, jit, allim)
            ref_r, im_r, g_r = allim[:, 0], allim[:, 1:1 + n], allim[:, 1 + n:]
        lm_r = to_region(flat_lm, cen, half, spec)  # (B*n, P, 2)
        g_r = blank_inner_mouth(g_r.flatten(0, 1), inner_mouth_mask(lm_r, spec)).view(b, n, 3, *spec.hw)
        lm_r = lm_r.view(b, n, -1, 2)
        mw = mouth_weight(lm_r[:, n_ctx:].flatten(0, 1), spec).view(b, n - n_ctx, 1, *spec.hw)
        weight = paste_mask(spec, im.device) * (1 + tc.mouth_extra * mw)
        return ref_r, im_r, g_r, weight

    def build(self, wins: list[Window], augment: bool = True, *, ctx_override: torch.Tensor | None = None,
              knot_override: torch.Tensor | None = None, fixed_sigma: float | None = None) -> Batch:
        tc, scfg, dev = self.tc, self.scfg, self.device
        c, k = scfg.chunk, scfg.knot
        f = c + k
        with torch.no_grad():
            ref, ref_lms, im, lm = self.images(wins, augment)
            g = self.guides(ref, ref_lms, lm)  # (B, n, 3, S, S)
            b, n = im.shape[:2]
            n_ctx = wins[0].n_ctx
            if self.region is not None:
                ref, im, g, weight = self._cut_region(ref, ref_lms, im, lm, g, n_ctx, augment)
                lm = None
            s = im.shape[-1]
            if self.region is None:
                weight = region_weights(lm[:, n_ctx:], s, tc.region_extra)  # (B, F, 1, S, S)
            # soft mouth/eye regions of every frame, [0, 1]: (B, n, 1, S, S)
            region = region_weights(lm, s, 1.0) - 1.0 if tc.target == "masked_guide" and lm is not None else None
            g_raw = g.clone()
            # live streams hold the last known guide for the k knot frames
            if k and tc.p_hold_guide > 0:
                hold = (self._rand(b) < (tc.p_hold_guide if augment else 1.0)).view(b, 1, 1, 1, 1)
                held = g[:, n_ctx + c - 1: n_ctx + c].expand(-1, k, -1, -1, -1)
                g[:, n_ctx + c:] = torch.where(hold, held, g[:, n_ctx + c:])
            if augment and tc.p_flip > 0:
                flip = (self._rand(b) < tc.p_flip).view(b, 1, 1, 1, 1)
                fl = lambda x: torch.where(flip, x.flip(-1), x)  # noqa: E731
                im, g, g_raw, weight = fl(im), fl(g), fl(g_raw), fl(weight)
                region = fl(region) if region is not None else None
                ref = torch.where(flip[:, 0], ref.flip(-1), ref)
            x = _to_codec(im)  # (B, n, 3, S, S)
            if region is not None:
                # The model is taught to correct the guide only where the guide
                # is wrong (mouth, lids): elsewhere the target IS the guide. With
                # real frames there, it learned to paint its few training clips'
                # backgrounds and skin into unseen portraits (issue 12's first run).
                graw_c = _to_codec(g_raw)
                x = graw_c + region * (x - graw_c)
            gc = _to_codec(g)
            refc = _to_codec(ref)
            C = x.shape[2]
            frames = torch.zeros(b, 1 + n, 3 * C + 1, *im.shape[-2:], device=dev)
            sigma = torch.zeros(b, 1 + n, device=dev)
            frames[:, 0, :C] = refc
            frames[:, 0, C:2 * C] = refc
            # context (diffusion forcing: noisy ground truth, or the model's own frames)
            if n_ctx:
                ctx = x[:, :n_ctx] if ctx_override is None else ctx_override
                if ctx_override is None and augment and tc.p_ctx_noise > 0:
                    sc = self._rand(b, 1) * tc.ctx_sigma_max * (self._rand(b, 1) < tc.p_ctx_noise)
                    sc = sc.expand(b, n_ctx)
                    noise = torch.randn(ctx.shape, generator=self.gen, device=dev)
                    ctx = (1 - sc[..., None, None, None]) * ctx + sc[..., None, None, None] * noise
                    sigma[:, 1:1 + n_ctx] = sc
                frames[:, 1:1 + n_ctx, :C] = ctx
                frames[:, 1:1 + n_ctx, C:2 * C] = gc[:, :n_ctx]
            # chunk
            x0 = x[:, n_ctx:]
            if fixed_sigma is None:
                shift = tc.t_shift if tc.t_shift is not None else scfg.shift
                sg = sample_training_sigmas(b, shift=shift, mean=tc.t_mean, std=tc.t_std, generator=self.gen,
                                            device=dev).clamp(1e-3, 1.0)
            else:
                sg = torch.full((b,), fixed_sigma, device=dev)
            noise = torch.randn(x0.shape, generator=self.gen, device=dev)
            xt = (1 - sg.view(b, 1, 1, 1, 1)) * x0 + sg.view(b, 1, 1, 1, 1) * noise
            o = 1 + n_ctx
            frames[:, o:, :C] = xt
            frames[:, o:, C:2 * C] = gc[:, n_ctx:]
            sigma[:, o:] = sg[:, None]
            if k:
                has = torch.tensor([w.knot for w in wins], device=dev).view(b, 1, 1, 1, 1)
                if knot_override is not None:
                    kn = knot_override
                else:
                    kn = x0[:, :k] + tc.knot_noise * self._rand(b, 1, 1, 1, 1) * torch.randn(
                        x0[:, :k].shape, generator=self.gen, device=dev)
                frames[:, o:o + k, 2 * C:2 * C + 1] = has.float()
                frames[:, o:o + k, 2 * C + 1:] = torch.where(has, kn, torch.zeros_like(kn))
            t_pos = torch.from_numpy(wins[0].t_pos).to(dev)
            mask = context_frame_mask(scfg, wins[0].chunk_start, n_ctx).to(dev)
        return Batch(frames, sigma, t_pos, mask, x0, weight, n_ctx, ref_img=ref, guides_img=g_raw)


def chunk_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, tc: TrainConfig) -> torch.Tensor:
    d = pred.float() - target
    w = weight / weight.mean(dim=(-2, -1), keepdim=True)
    loss = (w * (tc.l1 * d.abs() + tc.mse * d * d)).mean()
    if tc.grad:
        # d's differences = pred's minus target's: (..., H, W-1) and (..., H-1, W)
        gx = (d[..., :, 1:] - d[..., :, :-1]).abs() * w[..., :, 1:]
        gy = (d[..., 1:, :] - d[..., :-1, :]).abs() * w[..., 1:, :]
        loss = loss + tc.grad * (gx.mean() + gy.mean())
    return loss


# --------------------------------------------------------------------------
# checkpoint I/O (safetensors + JSON, never pickle)
# --------------------------------------------------------------------------
def _save_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, ema: dict[str, torch.Tensor] | None,
                meta: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors: dict[str, torch.Tensor] = {}
    for n, p in model.state_dict().items():
        tensors[f"param.{n}"] = p.detach().float().cpu().contiguous()
    sd = opt.state_dict()
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{key}"] = v.detach().cpu().contiguous().reshape(v.shape)
    if ema is not None:
        for n, v in ema.items():
            tensors[f"ema.{n}"] = v.detach().float().cpu().contiguous()
    save_file(tensors, str(tmp / "trainer.safetensors"))
    meta = dict(meta, param_groups=sd["param_groups"])
    # state.json is written last, through its own rename: a directory with a
    # readable state.json is complete, whatever name a kill left it under
    # (find_state picks the newest complete one)
    (tmp / "state.json.part").write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(tmp / "state.json.part", tmp / "state.json")
    if path.exists():
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


class ResumeError(EngineError):
    """--resume with nothing (complete) to resume, or a fresh run over an old one."""


def _state_step(d: Path) -> int | None:
    """The step of a complete state directory, None if it is not one."""
    try:
        meta = json.loads((d / "state.json").read_text())
        if not (d / "trainer.safetensors").is_file():
            return None
        return int(meta["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_state(out: Path) -> Path | None:
    """The newest complete training state in ``out``: ``state/``, or what a
    kill between the checkpoint's renames left (``state.old/``, ``state.tmp/``)."""
    found = [(st, d) for d in (out / "state", out / "state.old", out / "state.tmp")
             if d.is_dir() and (st := _state_step(d)) is not None]
    return max(found, key=lambda x: x[0])[1] if found else None


def _load_state(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                ema: dict[str, torch.Tensor] | None) -> dict[str, Any]:
    from safetensors.torch import load_file

    meta = json.loads((path / "state.json").read_text())
    t = load_file(str(path / "trainer.safetensors"), device="cpu")
    model.load_state_dict({n[6:]: v for n, v in t.items() if n.startswith("param.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for n, v in t.items():
        if n.startswith("opt."):
            _, idx, key = n.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if ema is not None:
        params = dict(model.named_parameters())
        for n in ema:
            # a run that turns EMA on at a resumption starts its average at the loaded weights
            ema[n].copy_(t[f"ema.{n}"] if f"ema.{n}" in t else params[n].detach().float())
    return meta


# --------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------
def _fmt_time(s: float) -> str:
    s = int(max(0, s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Trainer:
    def __init__(self, tc: TrainConfig, log: Callable[[str], None] | None = None) -> None:
        self.tc = tc
        self.device = pick_device(tc.device)
        self.out = Path(tc.out)
        # the dataset is read before anything is written: a wrong --data
        # leaves no empty run folder behind
        self.manifest, self.clips = load_clips(tc.data)
        self.out.mkdir(parents=True, exist_ok=True)
        self._logf = open(self.out / "train.log", "a")
        self._user_log = log if log is not None else (lambda m: print(m, flush=True))
        torch.manual_seed(tc.seed)
        self.mcfg, self.scfg = model_and_stream_config(tc)
        size = self.manifest["size"]
        self.region = (RegionSpec.for_model(self.mcfg.height, self.mcfg.width, width_eyes=tc.region_width_eyes)
                       if uses_region(tc) else None)
        if self.region is not None and tc.stage != "diffusion":
            raise ValueError("the mouth-region model trains with --stage diffusion")
        if self.region is None and (self.mcfg.height != size or self.mcfg.width != size):
            raise ValueError(f"dataset crops are {size}px but the model is {self.mcfg.height}x{self.mcfg.width}: "
                             f"rebuild the dataset with --size {self.mcfg.height} or pass --size {size}")
        spec = SampleSpec(**tc.sample)
        self.sampler = WindowSampler(self.clips, self.scfg, spec, seed=tc.seed)
        self.eval_sampler = WindowSampler(self.clips, self.scfg, dataclasses.replace(spec, p_still=0.0),
                                          seed=10_000 + tc.seed, split="heldout")
        self.builder = BatchBuilder(self.clips, self.scfg, tc, self.device, tc.seed)
        if self.region is not None:
            self.builder.use_region(self.region)
        self.model: KnotForcingDiT = build_model(self.mcfg, seed=tc.seed, device=self.device)
        # lineage: a run started from committed weights (--init) continues
        # their step and sample counts in the training record
        self.base_steps, self.base_samples = 0, 0
        if tc.init:
            m, init_info = load_model(tc.init, device=self.device)
            if m.cfg != self.mcfg:
                raise ValueError(f"--init {tc.init}: its ModelConfig differs from preset {tc.preset!r}")
            self.model.load_state_dict({n: v.float() for n, v in m.state_dict().items()})
            self.base_steps = int(init_info.training.get("steps") or 0)
            self.base_samples = int(init_info.training.get("samples_seen") or 0)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                                     betas=(0.9, 0.99))
        self.ema = ({n: p.detach().clone().float() for n, p in self.model.named_parameters()} if tc.ema > 0 else None)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.eval_history: list[dict[str, float]] = []
        self.data_hashes = {c.name: c.sha256 for c in self.clips}
        # CPU time (this process) and wall time across resumptions: the
        # training record says how much compute the weights cost
        self.base_cpu_s, self.base_wall_s = 0.0, 0.0
        self._cpu0, self._wall0 = time.process_time(), time.monotonic()
        self.best: dict[str, Any] = {}
        self.segments = []
        if self.region is not None and tc.stream_eval:
            from engine.training.mouth_eval import pick_segments

            self.segments = pick_segments(self.clips, tc.stream_eval_frames)
        state_dir = find_state(self.out)
        if tc.resume and state_dir is None:
            raise ResumeError(f"--resume: no complete training state in {self.out} (state/ is missing or damaged)",
                              f"check --out, or drop --resume to start a new run in another folder")
        if not tc.resume and (state_dir is not None or (self.out / "model" / "config.json").is_file()):
            raise ResumeError(f"{self.out} already holds a training run",
                              "pass --resume to continue it, or choose another --out (its model/ is never replaced "
                              "by a new run)")
        if tc.resume:
            meta = _load_state(state_dir, self.model, self.opt, self.ema)
            self.step = int(meta["step"])
            self.base_steps = int(meta.get("base_steps", self.base_steps))
            self.base_samples = int(meta.get("base_samples", self.base_samples))
            self.history = meta.get("history", [])
            self.eval_history = meta.get("eval_history", [])
            self.base_cpu_s = float(meta.get("cpu_s", 0.0))
            self.base_wall_s = float(meta.get("wall_s", 0.0))
            self.best = meta.get("best", {})
            self.log(f"resumed from {state_dir} at step {self.step} ({self.samples_seen()} samples, "
                     f"{self.base_cpu_s / 3600:.2f} CPU-hours so far)")
        self.autocast = tc.bf16 and (self.device.type == "cuda" or cpu_has_native_bf16())
        self.log(f"model {count_parameters(self.model) / 1e6:.2f} M params, preset {tc.preset}, "
                 f"{self.mcfg.height}x{self.mcfg.width}px{' mouth region' if self.region else ''}, stage {tc.stage}, device {self.device}"
                 f"{' bf16' if self.autocast else ''}, {sum(c.n_train for c in self.clips)} train frames "
                 f"in {len(self.clips)} clips")

    def log(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self._logf.write(line + "\n")
        self._logf.flush()
        self._user_log(line)

    # ---- one forward -----------------------------------------------------------------
    def _forward(self, batch: Batch) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            x0 = self.model.forward_full(batch.frames, batch.sigma, batch.t_pos, batch.mask)
        return x0[:, 1 + batch.n_ctx:]

    def _lr(self) -> float:
        tc = self.tc
        if tc.warmup and self.step < tc.warmup:
            return tc.lr * (self.step + 1) / tc.warmup
        return tc.lr

    # ---- self forcing: context from the model's own rollout ------------------------------
    @torch.no_grad()
    def rollout_context(self, batch: Batch, wins: list[Window]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the inference stream over the chunks before the trained one
        (same reference and guides) -> (context frames (B, n_ctx, C, H, W) codec
        space, knot (B, k, C, H, W) or None)."""
        from engine.stream import KnotForcingStream

        scfg = self.scfg
        c = scfg.chunk
        n_ctx = batch.n_ctx
        start = wins[0].chunk_start  # stream frame index of the trained chunk
        pre = batch.guides_img[:, :n_ctx]  # (B, n_ctx, 3, S, S) guides of the context frames
        b = pre.shape[0]
        self.model.eval()
        st = KnotForcingStream(self.model, scfg, batch_size=b, seed=int(self.step), allow_untrained=True,
                               check_values=False)
        st.set_reference(batch.ref_img.clamp(0, 1))
        # the stream starts at frame 0; earlier frames than the window repeat the first guide
        lead = start - n_ctx
        outs = []
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            for j in range(start):
                g = pre[:, max(0, j - lead)] if j >= lead else pre[:, 0]
                o = st.feed(g.clamp(0, 1))
                if o is not None:
                    outs.append(o)
        self.model.train()
        gen = torch.cat(outs, 1) if outs else batch.ref_img[:, None, :, :, :][:, :0]
        ctx = _to_codec(gen[:, gen.shape[1] - n_ctx:]).float()
        knot = st.knot.float().clone() if (scfg.knot and start > 0) else None
        return ctx, knot

    def train_step(self) -> float:
        tc = self.tc
        wins = self.sampler.sample_batch(tc.batch)
        batch = self.builder.build(wins)
        if tc.stage == "self_forcing" and batch.n_ctx > 0 and self.builder._rand(1).item() < tc.sf_prob:
            ctx, knot = self.rollout_context(batch, wins)
            for w in wins:  # the stream always has a knot after its first chunk
                w.knot = knot is not None
            batch = self._rebuild_with(batch, wins, ctx, knot)
        for g in self.opt.param_groups:
            g["lr"] = self._lr()
        pred = self._forward(batch)
        loss = chunk_loss(pred, batch.target, batch.weight, tc)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        if self.ema is not None:
            with torch.no_grad():
                d = min(tc.ema, (1 + self.step) / (10 + self.step))
                for n, p in self.model.named_parameters():
                    self.ema[n].lerp_(p.detach().float(), 1 - d)
        self.step += 1
        return float(loss.detach())

    def _rebuild_with(self, batch: Batch, wins: list[Window], ctx: torch.Tensor, knot: torch.Tensor | None) -> Batch:
        """Replace the context (and knot) of an assembled batch by the rollout's
        (clean frames at sigma 0, as the stream's clean pass gives them)."""
        C = ctx.shape[2]
        n_ctx = batch.n_ctx
        frames, sigma = batch.frames.clone(), batch.sigma.clone()
        frames[:, 1:1 + n_ctx, :C] = ctx
        sigma[:, 1:1 + n_ctx] = 0.0
        k = self.scfg.knot
        if k:
            o = 1 + n_ctx
            if knot is not None:
                frames[:, o:o + k, 2 * C] = 1.0
                frames[:, o:o + k, 2 * C + 1:] = knot
            else:
                frames[:, o:o + k, 2 * C:] = 0.0
        return dataclasses.replace(batch, frames=frames, sigma=sigma)

    @torch.no_grad()
    def heldout_loss(self) -> float:
        """Loss on held-out windows (fixed seed, fixed sigmas, no augmentation)."""
        self.model.eval()
        sampler = WindowSampler(self.clips, self.scfg, self.eval_sampler.spec, seed=4242, split="heldout")
        builder = BatchBuilder(self.clips, self.scfg, self.tc, self.device, 4242)
        if self.region is not None:
            builder.use_region(self.region)
        tot, n = 0.0, 0
        for i in range(self.tc.eval_batches):
            wins = sampler.sample_batch(self.tc.batch)
            for s in (0.3, 0.6, 0.9):
                b = builder.build(wins, augment=False, fixed_sigma=s)
                tot += float(chunk_loss(self._forward(b), b.target, b.weight, self.tc))
                n += 1
        self.model.train()
        return tot / max(n, 1)

    def cpu_seconds(self) -> float:
        return self.base_cpu_s + time.process_time() - self._cpu0

    def wall_seconds(self) -> float:
        return self.base_wall_s + time.monotonic() - self._wall0

    def stream_eval(self) -> dict[str, float]:
        """Held-out streaming mouth PSNR (mouth_eval.py); keeps OUT/best."""
        from engine.training.mouth_eval import gain, stream_mouth_psnr

        if not self.segments:
            return {}
        t0 = time.monotonic()
        res = stream_mouth_psnr(self.shipped_weights(), self.scfg, self.clips, self.segments, self.tc.stream_eval_frames,
                                self.region, self.device, self.autocast)
        g = gain(res)
        res["gain"] = round(g, 3)
        self.log(f"stream eval at step {self.step} ({time.monotonic() - t0:.0f} s): " +
                 ", ".join(f"{k} {v:.2f}" for k, v in res.items()))
        if math.isfinite(g) and g > self.best.get("gain", -1e9) and self.step > 0:
            self.best = {"gain": g, "step": self.base_steps + self.step, "samples": self.samples_seen(),
                         "stream": res}
            self.export_model(self.out / "best")
            self.log(f"best so far (gain {g:+.3f} dB) -> {self.out / 'best'}")
        return res

    def samples_seen(self) -> int:
        return self.base_samples + self.step * self.tc.batch

    # ---- checkpoint -------------------------------------------------------------------
    def shipped_weights(self) -> KnotForcingDiT:
        """What export_model writes (and stream_eval measures): the EMA
        weights when EMA is on, else the model itself."""
        if self.ema is None:
            return self.model
        model = build_model(self.mcfg, device=self.device)
        model.load_state_dict({n: self.ema[n] for n in self.ema}, strict=False)
        return model

    def export_model(self, directory: Path) -> None:
        tc = self.tc
        model = self.shipped_weights()
        recent = [h["loss"] for h in self.history[-50:]]
        info = {
            "steps": self.base_steps + self.step,
            "steps_this_run": self.step,
            "samples_seen": self.samples_seen(),
            "cpu_hours": round(self.cpu_seconds() / 3600, 4),
            "wall_hours": round(self.wall_seconds() / 3600, 3),
            "device": self.device.type,
            "region": self.region.to_record() if self.region is not None else None,
            "stream_eval": self.eval_history[-1].get("stream") if self.eval_history else None,
            "best": self.best or None,
            "stage": tc.stage,
            "preset": tc.preset,
            "stream_config": self.scfg.to_dict(),
            "loss_recent": float(np.mean(recent)) if recent else None,
            "heldout_loss": self.eval_history[-1]["loss"] if self.eval_history else None,
            "data": {"manifest_format": self.manifest.get("format"), "size": self.manifest["size"],
                     "clips": self.data_hashes,
                     "held_out": {c.name: [c.n_train, len(c)] for c in self.clips}},
            "train_config": {k: v for k, v in tc.to_dict().items() if k not in ("data", "out")},
            "ema": tc.ema,
        }
        save_model(model, directory, trained=True, training=info, dtype=getattr(torch, tc.save_dtype),
                   max_shard_bytes=tc.max_shard_bytes)

    def checkpoint(self) -> None:
        t0 = time.monotonic()
        self.export_model(self.out / "model")
        _save_state(self.out / "state", self.model, self.opt, self.ema,
                    {"step": self.step, "history": self.history[-2000:], "eval_history": self.eval_history,
                     "train_config": self.tc.to_dict(), "data": self.data_hashes,
                     "base_steps": self.base_steps, "base_samples": self.base_samples,
                     "cpu_s": self.cpu_seconds(), "wall_s": self.wall_seconds(), "best": self.best})
        self.log(f"checkpoint at step {self.step} -> {self.out / 'model'} ({time.monotonic() - t0:.1f} s)")

    # ---- loop -----------------------------------------------------------------------------
    def _evaluate(self) -> None:
        entry: dict[str, Any] = {"step": self.step, "loss": self.heldout_loss(),
                                 "samples": self.samples_seen(), "cpu_hours": round(self.cpu_seconds() / 3600, 3)}
        self.log(f"held-out loss at step {self.step}: {entry['loss']:.4f}")
        if self.segments:
            entry["stream"] = self.stream_eval()
        self.eval_history.append(entry)

    def run(self) -> dict[str, Any]:
        tc = self.tc
        t_start = time.monotonic()
        if not self.eval_history or self.eval_history[-1]["step"] != self.step:
            self._evaluate()
        first_step = self.step
        t0 = last_ckpt = time.monotonic()
        last_t, last_s = t0, self.step
        run_losses = []
        stopped = "done"
        while self.step < tc.steps:
            loss = self.train_step()
            run_losses.append(loss)
            self.history.append({"step": self.step, "loss": loss})
            if not math.isfinite(loss):
                self.log(f"loss is {loss} at step {self.step}: stopping without a checkpoint")
                stopped = "nan"
                break
            if self.step % tc.log_every == 0 or self.step == tc.steps:
                now = time.monotonic()
                rate = (self.step - last_s) / max(now - last_t, 1e-9)
                avg = float(np.mean([h["loss"] for h in self.history[-tc.log_every:]]))
                eta = (tc.steps - self.step) / max((self.step - first_step) / (now - t0), 1e-9)
                self.log(f"step {self.step}/{tc.steps} loss {loss:.4f} (avg {avg:.4f}) "
                         f"lr {self._lr():.2e} {rate:.2f} it/s ETA {_fmt_time(eta)}")
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": self.step, "loss": avg, "it_s": rate}) + "\n")
                last_t, last_s = now, self.step
            if tc.eval_every and self.step % tc.eval_every == 0:
                self._evaluate()
            due = tc.ckpt_every and self.step % tc.ckpt_every == 0
            if tc.ckpt_minutes and time.monotonic() - last_ckpt > 60 * tc.ckpt_minutes:
                due = True
            if due and self.step < tc.steps:
                last_ckpt = time.monotonic()
                if self.eval_history[-1]["step"] != self.step:
                    self._evaluate()
                self.checkpoint()
            if tc.max_minutes and time.monotonic() - t_start > 60 * tc.max_minutes:
                self.log(f"time limit of {tc.max_minutes:g} min reached at step {self.step}")
                stopped = "time"
                break
        if stopped != "nan":
            if self.eval_history[-1]["step"] != self.step:
                self._evaluate()
            self.checkpoint()
        self._logf.close()
        return {"step": self.step, "losses": run_losses, "eval": self.eval_history, "stopped": stopped,
                "seconds": time.monotonic() - t_start, "out": str(self.out)}


def train(tc: TrainConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    return Trainer(tc, log).run()
