"""Step planner for many Knot Forcing streams on one engine (Dynamic SplitFuse
for video, after DeepSpeed-FastGen; the output dataclass style follows vLLM
v1's scheduler output).

Pure Python over small host state: no torch import, so it is tested without
a model or a GPU, and the executor (engine/serving.py) only *runs* what it
plans.

One engine step is one forward pass over a fixed token budget. Work units:

- **Live denoising** (first claim on the budget): a stream whose chunk is in
  flight runs one forward per step, ``frames`` frames of ``T`` tokens through
  every layer: the c + k frames of denoising step s at sigma_s, or (with
  ``cache_write="clean_pass"``) the c committed frames at sigma 0 that write
  KV_pre. A chunk takes ``steps_per_chunk`` engine steps.
- **Prefill** (what is left of the budget): a reference portrait's KV_ref,
  ``depth`` layers of ``T`` tokens, for a joining stream (into its own KV_ref
  slot) or a portrait switch (into the stream's shadow slot). Its work is
  laid out in (layer, token) order and cut anywhere in that order: by whole
  layers, and inside a layer by query tokens when the slack is smaller than
  one reference frame. A cut never splits a frame's bidirectional attention:
  the first piece that touches a layer computes that layer's keys and values
  for the *whole* frame (its input, the previous layer, is complete by then),
  and a piece only chooses which query rows go through attention and the MLP.

Costs are counted in token-layers (one token through one block); the step
budget ``token_budget`` is in tokens through the whole model, i.e.
``token_budget * depth`` token-layers.

Policies:

- Earliest-deadline-first: when the live work does not fit, the chunks with
  the earliest deadlines run and the others wait a step (one is always run,
  so nothing starves).
- A portrait switch is *paced*: started before chunk m of its stream, it is
  swapped in exactly at the start of chunk m + switch_chunks, whatever the
  depth. Each of the stream's steps in between carries at least its linear
  share of the prefill (mandatory, ahead of other side work); slack may do
  more. A join is prefilled as fast as the slack allows.
- Admission: a stream is admitted only into a free slot and only if, at the
  measured step time, every admitted stream still gets its chunks inside
  their frame period (``admission_check``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

PrefillKind = Literal["join", "switch"]


class AdmissionError(RuntimeError):
    """No free slot, or admitting one more stream would make streams late."""


# ---- the plan of one step ------------------------------------------------------


@dataclass(frozen=True)
class DenoiseWork:
    """One stream's forward in this step."""

    slot: int
    chunk: int  # the stream's chunk index
    step: int  # 0 .. S-1 denoising; S = the clean pass writing KV_pre
    sigma: float  # noise level of the frames (0 for the clean pass)
    frames: int  # frames in the forward
    tokens: int  # frames * T (query tokens, through every layer)
    token_layers: int
    deadline: float
    clean_pass: bool = False  # the c committed frames at sigma 0, writing KV_pre
    swap_reference: bool = False  # install the shadow KV_ref before this forward
    last: bool = False  # the chunk's last step (the stream is free after it)
    emits: bool = False  # the chunk's frames are final after this step


@dataclass(frozen=True)
class PrefillPiece:
    """A contiguous run of a reference prefill in (layer, token) order:
    from ``start`` = (layer, token) up to ``stop`` (exclusive)."""

    slot: int
    kind: PrefillKind
    start: tuple[int, int]
    stop: tuple[int, int]
    tokens_per_layer: int
    finishes: bool  # the prefill is complete after this piece

    @property
    def token_layers(self) -> int:
        t = self.tokens_per_layer
        return (self.stop[0] * t + self.stop[1]) - (self.start[0] * t + self.start[1])

    def layer_ranges(self) -> list[tuple[int, int, int]]:
        """[(layer, first query token, stop token)] in order."""
        t = self.tokens_per_layer
        (l0, t0), (l1, t1) = self.start, self.stop
        out = []
        layer = l0
        while (layer, 0) < (l1, t1):
            a = t0 if layer == l0 else 0
            b = t1 if layer == l1 else t
            if b > a:
                out.append((layer, a, b))
            layer += 1
        return out

    @property
    def layers(self) -> tuple[int, int]:
        """[first, last + 1) layers this piece touches."""
        rs = self.layer_ranges()
        return (rs[0][0], rs[-1][0] + 1) if rs else (self.start[0], self.start[0])


