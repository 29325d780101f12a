"""engine/serving.py: the executor of the step planner on the tiny preset
(fp32, CPU). A one-slot engine equals KnotForcingStream; streams batched in
one engine equal the same streams alone; joins and switches never delay the
other streams; a leaving stream frees its slot; NaN recovery per slot."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.config import StreamConfig, get_preset
from engine.model import build_model
from engine.planner import AdmissionError
from engine.serving import EngineStream, ServingEngine
from engine.stream import KnotForcingStream

TINY = get_preset("tiny").model
H, W, T = TINY.height, TINY.width, TINY.tokens_per_frame
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_(**kw) -> StreamConfig:
    base = dict(chunk=3, knot=1, window=4, steps=2, n_init=4, ref_step=2, switch_chunks=2)
    base.update(kw)
    return StreamConfig(**base)


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, init="random", seed=1)


def img(g):
    return torch.rand(1, 3, H, W, generator=g)


def alone(model, cfg, ref, guides, seed, switch=None):
    """Frames of one KnotForcingStream: guides[i] fed in order; switch = (n, ref2)."""
    s = KnotForcingStream(model, cfg, seed=seed, allow_untrained=True)
    s.set_reference(ref)
    out = []
    for n, x in enumerate(guides):
        if switch is not None and n == switch[0]:
            s.begin_reference_switch(switch[1])
        out += s.push(x)
    return out


@pytest.mark.parametrize("cache_write", ["clean_pass", "reuse_last_step"])
@pytest.mark.parametrize("knot_guide", ["hold", "linear"])
def test_one_slot_engine_equals_knot_forcing_stream_through_a_switch(model, cache_write, knot_guide):
    cfg = cfg_(cache_write=cache_write, knot_guide=knot_guide)
    g = torch.Generator().manual_seed(0)
    r1, r2 = img(g), img(g)
    guides = [img(g) for _ in range(30)]
    want = alone(model, cfg, r1, guides, seed=5, switch=(7, r2))
    es = EngineStream(model, cfg, seed=5, allow_untrained=True)
    es.set_reference(r1)
    got = []
    for n, x in enumerate(guides):
        if n == 7:
            es.begin_reference_switch(r2)
        got += es.push(x)
    assert len(got) == len(want) == 30
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    assert ("swapped", 0) in es.pop_events()


def test_engine_stream_flush_and_reset_match_the_stream(model):
    cfg = cfg_()
    g = torch.Generator().manual_seed(1)
    ref = img(g)
    guides = [img(g) for _ in range(8)]
    s = KnotForcingStream(model, cfg, seed=3, allow_untrained=True)
    e = EngineStream(model, cfg, seed=3, allow_untrained=True)
    s.set_reference(ref)
    e.set_reference(ref)
    for x in guides:
        s.push(x)
        e.push(x)
    a, b = s.flush(), e.flush()
    assert a.shape == b.shape == (1, 2, 3, H, W)
    torch.testing.assert_close(a, b, rtol=0, atol=ATOL)
    # after flush both start over (same noise generator state is not required: compare a fresh pair)
    assert e.chunk_index == 0


def _drive(engine, slots_guides, steps_between=None):
    """Feed slot -> guides round-robin, one frame time at a time; run ready work
    after each frame. Returns slot -> frames and slot -> [step number of each chunk]."""
    frames = {s: [] for s in slots_guides}
    when = {s: [] for s in slots_guides}
    n = max(len(v) for v in slots_guides.values())
    for i in range(n):
        for s, gs in slots_guides.items():
            if i < len(gs) and gs[i] is not None:
                engine.feed(s, gs[i], now=i / 25)
        for r in engine.run_ready():
            for s, f in r.frames.items():
                frames[s] += list(f.unbind(0))
                when[s].append(engine.steps_run)
    return frames, when


@pytest.mark.parametrize("budget_slack", [T // 8, 3 * T])
def test_streams_in_one_batch_equal_the_same_streams_alone(model, budget_slack):
    """Three streams at different phases (so different positions and window
    fill), one joining late with its reference prefilled piecewise (split
    inside a layer when the slack is small), one switching portrait."""
    cfg = cfg_(cache_write="clean_pass")
    g = torch.Generator().manual_seed(2)
    refs = [img(g) for _ in range(3)]
    r_new = img(g)
    guides = [[img(g) for _ in range(27)] for _ in range(3)]
    F_ = cfg.chunk + cfg.knot
    eng = ServingEngine(model, cfg, slots=3, token_budget=3 * F_ * T + budget_slack, allow_untrained=True)
    eng.join(refs[0], seed=10, blocking=True)
    eng.join(refs[1], seed=11, blocking=True)
    # slot 1 starts one frame later; slot 2 joins at frame 5 (non-blocking)
    plan = {0: guides[0], 1: [None] + guides[1][:26], 2: [None] * 5 + guides[2][:22]}
    frames = {s: [] for s in range(3)}
    for i in range(27):
        if i == 5:
            assert eng.join(refs[2], seed=12) == 2
        if i == 9:
            eng.switch(0, r_new)
        for s, gs in plan.items():
            if gs[i] is not None and s in eng.streams:
                eng.feed(s, gs[i], now=i / 25)
        for r in eng.run_ready():
            assert r.plan.scheduled_token_layers <= r.plan.budget_token_layers or r.plan.prefill
            for s, f in r.frames.items():
                frames[s] += list(f.unbind(0))
    want = [alone(model, cfg, refs[0], guides[0], 10, switch=(9, r_new)),
            alone(model, cfg, refs[1], guides[1][:26], 11),
            alone(model, cfg, refs[2], guides[2][:22], 12)]
    for s in range(3):
        got = [f[None] for f in frames[s]]
        assert len(got) == len(want[s]) > 0
        for a, b in zip(got, want[s]):
            torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_a_join_does_not_delay_the_other_streams_frames(model):
    cfg = cfg_()
    g = torch.Generator().manual_seed(3)
    refs = [img(g) for _ in range(3)]
    guides = [[img(g) for _ in range(24)] for _ in range(2)]
    F_ = cfg.chunk + cfg.knot

    def run(with_join):
        # slack of 1/8 frame per step: the join's prefill is spread over many steps
        eng = ServingEngine(model, cfg, slots=3, token_budget=2 * F_ * T + T // 8, allow_untrained=True)
        eng.join(refs[0], seed=1, blocking=True)
        eng.join(refs[1], seed=2, blocking=True)
        steps_at_frames = []
        for i in range(24):
            if with_join and i == 4:
                eng.join(refs[2], seed=3)
            for s in (0, 1):
                eng.feed(s, guides[s][i], now=i / 25)
            for r in eng.run_ready():
                if r.frames:
                    steps_at_frames.append((i, sorted(r.frames)))
                if with_join:
                    assert {w.slot for w in r.plan.denoise} <= {0, 1} and not r.plan.deferred
        return steps_at_frames, eng

    base, _ = run(False)
    joined, eng = run(True)
    assert base == joined  # every frame of streams 0 and 1 came out at the same guide
    assert eng.is_live(2)


def test_a_switch_at_depth_30_completes_in_switch_chunks():
    deep = build_model(dataclasses.replace(TINY, depth=30), init="random", seed=4)
    cfg = cfg_(switch_chunks=4)
    g = torch.Generator().manual_seed(4)
    r1, r2, r3 = img(g), img(g), img(g)
    F_ = cfg.chunk + cfg.knot
    # two streams, almost no slack: the switch rides on its paced quota
    eng = ServingEngine(deep, cfg, slots=2, token_budget=2 * F_ * T + 1, allow_untrained=True)
    eng.join(r1, seed=0, blocking=True)
    eng.join(r3, seed=1, blocking=True)
    frames0, swapped_at, begun = [], None, None
    guides = [img(g) for _ in range(30)]
    for i, x in enumerate(guides):
        if i == 6:
            begun = eng.chunk_index(0)
            assert eng.switch(0, r2) == begun + 4
        eng.feed(0, x, now=i / 25)
        eng.feed(1, x, now=i / 25)
        for r in eng.run_ready():
            if ("swapped", 0) in r.events:
                swapped_at = [w.chunk for w in r.plan.denoise if w.slot == 0][0]
            frames0 += [f[None] for f in r.frames.get(0, torch.empty(0)).unbind(0)]
    assert swapped_at == begun + 4
    want = alone(deep, cfg, r1, guides, 0, switch=(6, r2))
    for a, b in zip(frames0, want):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_a_leaving_stream_frees_its_slot(model):
    cfg = cfg_()
    g = torch.Generator().manual_seed(5)
    refs = [img(g) for _ in range(3)]
    eng = ServingEngine(model, cfg, slots=2, allow_untrained=True)
    eng.join(refs[0], seed=0, blocking=True)
    eng.join(refs[1], seed=1, blocking=True)
    with pytest.raises(AdmissionError, match="slots"):
        eng.join(refs[2])
    for i in range(3):
        eng.feed(0, img(g))
        eng.feed(1, img(g))
    r = eng.step()  # both chunks in flight
    assert {w.slot for w in r.plan.denoise} == {0, 1}
    assert eng.leave(1) is False  # leaves at the chunk boundary
    got = {}
    for r in eng.run_ready():
        got.update(r.frames)
        if ("left", 1) in r.events:
            break
    assert 1 in got  # its last chunk was still delivered
    assert eng.streams == [0]
    # the freed slot takes a new stream that starts clean (equal to a fresh stream)
    assert eng.join(refs[2], seed=7, blocking=True) == 1
    guides = [img(g) for _ in range(9)]
    frames = []
    for x in guides:
        eng.feed(1, x)
        eng.feed(0, img(g))
        for r in eng.run_ready():
            frames += [f[None] for f in r.frames.get(1, torch.empty(0)).unbind(0)]
    want = alone(model, cfg, refs[2], guides, 7)
    for a, b in zip(frames, want):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_admission_refuses_when_deadlines_would_break(model):
    eng = ServingEngine(model, cfg_(), slots=4, allow_untrained=True)
    g = torch.Generator().manual_seed(6)
    eng.join(img(g), blocking=True)
    # a chunk is 3 steps (2 denoising + the clean pass); its period 3 frames at 25 fps = 120 ms
    eng.step_time_s = 0.03  # 90 ms: fine
    eng.join(img(g))
    eng.step_time_s = 0.05  # 150 ms: the streams would fall behind
    with pytest.raises(AdmissionError, match="period"):
        eng.join(img(g))


def test_a_nan_in_one_stream_is_recovered_and_does_not_touch_the_others(model):
    cfg = cfg_()
    g = torch.Generator().manual_seed(7)
    refs = [img(g) for _ in range(2)]
    guides = [[img(g) for _ in range(30)] for _ in range(2)]
    bad = [x.clone() for x in guides[0]]
    bad[7][0, 0, 3, 3] = float("nan")
    eng = ServingEngine(model, cfg, slots=2, allow_untrained=True, check_values=False)
    eng.join(refs[0], seed=0, blocking=True)
    eng.join(refs[1], seed=1, blocking=True)
    frames = {0: [], 1: []}
    events = []
    for i in range(30):
        eng.feed(0, bad[i])
        eng.feed(1, guides[1][i])
        for r in eng.run_ready():
            events += r.events
            for s, f in r.frames.items():
                frames[s] += [x[None] for x in f.unbind(0)]
    assert ("nonfinite_recovered", 0) in events
    assert all(torch.isfinite(f).all() for f in frames[0])
    assert torch.isfinite(eng._x[0]).all()  # healthy again
    want = alone(model, cfg, refs[1], guides[1], 1)
    for a, b in zip(frames[1], want):
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL)


def test_steps_are_filled_to_the_budget_while_a_prefill_waits(model):
    cfg = cfg_()
    g = torch.Generator().manual_seed(8)
    F_ = cfg.chunk + cfg.knot
    budget = 2 * F_ * T + T // 4
    eng = ServingEngine(model, cfg, slots=3, token_budget=budget, allow_untrained=True)
    eng.join(img(g), blocking=True)
    eng.join(img(g), blocking=True)
    eng.join(img(g))
    utils = []
    for _ in range(3):
        eng.feed(0, img(g))
        eng.feed(1, img(g))
    for r in eng.run_ready():
        if r.plan.denoise and r.plan.prefill and not r.plan.finished_prefills:  # work still waiting
            utils.append(r.plan.utilization)
    assert utils and all(abs(u - 1.0) <= 0.05 for u in utils)
