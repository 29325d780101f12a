"""Many Knot Forcing streams on one engine: the executor of engine/planner.py.

``ServingEngine`` holds a fixed number of preallocated slots. Each slot is
one stream with its own KV_ref, KV_pre ring window, knot, noise generator and
positions, all rows of shared buffers:

    k, v       (depth, N, H, Ncap, Dh)   KV_ref | ring of L frames | tail (c + k frames)
    shadow k,v (depth, N, H, T, Dh)      a portrait switch's KV_ref under construction

One ``step()`` runs one StepPlan (engine/planner.py): the chunk forward of
every scheduled stream batched together (each at its own denoising step,
sigma and RoPE positions; a per-slot key mask while a window fills), and the
plan's prefill pieces fused into the same layer loop: at each block the
linear layers (qkv, proj, MLP) run once over the concatenation of the live
chunks' tokens and the pieces' reference tokens; only attention is per
group. A piece that first touches a layer computes that layer's keys and
values for the whole reference frame (its bidirectional attention is never
split) and pushes its query rows [a, b) through attention and the MLP.

Streams join (their reference prefilled piecewise in the slack, no stall for
the others; frames once it is built) and leave at chunk boundaries. A
portrait switch builds the new KV_ref in the slot's shadow and installs it as
the chunk ``switch_chunks`` after the next one starts, exactly.

A stream alone in a one-slot engine gives the same frames as
KnotForcingStream (same seeds; float tolerance), and streams batched together
equal the same streams run alone. ``EngineStream`` is that one-slot engine
with KnotForcingStream's push/flush interface (the app's generator stage).

Non-finite values: each emitted chunk ORs a per-slot device flag (no host
sync on CUDA: engine/stream.py's NonFiniteWatch); frames that are not finite
are replaced by their guide; a flagged slot starts its next chunk from a
cleared window and an ("nonfinite_recovered", slot) event is returned.

The block arithmetic here mirrors engine/model.py's Block.forward (it is
tested against KnotForcingStream, which runs the model's own forward).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from engine.codec import Codec, IdentityCodec, make_codec
from engine.config import EngineError, StreamConfig
from engine.model import AttnSpec, KnotForcingDiT, apply_rope
from engine.planner import (
    AdmissionError,
    DenoiseWork,
    PlannerConfig,
    PrefillPiece,
    StepPlan,
    StepPlanner,
    default_token_budget,
)
from engine.sampler import FlowMatchSampler
from engine.stream import NonFiniteWatch, StreamInputError, StreamStateError, UntrainedModelError, plan_chunk, sanitize_


@dataclass
class StepResult:
    plan: StepPlan
    frames: dict[int, torch.Tensor] = field(default_factory=dict)  # slot -> (c, 3, H, W) in [0, 1]
    events: list[tuple[str, int]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class _Prefill:
    kind: str
    x_in: torch.Tensor  # (1, T, D) input of the current layer
    x_out: torch.Tensor  # (1, T, D) its output, filled piece by piece
    tcond: torch.Tensor
    q: torch.Tensor | None = None  # (1, H, T, Dh) rotated queries of the current layer
    keys: torch.Tensor | None = None  # (1, H, T, Dh) its rotated keys
    values: torch.Tensor | None = None
    layer: int = -1  # layer whose keys/values are computed


class ServingEngine:
    def __init__(
        self,
        model: KnotForcingDiT,
        config: StreamConfig | None = None,
        *,
        slots: int = 4,
        token_budget: int | None = None,
        codec: Codec | None = None,
        allow_untrained: bool = False,
        check_values: bool | None = None,
        timer=time.perf_counter,
    ) -> None:
        """timer: the clock step times are measured with (for admission);
        a benchmark on a shared CPU passes time.thread_time."""
        cfg = (config or StreamConfig()).validate()
        self._timer = timer
        if not getattr(model, "trained", False) and not allow_untrained:
            raise UntrainedModelError(
                "this model has no trained weights (randomly initialised)",
                "load trained weights with engine.weights.load_model(); without them run guide-only",
            )
        if slots < 1:
            raise StreamInputError("slots must be >= 1", "use one slot or more")
        mc = model.cfg
        self.model, self.cfg, self.mcfg = model, cfg, mc
        self.codec = codec if codec is not None else make_codec(mc)
        self.check_values = check_values
        p = next(model.parameters())
        self.device, self.dtype = dev, dt = p.device, p.dtype
        self.N = n = slots
        self.c, self.k, self.L = c, k, win = cfg.chunk, cfg.knot, cfg.window
        self.F = f = c + k
        self.C, self.H, self.W = C, H, W = mc.in_channels, mc.height, mc.width
        self.T = t = mc.tokens_per_frame
        self.depth = mc.depth
        self.sampler = FlowMatchSampler(cfg.steps, cfg.shift)
        clean = cfg.cache_write == "clean_pass"
        budget = token_budget if token_budget is not None else default_token_budget(n, t, f)
        self.planner = StepPlanner(PlannerConfig(
            slots=n, depth=mc.depth, tokens_per_frame=t, chunk=c, knot=k,
            sigmas=tuple(self.sampler.timesteps), clean_pass=clean, token_budget=budget,
            switch_chunks=cfg.switch_chunks))
        fp32 = torch.float32

        # ---- KV buffers, all slots --------------------------------------------
        self.ref_tokens = t
        self.tail = t + win * t
        self.ncap = self.tail + f * t
        shape = (mc.depth, n, mc.heads, self.ncap, mc.head_dim)
        self.kc = torch.zeros(shape, device=dev, dtype=dt)
        self.vc = torch.zeros(shape, device=dev, dtype=dt)
        sshape = (mc.depth, n, mc.heads, t, mc.head_dim)
        self.shadow_k = torch.zeros(sshape, device=dev, dtype=dt)
        self.shadow_v = torch.zeros(sshape, device=dev, dtype=dt)
        self.frames_written = [0] * n
        # ---- per-slot stream state ----------------------------------------------
        self._guides = torch.zeros(n, f, C, H, W, device=dev, dtype=fp32)
        self._x = torch.zeros(n, f, C, H, W, device=dev, dtype=fp32)
        self._inp = torch.zeros(n, f, mc.frame_channels, H, W, device=dev, dtype=dt)
        self._knot = torch.zeros(n, k, C, H, W, device=dev, dtype=fp32)
        self._committed = torch.zeros(n, c, C, H, W, device=dev, dtype=fp32)
        self._clean_in = torch.zeros(n, c, mc.frame_channels, H, W, device=dev, dtype=dt)
        self._ref_in = torch.zeros(n, 1, mc.frame_channels, H, W, device=dev, dtype=dt)
        self._switch_in = torch.zeros_like(self._ref_in)
        self._last_guide = torch.zeros(n, C, H, W, device=dev, dtype=fp32)
        self._cos = torch.zeros(n, self.ncap, mc.head_dim // 2, device=dev, dtype=dt)
        self._sin = torch.zeros_like(self._cos)
        self._has_knot = [False] * n
        self._n_guides = [0] * n
        self._queue: list[deque] = [deque() for _ in range(n)]
        self._gens: list[torch.Generator | None] = [None] * n
        self._watch = [NonFiniteWatch(dev) for _ in range(n)]
        self._prefill: dict[int, _Prefill] = {}
        self._chunk_of = [0] * n  # chunk the slot's positions were planned for
        # ---- device constants ----------------------------------------------------
        self._sig_steps = [torch.full((f,), s, device=dev, dtype=fp32) for s in self.sampler.timesteps]
        self._sig_zero = torch.zeros(1, f, device=dev, dtype=fp32)
        self._f_arange = torch.arange(f, device=dev, dtype=fp32)
        self._l_arange = torch.arange(win, device=dev)
        self._zero1 = torch.zeros(1, device=dev, dtype=fp32)
        ring_slot = torch.arange(win * t, device=dev) // t
        ones_ref = torch.ones(t, dtype=torch.bool, device=dev)
        ones_tail = torch.ones(f * t, dtype=torch.bool, device=dev)
        self._masks = [torch.cat((ones_ref, ring_slot < nv, ones_tail)) for nv in range(win + 1)]  # (Ncap,)
        self._ref_cos, self._ref_sin = model.rope.angles(self._zero1, dt)  # (T, Dh/2)
        self._idx_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.step_time_s: float | None = None  # EMA of a step's wall time
        self.steps_run = 0

    # ---- properties ----------------------------------------------------------
    @property
    def token_budget(self) -> int:
        return self.planner.cfg.token_budget

    @property
    def streams(self) -> list[int]:
        return sorted(self.planner.streams)

    def is_live(self, slot: int) -> bool:
        s = self.planner.streams.get(slot)
        return s is not None and s.live

    def chunk_index(self, slot: int) -> int:
        return self.planner.streams[slot].chunk

    def switch_pending(self, slot: int) -> bool:
        s = self.planner.streams.get(slot)
        return s is not None and s.prefill is not None and s.prefill.kind == "switch"

    # ---- inputs ----------------------------------------------------------------
    def _encode(self, name: str, img: torch.Tensor) -> torch.Tensor:
        """(1, 3, H*, W*) or (3, H*, W*) in [0, 1] -> (C, H, W) codec space."""
        if isinstance(img, torch.Tensor) and img.dim() == 3:
            img = img[None]
        d = self.codec.downsample
        want = (1, 3, self.H * d, self.W * d)
        if not isinstance(img, torch.Tensor) or tuple(img.shape) != want or not img.is_floating_point():
            got = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise StreamInputError(f"{name} must be a float {want} tensor in [0, 1], got {got}",
                                   f"resize/crop to {want[2]}x{want[3]}")
        check = self.check_values if self.check_values is not None else img.device.type == "cpu"
        if check and not bool(torch.isfinite(img).all()):
            raise StreamInputError(f"{name} contains NaN or Inf", "check the upstream frame source")
        x = img.to(device=self.device, dtype=torch.float32).clamp(0.0, 1.0)
        return self.codec.encode(x)[0]

    def _write_reference_input(self, dst: torch.Tensor, slot: int, ref: torch.Tensor) -> None:
        C = self.C
        dst[slot].zero_()
        dst[slot, 0, :C].copy_(ref)
        dst[slot, 0, C : 2 * C].copy_(ref)

    # ---- joining, leaving, switching ----------------------------------------------
    def join(self, reference: torch.Tensor, *, seed: int = 0, fps: float = 25.0, slot: int | None = None,
             blocking: bool = False) -> int:
        """Admit a stream with portrait ``reference`` (1, 3, H, W). Its KV_ref
        is prefilled piecewise in the next steps' slack (``blocking=True``:
        now, in one forward, for a first stream with nothing to stall).
        Raises AdmissionError when no slot is free or the streams would miss
        their deadlines at the measured step time."""
        ref = self._encode("reference", reference)
        step_time = None if blocking else self.step_time_s
        if blocking:
            if slot is None:
                free = self.planner.free_slots
                if not free:
                    raise AdmissionError(f"all {self.N} slots are in use")
                slot = free[0]
            self.planner.join_ready(slot, fps=fps)
        else:
            slot = self.planner.join(slot, fps=fps, step_time_s=step_time)
        self._clear_slot(slot)
        self._gens[slot] = torch.Generator(device=self.device).manual_seed(int(seed))
        self._write_reference_input(self._ref_in, slot, ref)
        if blocking:
            self._prefill_now(slot)
        else:
            self._start_prefill(slot, "join")
        return slot

    def switch(self, slot: int, reference: torch.Tensor) -> int:
        """A new portrait for a streaming slot, without a stall. Returns the
        chunk index that is the first to use it."""
        ref = self._encode("reference", reference)
        if not self.is_live(slot):  # still joining: restart its prefill with the new portrait
            self.planner.begin_switch(slot)
            self._write_reference_input(self._ref_in, slot, ref)
            self._start_prefill(slot, "join")
            return 0
        swap_at = self.planner.begin_switch(slot)
        self._write_reference_input(self._switch_in, slot, ref)
        self._start_prefill(slot, "switch")
        return swap_at

    def leave(self, slot: int) -> bool:
        """Leave at a chunk boundary (now, or after the chunk in flight).
        True when the slot is free now."""
        if self.planner.leave(slot):
            self._free(slot)
            return True
        return False

    def feed(self, slot: int, guide: torch.Tensor, now: float | None = None) -> None:
        """Queue the next motion guide (1, 3, H, W) of stream ``slot``. A
        stream that is still joining keeps only the newest chunk's guides."""
        if slot not in self.planner.streams:
            raise StreamStateError(f"slot {slot} has no stream", "join() first")
        q = self._queue[slot]
        q.append((self._encode("guide", guide), time.monotonic() if now is None else now))
        if not self.is_live(slot):
            while len(q) > self.c:
                q.popleft()
        self._pull_guides(slot)

    def _pull_guides(self, slot: int) -> None:
        s = self.planner.streams.get(slot)
        if s is None or s.step != 0 or s.ready:
            return
        need = self.F if self.cfg.knot_guide == "wait" else self.c
        q = self._queue[slot]
        while self._n_guides[slot] < need and q:
            g, t_arr = q.popleft()
            self._guides[slot, self._n_guides[slot]].copy_(g)
            self._n_guides[slot] += 1
            if self._n_guides[slot] == need:
                self.planner.mark_ready(slot, deadline=t_arr + self.c / s.fps)

    # ---- slot state ----------------------------------------------------------------
    def _clear_slot(self, slot: int) -> None:
        r = self.ref_tokens
        self.kc[:, slot, :, r:].zero_()
        self.vc[:, slot, :, r:].zero_()
        self.frames_written[slot] = 0
        self._has_knot[slot] = False
        self._knot[slot].zero_()
        self._x[slot].zero_()
        self._committed[slot].zero_()
        self._watch[slot].clear()

    def _free(self, slot: int) -> None:
        self._clear_slot(slot)
        self.kc[:, slot].zero_()
        self.vc[:, slot].zero_()
        self._queue[slot].clear()
        self._n_guides[slot] = 0
        self._prefill.pop(slot, None)
        self._gens[slot] = None

    def _start_prefill(self, slot: int, kind: str) -> None:
        src = self._ref_in if kind == "join" else self._switch_in
        with torch.no_grad():
            x = self.model.embed(src[slot : slot + 1])[:, 0]  # (1, T, D)
            tcond = self.model.time_condition(self._sig_zero[:, :1])[1]
        self._prefill[slot] = _Prefill(kind, x, torch.empty_like(x), tcond)

    def _prefill_now(self, slot: int) -> None:
        cos, sin = self._ref_cos, self._ref_sin
        spec = AttnSpec(cos_q=cos, sin_q=sin, k_cache=self.kc[:, slot : slot + 1], v_cache=self.vc[:, slot : slot + 1],
                        write_at=0, n_keys=self.T, cos_k=cos, sin_k=sin)
        with torch.no_grad():
            self.model(self._ref_in[slot : slot + 1], self._sig_zero[:, :1], spec, kv_only=True)

    def _idx(self, slots: Sequence[int]) -> torch.Tensor:
        key = tuple(slots)
        t = self._idx_cache.get(key)
        if t is None:
            t = self._idx_cache[key] = torch.tensor(key, device=self.device, dtype=torch.long)
        return t

    # ---- chunk boundaries -------------------------------------------------------------
    def _start_chunk(self, w: DenoiseWork, events: list) -> None:
        b = w.slot
        if self._watch[b].poll():
            self._clear_slot(b)
            events.append(("nonfinite_recovered", b))
            # positions restart with the window: the chunk counter of the slot
            self.planner.streams[b].chunk = 0
            w = DenoiseWork(**{**w.__dict__, "chunk": 0})
        if w.swap_reference:
            r = self.ref_tokens
            self.kc[:, b, :, :r].copy_(self.shadow_k[:, b])
            self.vc[:, b, :, :r].copy_(self.shadow_v[:, b])
            self._ref_in[b].copy_(self._switch_in[b])
        plan = plan_chunk(self.cfg, w.chunk)
        if plan.start != self.frames_written[b]:
            raise StreamStateError("internal: chunk plan and KV cache disagree", "leave and join again")
        self._chunk_of[b] = w.chunk
        ring = torch.remainder(self._l_arange - plan.window_start, self.L).to(torch.float32)
        pos = torch.cat((self._zero1 + plan.ref_rel, ring, self._f_arange + plan.chunk_rel))
        cos, sin = self.model.rope.angles(pos, self.dtype)
        self._cos[b].copy_(cos)
        self._sin[b].copy_(sin)
        # knot guides, condition, noise (as KnotForcingStream does)
        c, k, C = self.c, self.k, self.C
        if k and self.cfg.knot_guide != "wait":
            last = self._guides[b, c - 1]
            if self.cfg.knot_guide == "hold":
                self._guides[b, c:].copy_(last[None].expand(k, -1, -1, -1))
            else:
                prev = self._guides[b, c - 2] if c >= 2 else self._last_guide[b]
                steps = torch.arange(1, k + 1, device=self.device, dtype=torch.float32).view(k, 1, 1, 1)
                ext = last[None] + steps * (last - prev)[None]
                if isinstance(self.codec, IdentityCodec):
                    ext = ext.clamp_(-1.0, 1.0)
                self._guides[b, c:].copy_(ext)
        inp = self._inp[b]
        inp[:, C : 2 * C].copy_(self._guides[b])
        inp[:, 2 * C :].zero_()
        if self._has_knot[b]:
            inp[:k, 2 * C].fill_(1.0)
            inp[:k, 2 * C + 1 :].copy_(self._knot[b])
        torch.randn(self._x.shape[1:], generator=self._gens[b], device=self.device, dtype=torch.float32,
                    out=self._x[b])

    def _commit(self, b: int) -> None:
        t, win, n = self.T, self.L, self.c
        first = self.frames_written[b] % win
        done = 0
        while done < n:
            slot = (first + done) % win
            run = min(n - done, win - slot)
            dst = slice(t + slot * t, t + (slot + run) * t)
            src = slice(self.tail + done * t, self.tail + (done + run) * t)
            self.kc[:, b, :, dst].copy_(self.kc[:, b, :, src])
            self.vc[:, b, :, dst].copy_(self.vc[:, b, :, src])
            done += run
        self.frames_written[b] += n

    def _finish_chunk(self, b: int) -> torch.Tensor:
        """After the last denoising step: commit frames, fuse the knot."""
        c, k, C = self.c, self.k, self.C
        pred = self._x[b]
        self._committed[b].copy_(pred[:c])
        if self._has_knot[b]:
            torch.add(self._knot[b], pred[:k], out=self._committed[b, :k]).mul_(0.5)
        if k:
            self._knot[b].copy_(pred[c:])
        self._watch[b].record(pred)
        sanitize_(self._committed[b], self._guides[b, :c])
        self._has_knot[b] = k > 0
        self._last_guide[b].copy_(self._guides[b, c - 1])
        self._clean_in[b, :, :C].copy_(self._committed[b])
        self._clean_in[b, :, C : 2 * C].copy_(self._guides[b, :c])
        self._clean_in[b, :, 2 * C :].zero_()
        if self.cfg.knot_guide == "wait" and k:
            self._guides[b, :k].copy_(self._guides[b, c:])
            self._n_guides[b] = k
        else:
            self._n_guides[b] = 0
        try:
            imgs = self.codec.decode(self._committed[b])
        except EngineError:
            imgs = self._committed[b].clone()
        return imgs

    # ---- one step -----------------------------------------------------------------------
    def step(self) -> StepResult:
        """Plan and run one engine step."""
        for s in list(self.planner.streams):
            self._pull_guides(s)
        plan = self.planner.schedule()
        res = StepResult(plan)
        if plan.is_empty:
            return res
        t0 = self._timer()
        with torch.no_grad():
            for w in plan.denoise:
                if w.step == 0:
                    self._start_chunk(w, res.events)
            self._run(plan)
            S = self.cfg.steps
            for w in plan.denoise:
                if w.emits:
                    res.frames[w.slot] = self._finish_chunk(w.slot)
                    if self.cfg.cache_write == "reuse_last_step":
                        self._commit(w.slot)
                elif w.step >= S:  # clean pass done
                    self._commit(w.slot)
        events = self.planner.update(plan)
        for kind, slot in events:
            if kind == "left":
                self._free(slot)
            elif kind == "chunk_done":
                self._pull_guides(slot)
        res.events += [e for e in events if e[0] in ("joined", "swapped", "left")]
        res.seconds = self._timer() - t0
        self.steps_run += 1
        a = 0.2
        self.step_time_s = res.seconds if self.step_time_s is None else (1 - a) * self.step_time_s + a * res.seconds
        return res

    def run_ready(self, max_steps: int = 1000) -> list[StepResult]:
        """Steps until no stream has runnable work (side work included)."""
        out = []
        for _ in range(max_steps):
            r = self.step()
            if r.plan.is_empty:
                break
            out.append(r)
        return out

    # ---- the fused forward -------------------------------------------------------------------
    def _run(self, plan: StepPlan) -> None:
        model, T = self.model, self.T
        groups = []
        den = [w for w in plan.denoise if not w.clean_pass]
        cln = [w for w in plan.denoise if w.clean_pass]
        for works, clean in ((den, False), (cln, True)):
            if not works:
                continue
            slots = [w.slot for w in works]
            idx = self._idx(slots)
            nf = self.c if clean else self.F
            if clean:
                frames = self._clean_in.index_select(0, idx)
                sigma = self._sig_zero[:, :nf].expand(len(works), -1)
            else:
                self._inp[:, :, : self.C].index_copy_(0, idx, self._x.index_select(0, idx).to(self.dtype))
                frames = self._inp.index_select(0, idx)
                sigma = torch.stack([self._sig_steps[w.step] for w in works])
            temb, tcond = model.time_condition(sigma)
            nv = [min(self.frames_written[s], self.L) for s in slots]
            nk = self.tail + nf * T
            mask = None
            if any(v < self.L for v in nv):
                mask = torch.stack([self._masks[v][:nk] for v in nv]).view(len(works), 1, 1, nk)
            cos, sin = self._cos.index_select(0, idx)[:, None], self._sin.index_select(0, idx)[:, None]
            groups.append(dict(works=works, idx=idx, clean=clean, nf=nf, x=model.embed(frames), temb=temb,
                               tcond=tcond, mask=mask, nk=nk, cos_k=cos[:, :, :nk], sin_k=sin[:, :, :nk],
                               cos_q=cos[:, :, self.tail : nk], sin_q=sin[:, :, self.tail : nk], frames=frames))
        pieces = {p.slot: p for p in plan.prefill}
        ranges = {p.slot: {l: (a, b) for l, a, b in p.layer_ranges()} for p in plan.prefill}
        last = self.depth - 1
        for li, blk in enumerate(model.blocks):
            hs, metas = [], []
            for g in groups:
                if g["x"] is None:
                    continue
                mod = blk.modulation(g["tcond"]).unsqueeze(2)  # (B, nf, 1, 6, D)
                g["mod"] = mod.unbind(3)
                sh1, sc1 = g["mod"][0], g["mod"][1]
                b_, f_, t_, d_ = g["x"].shape
                hs.append((blk.norm1(g["x"]) * (1 + sc1) + sh1).reshape(b_, f_ * t_, d_))
                metas.append(("g", g))
            for slot, rr in ranges.items():
                if li not in rr:
                    continue
                pf = self._prefill[slot]
                if pf.layer != li:  # first touch: this layer's K/V for the whole frame
                    mod = blk.modulation(pf.tcond).unsqueeze(2)[:, 0]  # (1, 1, 6, D)
                    sh1, sc1 = mod[:, :, 0], mod[:, :, 1]
                    hs.append(blk.norm1(pf.x_in) * (1 + sc1) + sh1)  # (1, T, D)
                    metas.append(("p", slot))
            if not hs:
                continue
            qkvs = _fused(blk.qkv, hs)
            attn_out, attn_meta = [], []
            for (kind, obj), qkv in zip(metas, qkvs):
                bq, nq, _ = qkv.shape
                q, k, v = qkv.view(bq, nq, 3, blk.heads, blk.head_dim).unbind(2)
                q, k = blk.q_norm(q), blk.k_norm(k)
                q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
                if kind == "g":
                    g = obj
                    kc, vc, idx, a = self.kc[li], self.vc[li], g["idx"], self.tail
                    kc[idx, :, a : a + nq] = k
                    vc[idx, :, a : a + nq] = v
                    if g["clean"] and li == last:
                        g["x"] = None  # kv only
                        continue
                    keys = apply_rope(kc.index_select(0, idx)[:, :, : g["nk"]], g["cos_k"], g["sin_k"])
                    values = vc.index_select(0, idx)[:, :, : g["nk"]]
                    qr = apply_rope(q, g["cos_q"], g["sin_q"])
                    o = F.scaled_dot_product_attention(qr, keys, values, attn_mask=g["mask"])
                    attn_out.append(o.transpose(1, 2).reshape(bq, nq, -1))
                    attn_meta.append(("g", g))
                else:
                    slot = obj
                    pf = self._prefill[slot]
                    kb, vb = (self.kc, self.vc) if pf.kind == "join" else (self.shadow_k, self.shadow_v)
                    kb[li, slot, :, :T].copy_(k[0])
                    vb[li, slot, :, :T].copy_(v[0])
                    pf.layer = li
                    pf.q = apply_rope(q, self._ref_cos, self._ref_sin)
                    pf.keys = apply_rope(k, self._ref_cos, self._ref_sin)
                    pf.values = v
            # prefill query rows [a, b) of this layer
            for slot, rr in ranges.items():
                if li not in rr or li == last:
                    continue
                a, b = rr[li]
                pf = self._prefill[slot]
                o = F.scaled_dot_product_attention(pf.q[:, :, a:b], pf.keys, pf.values)  # (1, H, b-a, Dh)
                attn_out.append(o.transpose(1, 2).reshape(1, b - a, -1))
                attn_meta.append(("p", (slot, a, b)))
            if not attn_out:
                continue
            projs = _fused(blk.proj, attn_out)
            h2s = []
            for (kind, obj), pr in zip(attn_meta, projs):
                if kind == "g":
                    g = obj
                    sh1, sc1, g1, sh2, sc2, g2 = g["mod"]
                    b_, f_, t_, d_ = g["x"].shape
                    g["x"] = g["x"] + g1 * pr.view(b_, f_, t_, d_)
                    h2s.append(blk.norm2(g["x"]) * (1 + sc2) + sh2)
                else:
                    slot, a, b = obj
                    pf = self._prefill[slot]
                    mod = blk.modulation(pf.tcond).unsqueeze(2)[:, 0]
                    g1, sh2, sc2 = mod[:, :, 2], mod[:, :, 3], mod[:, :, 4]
                    xo = pf.x_in[:, a:b] + g1 * pr
                    pf.x_out[:, a:b] = xo
                    h2s.append(blk.norm2(xo) * (1 + sc2) + sh2)
            mlps = _fused(blk.mlp, h2s)
            for (kind, obj), m in zip(attn_meta, mlps):
                if kind == "g":
                    g = obj
                    g["x"] = g["x"] + g["mod"][5] * m
                else:
                    slot, a, b = obj
                    pf = self._prefill[slot]
                    mod = blk.modulation(pf.tcond).unsqueeze(2)[:, 0]
                    pf.x_out[:, a:b] += mod[:, :, 5] * m
                    if b == T:  # layer complete: the next layer's input
                        pf.x_in, pf.x_out = pf.x_out, pf.x_in
        # prefills that finished: nothing else to do (K/V are in place)
        for p in plan.prefill:
            if p.finishes:
                self._prefill.pop(p.slot, None)
        # heads of the denoising group
        for g in groups:
            if g["clean"]:
                continue
            x0 = model.final(g["x"], g["temb"], g["frames"])
            if getattr(self.mcfg, "predict", "x0") == "guide_residual":
                C = self.C
                x0 = x0 + g["frames"][:, :, C : 2 * C].to(x0.dtype)
            x0 = x0.float()
            for j, w in enumerate(g["works"]):
                self.sampler.step(self._x[w.slot], x0[j], w.step, out=self._x[w.slot])


