"""`kf-desktop bench --serving`: many streams on one engine, against the naive one.

A closed-loop load generator on the wall clock: N streams, each delivering a
motion guide every 1/fps s, with random portrait switches and streams
joining part-way. Two engines take the same schedule in the same run:

- serving: engine/serving.py's ServingEngine (one step = one batched forward
  of every stream with a chunk in flight, the reference prefills of joins
  and switches fused into the steps within a fixed token budget, EDF);
- naive: one KnotForcingStream per stream, one stream after another (the
  lowest-numbered stream with a complete chunk runs first, all its steps at
  once), a portrait switch or a join prefilled on the spot (blocking).

Frames leave each stream through a playout clock like the app's constant
rate sender: frame j is shown at max(ready_j, shown_{j-1} + 1/fps). The
inter-frame gap is the time between shown frames, in frame periods (1.0 =
on time). A stream is *effective* when it kept up (all but at most two
chunks of its guides became frames) and its worst gap was <= 2 periods;
effective throughput = the number of effective streams.

Numbers are from random weights (the speed does not depend on them). The
default clock on the CPU is virtual: it advances by the CPU time the engine
thread spends (one torch thread), so a shared, loaded machine gives the same
figures as a quiet one; --clock wall runs on real time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch

from engine.config import get_preset
from engine.model import build_model
from engine.planner import AdmissionError
from engine.serving import ServingEngine
from engine.stream import KnotForcingStream

STALL_LIMIT = 2.0  # frame periods


@dataclass
class Scenario:
    name: str
    streams: int  # streams in total (initial + joining)
    joins: int  # of which join part-way
    switch_every_s: float | None  # mean seconds between portrait switches per stream (None: none)


@dataclass
class StreamLog:
    start: float | None = None  # first guide (join request) time
    fed: int = 0
    ready: list[float] = field(default_factory=list)  # frame ready times
    refused: bool = False

    def shown(self, period: float) -> list[float]:
        out: list[float] = []
        for r in self.ready:
            out.append(r if not out else max(r, out[-1] + period))
        return out


def _schedule(sc: Scenario, seconds: float, fps: float, rng: random.Random):
    """[(time, kind, stream)] events: 'join' for every stream, 'switch' at random."""
    ev = []
    initial = sc.streams - sc.joins
    for s in range(sc.streams):
        t = 0.0 if s < initial else rng.uniform(0.2 * seconds, 0.6 * seconds)
        ev.append((t, "join", s))
        if sc.switch_every_s:
            u = t + 0.5 + rng.expovariate(1.0 / sc.switch_every_s)
            while u < seconds - 0.5:
                ev.append((u, "switch", s))
                u += max(0.3, rng.expovariate(1.0 / sc.switch_every_s))
    ev.sort()
    return ev


class _Serving:
    name = "serving"

    def __init__(self, model, cfg, slots, token_budget, clock="cpu"):
        timer = time.thread_time if clock == "cpu" else time.perf_counter
        self.e = ServingEngine(model, cfg, slots=slots, token_budget=token_budget, allow_untrained=True, timer=timer)
        self.slot_of: dict[int, int] = {}
        self.utils: list[tuple[float, bool, bool]] = []  # (utilization, carries side work, more work waits)

    def join(self, s, ref, now, first):
        try:
            self.slot_of[s] = self.e.join(ref, seed=s, blocking=first)
            return True
        except AdmissionError:
            return False

    def switch(self, s, ref, now):
        self.e.switch(self.slot_of[s], ref)

    def feed(self, s, g, t):
        self.e.feed(self.slot_of[s], g, now=t)

    def work(self):
        """One engine step -> {stream: n frames} (None when idle)."""
        r = self.e.step()
        if r.plan.is_empty:
            return None
        p = r.plan
        self.utils.append((p.utilization, bool(p.prefill), bool(p.prefill) and not p.finished_prefills))
        inv = {v: k for k, v in self.slot_of.items()}
        return {inv[b]: f.shape[0] for b, f in r.frames.items()}


class _Naive:
    name = "naive"

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.streams: dict[int, KnotForcingStream] = {}
        self.queue: dict[int, list] = {}

    def join(self, s, ref, now, first):
        st = KnotForcingStream(self.model, self.cfg, seed=s, allow_untrained=True)
        st.set_reference(ref)  # blocking prefill
        self.streams[s], self.queue[s] = st, []
        return True

    def switch(self, s, ref, now):
        self.streams[s].set_reference(ref, keep_history=True)  # blocking prefill

    def feed(self, s, g, t):
        self.queue[s].append(g)

    def work(self):
        c = self.cfg.chunk
        for s in sorted(self.streams):  # one stream after another
            q = self.queue[s]
            if len(q) >= c:
                out = 0
                for g in q[:c]:
                    o = self.streams[s].feed(g)
                    out += 0 if o is None else o.shape[1]
                del q[:c]
                return {s: out}
        return None


class _Clock:
    """'wall': time.perf_counter. 'cpu': a virtual clock that advances by the
    CPU time the engine thread spends in each call (time.thread_time; run with
    one torch thread) and jumps to the next arrival when idle, so other
    processes on a shared machine do not distort the figures."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.t0 = time.perf_counter()
        self.v = 0.0

    def now(self) -> float:
        return time.perf_counter() - self.t0 if self.kind == "wall" else self.v

    def timed(self, fn, *a):
        if self.kind == "wall":
            return fn(*a)
        c0 = time.thread_time()
        try:
            return fn(*a)
        finally:
            self.v += time.thread_time() - c0

    def idle_until(self, t: float) -> None:
        if self.kind == "wall":
            time.sleep(max(0.0, min(t - self.now(), 0.005)))
        else:
            self.v = max(self.v, t)