@dataclass
class StepPlan:
    """What one engine step runs."""

    step_id: int
    token_budget: int  # tokens through the whole model
    depth: int
    denoise: list[DenoiseWork] = field(default_factory=list)
    prefill: list[PrefillPiece] = field(default_factory=list)
    deferred: list[int] = field(default_factory=list)  # ready slots left for a later step (EDF)
    finished_prefills: list[int] = field(default_factory=list)  # slots whose prefill completes here

    @property
    def budget_token_layers(self) -> int:
        return self.token_budget * self.depth

    @property
    def live_token_layers(self) -> int:
        return sum(w.token_layers for w in self.denoise)

    @property
    def prefill_token_layers(self) -> int:
        return sum(p.token_layers for p in self.prefill)

    @property
    def scheduled_token_layers(self) -> int:
        return self.live_token_layers + self.prefill_token_layers

    @property
    def num_scheduled_tokens(self) -> float:
        """Tokens through the whole model (token-layers / depth)."""
        return self.scheduled_token_layers / self.depth

    @property
    def utilization(self) -> float:
        return self.scheduled_token_layers / self.budget_token_layers

    @property
    def is_empty(self) -> bool:
        return not self.denoise and not self.prefill

    def summary(self) -> str:
        live = ",".join(f"{w.slot}:c{w.chunk}s{w.step}" for w in self.denoise) or "-"
        pre = ",".join(f"{p.slot}:{p.kind}{p.start}->{p.stop}" for p in self.prefill) or "-"
        return f"step {self.step_id}: live [{live}] prefill [{pre}] {self.num_scheduled_tokens:g}/{self.token_budget} tokens"


# ---- planner state -------------------------------------------------------------


@dataclass
class PrefillJob:
    kind: PrefillKind
    done: int = 0  # token-layers done (the cursor in (layer, token) order)
    begin_chunk: int = 0  # switch: the first chunk that runs with the job pending
    swap_chunk: int = 0  # switch: the chunk that starts with the new reference


@dataclass
class StreamSlot:
    slot: int
    fps: float = 25.0
    chunk: int = 0  # index of the chunk in flight, or of the next one
    step: int = 0  # next step of the chunk in flight (0 = not started)
    ready: bool = False  # the chunk's guides are in
    deadline: float = math.inf
    prefill: PrefillJob | None = None  # join prefill (stream not live yet) or a switch
    leaving: bool = False

    @property
    def live(self) -> bool:
        return not (self.prefill is not None and self.prefill.kind == "join")


@dataclass(frozen=True)
class PlannerConfig:
    slots: int
    depth: int
    tokens_per_frame: int  # T
    chunk: int  # c
    knot: int  # k
    sigmas: tuple[float, ...]  # the S denoising noise levels
    clean_pass: bool  # one more forward per chunk writes KV_pre
    token_budget: int  # tokens per step through the whole model
    switch_chunks: int = 4
    ref_frames: int = 1

    @property
    def steps(self) -> int:
        return len(self.sigmas)

    @property
    def steps_per_chunk(self) -> int:
        return self.steps + (1 if self.clean_pass else 0)

    @property
    def ref_token_layers(self) -> int:
        return self.depth * self.ref_frames * self.tokens_per_frame

    @property
    def chunk_token_layers(self) -> int:
        """Live work of one chunk of one stream."""
        f, t, d = self.chunk + self.knot, self.tokens_per_frame, self.depth
        return self.steps * f * t * d + (self.chunk * t * d if self.clean_pass else 0)

    def validate(self) -> "PlannerConfig":
        if self.slots < 1 or self.depth < 1 or self.tokens_per_frame < 1 or self.steps < 1:
            raise ValueError("slots, depth, tokens_per_frame and steps must be >= 1")
        if self.switch_chunks < 1:
            raise ValueError("switch_chunks must be >= 1")
        one = (self.chunk + self.knot) * self.tokens_per_frame
        if self.token_budget < one:
            raise ValueError(f"token_budget {self.token_budget} is smaller than one chunk forward ({one} tokens)")
        return self