def _fused(linear, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """One GEMM over the concatenated tokens of several groups (the "fuse" in
    SplitFuse); xs (..., D) each, outputs split back to their shapes."""
    if len(xs) == 1:
        return [linear(xs[0])]
    flat = [x.reshape(-1, x.shape[-1]) for x in xs]
    out = linear(torch.cat(flat, 0))
    res, o = [], 0
    for x, fl in zip(xs, flat):
        n = fl.shape[0]
        res.append(out[o : o + n].view(*x.shape[:-1], out.shape[-1]))
        o += n
    return res


class EngineStream:
    """A one-slot ServingEngine behind KnotForcingStream's push/flush
    interface (what engine/detail.py's FullResStream and the app's generator
    stage use): frames come out c at a time in the push that completes a
    chunk; a portrait switch is prefilled in the engine's steps (fused with
    the chunk forwards, within the token budget) and swapped exactly
    ``switch_chunks`` chunks later, with no stall."""

    def __init__(self, model: KnotForcingDiT, config: StreamConfig | None = None, *, seed: int = 0,
                 codec: Codec | None = None, allow_untrained: bool = False, check_values: bool | None = None,
                 token_budget: int | None = None) -> None:
        self.engine = ServingEngine(model, config, slots=1, token_budget=token_budget, codec=codec,
                                    allow_untrained=allow_untrained, check_values=check_values)
        e = self.engine
        self.model, self.cfg, self.codec, self.device = model, e.cfg, e.codec, e.device
        self.H, self.W, self.c, self.k = e.H, e.W, e.c, e.k
        self.seed = seed
        self._slot: int | None = None
        self._ref: torch.Tensor | None = None
        self._events: list[tuple[str, int]] = []

    @classmethod
    def from_stream(cls, stream) -> "EngineStream":
        """The same model, config, codec and seed as a KnotForcingStream (batch 1)."""
        return cls(stream.model, stream.cfg, seed=stream.seeds[0], codec=stream.codec, allow_untrained=True,
                   check_values=stream.check_values)

    @property
    def has_reference(self) -> bool:
        return self._slot is not None

    @property
    def switch_pending(self) -> bool:
        return self._slot is not None and self.engine.switch_pending(self._slot)

    @property
    def chunk_index(self) -> int:
        return self.engine.chunk_index(self._slot) if self._slot is not None else 0

    def pop_events(self) -> list[tuple[str, int]]:
        ev, self._events = self._events, []
        return ev

    def set_reference(self, reference: torch.Tensor) -> None:
        """Start a new stream with this portrait (KV_ref built now: nothing streams yet)."""
        if self._slot is not None:
            self.engine.leave(self._slot)
            if self._slot in self.engine.planner.streams:  # mid-chunk (cannot be between pushes)
                self.engine.run_ready()
        self._ref = reference
        self._slot = self.engine.join(reference, seed=self.seed, blocking=True)

    def begin_reference_switch(self, reference: torch.Tensor) -> None:
        if self._slot is None:
            self.set_reference(reference)
            return
        self._ref = reference
        self.engine.switch(self._slot, reference)

    def _collect(self) -> list[torch.Tensor]:
        frames = []
        for r in self.engine.run_ready():
            self._events += r.events
            if self._slot in r.frames:
                frames.append(r.frames[self._slot])
        return frames

    def push(self, guide: torch.Tensor) -> list[torch.Tensor]:
        """guide (1, 3, H, W) -> [] or c frames (1, 3, H, W)."""
        if self._slot is None:
            raise StreamStateError("a guide arrived before any reference portrait", "call set_reference() first")
        self.engine.feed(self._slot, guide)
        return [f[None] for out in self._collect() for f in out.unbind(0)]

    def flush(self) -> torch.Tensor | None:
        """Generate the buffered frames (missing guides held) -> (1, n, 3, H, W) or None; then reset."""
        if self._slot is None:
            return None
        e, b = self.engine, self._slot
        pending = e._n_guides[b] + len(e._queue[b])
        if self.cfg.knot_guide == "wait" and e._has_knot[b]:
            pending -= self.k
        out = None
        if pending > 0:
            last = e._queue[b][-1][0] if e._queue[b] else e._guides[b, e._n_guides[b] - 1].clone()
            frames = []
            while sum(x.shape[0] for x in frames) < pending:
                e._queue[b].append((last, time.monotonic()))
                frames += self._collect()
            out = torch.cat(frames, 0)[:pending][None]
        if e._watch[b].poll():  # the last chunk's flag: no next chunk will look at it
            self._events.append(("nonfinite_recovered", b))
        self.reset()
        return out

    def reset(self) -> None:
        """Forget frames, knot and window (the portrait stays)."""
        if self._slot is None:
            return
        e = self.engine
        e.run_ready()  # finish any side work in flight
        ref = self._ref
        e.leave(self._slot)
        self._slot = e.join(ref, seed=self.seed, blocking=True)


__all__ = ["EngineStream", "ServingEngine", "StepResult", "AdmissionError"]