def _run(engine, sc: Scenario, events, refs, guide, seconds: float, fps: float,
         clock: str = "cpu") -> dict[int, StreamLog]:
    logs = {s: StreamLog() for s in range(sc.streams)}
    period = 1.0 / fps
    pending = list(events)
    next_guide: dict[int, float] = {}
    clk = _Clock(clock)
    while True:
        now = clk.now()
        if now >= seconds:
            break
        while pending and pending[0][0] <= now:
            t, kind, s = pending.pop(0)
            ref = refs[(s + len(logs[s].ready)) % len(refs)]
            if kind == "join":
                logs[s].start = t
                if clk.timed(engine.join, s, ref, t, t == 0.0):
                    next_guide[s] = t
                else:
                    logs[s].refused = True
            elif s in next_guide:
                clk.timed(engine.switch, s, ref, t)
        now = clk.now()
        for s, tg in next_guide.items():
            while tg <= now:
                clk.timed(engine.feed, s, guide, tg)
                logs[s].fed += 1
                tg += period
            next_guide[s] = tg
        out = clk.timed(engine.work)
        if out is None:
            clk.idle_until(min(list(next_guide.values()) + ([pending[0][0]] if pending else []) + [seconds]))
            continue
        done = clk.now()
        for s, n in out.items():
            logs[s].ready += [done] * n
    return logs


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(math.ceil(q / 100 * len(xs))) - 1)]


def _summarise(logs: dict[int, StreamLog], fps: float, chunk: int) -> dict:
    period = 1.0 / fps
    gaps, worst, eff, ttff, per = [], 0.0, 0, [], []
    for s, lg in sorted(logs.items()):
        shown = lg.shown(period)
        g = [(b - a) / period for a, b in zip(shown, shown[1:])]
        w = max(g) if g else float("inf")
        kept_up = lg.fed > 0 and len(lg.ready) >= lg.fed - 2 * chunk
        ok = (not lg.refused) and kept_up and w <= STALL_LIMIT
        eff += ok
        gaps += g
        worst = max(worst, w if g else 0.0)
        if lg.start and lg.start > 0 and lg.ready:
            ttff.append(1000 * (lg.ready[0] - lg.start))
        per.append({"stream": s, "frames": len(lg.ready), "fed": lg.fed, "worst_gap_periods": round(w, 2),
                    "effective": bool(ok), "refused": lg.refused})
    return {
        "effective_streams": eff,
        "gap_p50_periods": round(_pct(gaps, 50), 3),
        "gap_p95_periods": round(_pct(gaps, 95), 3),
        "gap_p99_periods": round(_pct(gaps, 99), 3),
        "worst_gap_periods": round(worst, 3),
        "ttff_ms_mean": round(sum(ttff) / len(ttff), 1) if ttff else None,
        "ttff_ms_max": round(max(ttff), 1) if ttff else None,
        "streams": per,
    }