class StepPlanner:
    """Owns the streams' host state and emits a StepPlan per engine step.

    Protocol (like a serving scheduler): ``plan = schedule()``; the executor
    runs it; ``update(plan)`` advances the state. ``join``/``begin_switch``/
    ``leave``/``mark_ready`` change the state between steps."""

    def __init__(self, cfg: PlannerConfig) -> None:
        self.cfg = cfg.validate()
        self.streams: dict[int, StreamSlot] = {}
        self._step_id = 0

    # ---- streams ----------------------------------------------------------
    @property
    def free_slots(self) -> list[int]:
        return [s for s in range(self.cfg.slots) if s not in self.streams]

    def admission_check(self, fps: float, step_time_s: float | None) -> str | None:
        """None when a new stream at ``fps`` can be admitted, else why not.
        step_time_s: measured seconds of a full-budget step (None: unknown,
        only slots are checked)."""
        if not self.free_slots:
            return f"all {self.cfg.slots} slots are in use"
        if step_time_s is None:
            return None
        cfg = self.cfg
        # One forward per stream per step: a chunk needs steps_per_chunk steps.
        for s in list(self.streams.values()) + [StreamSlot(-1, fps)]:
            period = cfg.chunk / s.fps
            if cfg.steps_per_chunk * step_time_s > period:
                return (f"a chunk takes {cfg.steps_per_chunk} steps of {1000 * step_time_s:.1f} ms, "
                        f"more than its {1000 * period:.0f} ms period")
        # Token capacity: live work of every stream at its chunk rate, plus
        # one reference prefill per switch period, within the budget per step.
        need = 0.0  # token-layers per second
        for s in list(self.streams.values()) + [StreamSlot(-1, fps)]:
            chunks_per_s = s.fps / cfg.chunk
            need += chunks_per_s * (cfg.chunk_token_layers + cfg.ref_token_layers / cfg.switch_chunks)
        have = cfg.token_budget * cfg.depth / step_time_s
        if need > have:
            return f"needs {need / cfg.depth:.0f} tokens/s, the engine does {have / cfg.depth:.0f} at the measured step time"
        return None

    def join(self, slot: int | None = None, *, fps: float = 25.0, step_time_s: float | None = None) -> int:
        """Admit a stream (its reference is prefilled piecewise first)."""
        why = self.admission_check(fps, step_time_s)
        if why is not None:
            raise AdmissionError(why)
        if slot is None:
            slot = self.free_slots[0]
        elif slot in self.streams or not 0 <= slot < self.cfg.slots:
            raise AdmissionError(f"slot {slot} is not free")
        self.streams[slot] = StreamSlot(slot, fps, prefill=PrefillJob("join"))
        return slot

    def join_ready(self, slot: int, *, fps: float = 25.0) -> int:
        """Admit a stream whose reference is already built (no prefill)."""
        if slot in self.streams:
            raise AdmissionError(f"slot {slot} is not free")
        self.streams[slot] = StreamSlot(slot, fps)
        return slot

    def leave(self, slot: int) -> bool:
        """Leave at a chunk boundary: now if no chunk is in flight, else after
        it. Returns True when the slot is free now."""
        s = self.streams[slot]
        if s.step == 0:
            del self.streams[slot]
            return True
        s.leaving = True
        return False

    def begin_switch(self, slot: int) -> int:
        """A new portrait for a live stream; returns the chunk index that
        starts with it (exactly switch_chunks chunks after the next one)."""
        s = self.streams[slot]
        if not s.live:  # still joining: restart the join prefill with the new portrait
            s.prefill = PrefillJob("join")
            return 0
        m = s.chunk + (1 if s.step > 0 else 0)  # the next chunk to start
        s.prefill = PrefillJob("switch", begin_chunk=m, swap_chunk=m + self.cfg.switch_chunks)
        return s.prefill.swap_chunk

    def mark_ready(self, slot: int, deadline: float) -> None:
        """The guides of the stream's next chunk are in; its frames are due at ``deadline``."""
        s = self.streams[slot]
        if not s.ready:
            s.ready = True
            s.deadline = deadline

    # ---- planning -----------------------------------------------------------
    def _switch_quota(self, s: StreamSlot, job: PrefillJob, runs_now: bool) -> int:
        """Token-layers of a switch prefill that must be done after this step."""
        cfg = self.cfg
        total = cfg.ref_token_layers
        spc = cfg.steps_per_chunk
        n_steps = cfg.switch_chunks * spc  # the stream's steps before the swap
        if not runs_now:
            return 0
        # steps of this stream completed (after this one) since chunk begin_chunk started
        done_steps = (s.chunk - job.begin_chunk) * spc + s.step + 1
        if done_steps <= 0:
            return 0
        return min(total, -(-total * min(done_steps, n_steps) // n_steps))

    def schedule(self) -> StepPlan:
        cfg = self.cfg
        t, d, f = cfg.tokens_per_frame, cfg.depth, cfg.chunk + cfg.knot
        budget = cfg.token_budget * d
        plan = StepPlan(self._step_id, cfg.token_budget, d)
        self._step_id += 1

        # 1. live denoising, earliest deadline first
        ready = [s for s in self.streams.values() if s.live and (s.ready or s.step > 0)]
        ready.sort(key=lambda s: (s.deadline, s.slot))
        used = 0
        for s in ready:
            frames = f if s.step < cfg.steps else cfg.chunk
            cost = frames * t * d
            if used + cost > budget and plan.denoise:
                plan.deferred.append(s.slot)
                continue
            swap = (s.step == 0 and s.prefill is not None and s.prefill.kind == "switch"
                    and s.chunk >= s.prefill.swap_chunk and s.prefill.done >= cfg.ref_token_layers)
            last = s.step == cfg.steps_per_chunk - 1
            plan.denoise.append(DenoiseWork(
                slot=s.slot, chunk=s.chunk, step=s.step,
                sigma=cfg.sigmas[s.step] if s.step < cfg.steps else 0.0,
                frames=frames, tokens=frames * t, token_layers=cost, deadline=s.deadline,
                clean_pass=s.step >= cfg.steps, swap_reference=swap, last=last, emits=s.step == cfg.steps - 1,
            ))
            used += cost

        # 2. side work: mandatory switch quotas first, then switches, then joins (EDF by age)
        running = {w.slot for w in plan.denoise}
        jobs = []
        for s in self.streams.values():
            job = s.prefill
            if job is None or job.done >= cfg.ref_token_layers:
                continue
            if job.kind == "switch":
                quota = self._switch_quota(s, job, s.slot in running)
                if s.chunk >= job.swap_chunk:  # late (cannot happen: the quota is mandatory)
                    quota = cfg.ref_token_layers
                jobs.append((0, job.swap_chunk, s.slot, s, quota))
            else:
                jobs.append((1, 0, s.slot, s, 0))
        jobs.sort(key=lambda j: j[:3])
        want: dict[int, int] = {}
        for _, _, slot, s, quota in jobs:  # mandatory part (may exceed the budget)
            need = max(0, quota - s.prefill.done)
            want[slot] = need
            used += need
        for _, _, slot, s, _ in jobs:  # slack, greedily
            room = budget - used
            if room <= 0:
                break
            extra = min(room, cfg.ref_token_layers - s.prefill.done - want[slot])
            want[slot] += extra
            used += extra
        for _, _, slot, s, _ in jobs:
            n = want[slot]
            if n <= 0:
                continue
            a = s.prefill.done
            b = a + n
            plan.prefill.append(PrefillPiece(slot, s.prefill.kind, divmod(a, t), divmod(b, t), t,
                                             finishes=b >= cfg.ref_token_layers))
            if b >= cfg.ref_token_layers:
                plan.finished_prefills.append(slot)
        return plan

    def update(self, plan: StepPlan) -> list[tuple[str, int]]:
        """Advance the state after ``plan`` ran. Returns events:
        ("frames", slot), ("chunk_done", slot), ("swapped", slot),
        ("joined", slot), ("left", slot)."""
        cfg = self.cfg
        events: list[tuple[str, int]] = []
        for p in plan.prefill:
            s = self.streams.get(p.slot)
            if s is None or s.prefill is None:
                continue
            s.prefill.done += p.token_layers
            if s.prefill.done >= cfg.ref_token_layers and s.prefill.kind == "join":
                s.prefill = None
                events.append(("joined", p.slot))
        for w in plan.denoise:
            s = self.streams[w.slot]
            if w.swap_reference:
                s.prefill = None
                events.append(("swapped", w.slot))
            if w.emits:
                events.append(("frames", w.slot))
            s.step += 1
            if s.step == cfg.steps_per_chunk:
                s.step = 0
                s.chunk += 1
                s.ready = False
                s.deadline = math.inf
                events.append(("chunk_done", w.slot))
                if s.leaving:
                    del self.streams[w.slot]
                    events.append(("left", w.slot))
        return events


def default_token_budget(slots: int, tokens_per_frame: int, frames_per_forward: int, prefill_frames: int = 1) -> int:
    """Every slot's chunk forward plus ``prefill_frames`` reference frames of slack."""
    return tokens_per_frame * (slots * frames_per_forward + prefill_frames)


def switch_layer_schedule(depth: int, switch_chunks: int) -> list[int]:
    """Layers done after each of the switch_chunks chunks, spread evenly and
    ending exactly at depth (the single-stream stream's per-chunk schedule)."""
    return [-(-depth * (j + 1) // switch_chunks) for j in range(switch_chunks)]


__all__ = [
    "AdmissionError",
    "DenoiseWork",
    "PlannerConfig",
    "PrefillJob",
    "PrefillPiece",
    "StepPlan",
    "StepPlanner",
    "StreamSlot",
    "default_token_budget",
    "switch_layer_schedule",
]