def run(preset: str = "tiny", streams: int = 40, seconds: float = 6.0, fps: float = 25.0, seed: int = 0,
        device: str = "cpu", threads: int | None = 1, slack_tokens: int | None = None, clock: str = "cpu") -> dict:
    if threads:
        torch.set_num_threads(threads)
    p = get_preset(preset)
    cfg = p.stream
    model = build_model(p.model, init="random", seed=seed, device=device)
    hw = (p.model.height, p.model.width)
    g = torch.Generator().manual_seed(seed)
    refs = [torch.rand(1, 3, *hw, generator=g).to(device) for _ in range(4)]
    guide = torch.rand(1, 3, *hw, generator=g).to(device)
    f, t = cfg.chunk + cfg.knot, p.model.tokens_per_frame
    # every stream's chunk forward plus a slack of a quarter reference frame per
    # step (so a prefill is spread over several steps and those steps are full)
    slack = max(1, t // 4) if slack_tokens is None else slack_tokens
    budget = t * streams * f + slack
    scenarios = [
        Scenario("switch", streams, 0, 1.5),
        Scenario("join", streams, max(1, streams // 3), None),
        Scenario("join+switch", streams, max(1, streams // 4), 2.0),
    ]
    out = {"config": {"preset": preset, "streams": streams, "seconds": seconds, "fps": fps, "device": device,
                      "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                      "token_budget": budget, "tokens_per_frame": t, "chunk_forward_tokens": f * t,
                      "steps_per_chunk": cfg.steps + (cfg.cache_write == "clean_pass"),
                      "stall_limit_periods": STALL_LIMIT, "clock": clock},
           "scenarios": {}}
    with torch.inference_mode():
        # warm-up (allocations, first-call costs) for both engines
        w = ServingEngine(model, cfg, slots=2, allow_untrained=True)
        w.join(refs[0], blocking=True)
        for _ in range(2 * cfg.chunk):
            w.feed(0, guide)
            w.run_ready()
        for sc in scenarios:
            events = _schedule(sc, seconds, fps, random.Random(seed))
            res = {}
            for eng in (_Serving(model, cfg, streams, budget, clock), _Naive(model, cfg)):
                logs = _run(eng, sc, events, refs, guide, seconds, fps, clock)
                res[eng.name] = _summarise(logs, fps, cfg.chunk)
                if isinstance(eng, _Serving):
                    u = eng.utils
                    side = [x for x, carries, waits in u if waits]
                    res[eng.name]["steps"] = len(u)
                    res[eng.name]["mean_step_utilization"] = round(sum(x for x, *_ in u) / max(1, len(u)), 3)
                    res[eng.name]["side_work_steps"] = len(side)
                    res[eng.name]["side_work_steps_within_5pct_of_budget"] = (
                        round(sum(abs(x - 1) <= 0.05 for x in side) / len(side), 3) if side else None)
                    res[eng.name]["step_ms_ema"] = round(1000 * (eng.e.step_time_s or 0), 2)
            n_s, n_n = res["serving"]["effective_streams"], res["naive"]["effective_streams"]
            res["worst_gap_periods"] = res["serving"]["worst_gap_periods"]
            res["effective_throughput_ratio"] = round(n_s / n_n, 2) if n_n else (None if not n_s else float("inf"))
            res["switches"] = sum(1 for e in events if e[1] == "switch")
            res["joins_part_way"] = sc.joins
            out["scenarios"][sc.name] = res
    return out


def format_table(res: dict) -> str:
    c = res["config"]
    lines = [f"serving bench: preset {c['preset']}, {c['streams']} streams at {c['fps']:g} fps, {c['seconds']:g} s, "
             f"{c['device']}, {c['torch_threads']} torch threads, {c['clock']} clock; token budget {c['token_budget']} "
             f"(chunk forward {c['chunk_forward_tokens']} tokens, {c['steps_per_chunk']} steps/chunk); "
             f"effective = kept up and worst gap <= {c['stall_limit_periods']:g} periods",
             f"{'scenario':<12} {'engine':<8} {'eff':>4} {'p50':>6} {'p95':>6} {'p99':>6} {'worst':>7} "
             f"{'ttff ms':>9} {'ratio':>6}  tokens/step"]
    for name, sc in res["scenarios"].items():
        for eng in ("serving", "naive"):
            r = sc[eng]
            ttff = "-" if r["ttff_ms_mean"] is None else f"{r['ttff_ms_mean']:.0f}/{r['ttff_ms_max']:.0f}"
            ratio = sc["effective_throughput_ratio"] if eng == "serving" else ""
            ratio = "inf" if ratio == float("inf") else ("-" if ratio is None else ratio)
            tok = ""
            if eng == "serving":
                within = r["side_work_steps_within_5pct_of_budget"]
                tok = (f"mean util {r['mean_step_utilization']:.2f}, with side work waiting "
                       f"{'-' if within is None else f'{100 * within:.0f}%'} within 5% ({r['side_work_steps']} steps)")
            lines.append(f"{name:<12} {eng:<8} {r['effective_streams']:>4} {r['gap_p50_periods']:>6.2f} "
                         f"{r['gap_p95_periods']:>6.2f} {r['gap_p99_periods']:>6.2f} {r['worst_gap_periods']:>7.2f} "
                         f"{ttff:>9} {ratio!s:>6}  {tok}")
    lines.append("gaps in frame periods (shown-frame intervals; 1.00 = on time); ttff = join to first frame, mean/max")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="kf-desktop bench --serving", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "laptop", "default", "paper"])
    ap.add_argument("--streams", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the cpu clock needs 1)")
    ap.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                    help="cpu: virtual time from the engine thread's CPU time (robust on a shared machine); "
                         "wall: real time")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slack-tokens", type=int, default=None,
                    help="token budget above all streams' chunk forwards (default: a quarter frame)")
    a = ap.parse_args(argv)
    if a.device != "cpu" and a.clock == "cpu":
        a.clock = "wall"  # a GPU's work is not the host thread's CPU time
    res = run(a.preset, a.streams, a.seconds, a.fps, a.seed, a.device, a.threads, a.slack_tokens, clock=a.clock)
    if a.json:
        slim = {"config": res["config"], "scenarios": {
            k: {kk: vv for kk, vv in v.items() if kk not in ("serving", "naive")}
            | {e: {kk: vv for kk, vv in v[e].items() if kk != "streams"} for e in ("serving", "naive")}
            for k, v in res["scenarios"].items()}}
        print(json.dumps(slim, indent=2, default=str))
    else:
        print(format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
