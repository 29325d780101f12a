"""engine/planner.py: the step planner alone (pure Python, no model, no torch
state), in the style of a serving scheduler's tests: build a planner, add
streams, schedule(), check the plan, update(), repeat."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from engine.planner import AdmissionError, PlannerConfig, StepPlanner, default_token_budget

T, F, C = 16, 4, 3  # tokens per frame, frames per forward (c + k), committed


def make(slots=4, depth=2, budget=None, clean_pass=False, switch_chunks=4, steps=2) -> StepPlanner:
    sig = tuple(1.0 - i / steps for i in range(steps))
    budget = budget if budget is not None else default_token_budget(slots, T, F)
    return StepPlanner(PlannerConfig(slots=slots, depth=depth, tokens_per_frame=T, chunk=C, knot=F - C,
                                     sigmas=sig, clean_pass=clean_pass, token_budget=budget,
                                     switch_chunks=switch_chunks))


def live(p: StepPlanner, slot: int) -> None:
    p.join_ready(slot)


def step(p: StepPlanner, now: float = 0.0, ready: bool = True):
    """Mark every idle live stream ready (its guides are in), plan, update."""
    if ready:
        for s in list(p.streams.values()):
            if s.live and s.step == 0 and not s.ready:
                p.mark_ready(s.slot, deadline=now + s.slot * 1e-3)
    plan = p.schedule()
    return plan, p.update(plan)


def test_planner_imports_no_torch():
    tree = ast.parse(Path(__file__).resolve().parents[2].joinpath("engine/planner.py").read_text())
    mods = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not mods & {"torch", "numpy", "engine"}


def test_live_denoising_first_then_prefill_takes_exactly_the_slack():
    # budget in tokens through all layers: a slack of T/4 tokens at depth 2 is
    # T/2 token-layers, half of one reference frame in one layer
    p = make(slots=3, depth=2, budget=2 * F * T + T // 4)
    live(p, 0)
    live(p, 1)
    p.join(2)
    plan, _ = step(p)
    assert [w.slot for w in plan.denoise] == [0, 1]
    assert all(w.tokens == F * T and w.sigma == 1.0 and w.step == 0 for w in plan.denoise)
    assert len(plan.prefill) == 1
    piece = plan.prefill[0]
    assert (piece.slot, piece.kind) == (2, "join")
    # split inside the first layer by query tokens: the slack is smaller than one frame
    assert piece.start == (0, 0) and piece.stop == (0, T // 2)
    assert piece.layer_ranges() == [(0, 0, T // 2)]
    assert plan.scheduled_token_layers == plan.budget_token_layers
    assert plan.num_scheduled_tokens == plan.token_budget


def test_prefill_covers_every_layer_and_token_once_in_order():
    depth = 5
    p = make(slots=2, depth=depth, budget=F * T + 7)  # an awkward slack: 7 * depth token-layers
    live(p, 0)
    p.join(1)
    pieces, done = [], False
    for _ in range(100):
        plan, events = step(p)
        assert plan.scheduled_token_layers <= plan.budget_token_layers
        pieces += plan.prefill
        if ("joined", 1) in events:
            done = True
            break
    assert done and pieces[-1].finishes and not any(x.finishes for x in pieces[:-1])
    cells = [(layer, tok) for x in pieces for layer, a, b in x.layer_ranges() for tok in range(a, b)]
    assert cells == [(layer, tok) for layer in range(depth) for tok in range(T)]
    # pieces chain: each starts where the last one stopped
    assert all(a.stop == b.start for a, b in zip(pieces, pieces[1:]))
    # some pieces span whole layers, some cut inside one
    assert any(x.layers[1] - x.layers[0] > 1 for x in pieces) and any(x.start[1] for x in pieces)


def test_joining_stream_is_not_live_until_its_reference_is_built():
    p = make(slots=2, depth=2, budget=2 * F * T)
    live(p, 0)
    p.join(1)
    p.mark_ready(1, deadline=0.0)  # guides in before the reference is built: it must still wait
    plan, ev = step(p)
    assert [w.slot for w in plan.denoise] == [0]
    assert ("joined", 1) in ev and plan.finished_prefills == [1]
    plan, _ = step(p)
    assert sorted(w.slot for w in plan.denoise) == [0, 1]


def test_a_join_does_not_delay_the_live_streams():
    p = make(slots=4, depth=3, budget=3 * F * T + 3)  # tiny slack: the join crawls
    for s in range(3):
        live(p, s)
    p.join(3)
    for n in range(100):
        plan, ev = step(p)
        # every live stream runs its step every engine step: no deferral, no gap
        assert {w.slot for w in plan.denoise} == {0, 1, 2}
        assert not plan.deferred
        if ("joined", 3) in ev:
            break
    assert n >= 4  # it did take several steps


def test_earliest_deadline_first_when_the_budget_is_short():
    p = make(slots=3, depth=2, budget=2 * F * T)  # room for two of three
    for s in range(3):
        live(p, s)
    p.mark_ready(0, deadline=3.0)
    p.mark_ready(1, deadline=1.0)
    p.mark_ready(2, deadline=2.0)
    plan = p.schedule()
    assert [w.slot for w in plan.denoise] == [1, 2] and plan.deferred == [0]
    p.update(plan)
    plan = p.schedule()  # the chunks in flight (deadlines 1, 2) finish first
    assert [w.slot for w in plan.denoise] == [1, 2] and plan.deferred == [0]
    assert all(w.emits and w.last for w in plan.denoise)
    p.update(plan)
    plan = p.schedule()
    assert [w.slot for w in plan.denoise] == [0]


def test_one_stream_always_runs_even_if_alone_it_exceeds_nothing():
    p = make(slots=1, depth=2, budget=F * T)
    live(p, 0)
    plan, _ = step(p)
    assert [w.slot for w in plan.denoise] == [0] and plan.utilization == 1.0


def test_chunk_steps_sigmas_and_clean_pass():
    p = make(slots=1, depth=2, clean_pass=True, steps=2)
    live(p, 0)
    works = []
    for _ in range(6):
        plan, ev = step(p)
        works += plan.denoise
    assert [(w.chunk, w.step) for w in works] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert [w.sigma for w in works[:3]] == [1.0, 0.5, 0.0]
    assert [w.emits for w in works[:3]] == [False, True, False]
    assert [w.clean_pass for w in works[:3]] == [False, False, True]
    assert works[2].frames == C and works[2].tokens == C * T and works[2].last


@pytest.mark.parametrize("clean_pass", [False, True])
@pytest.mark.parametrize("slack_frames", [0, 1, 40])
@pytest.mark.parametrize("depth,switch_chunks", [(30, 4), (3, 4), (8, 3), (1, 1)])
def test_switch_swaps_exactly_switch_chunks_later_at_any_depth(depth, switch_chunks, slack_frames, clean_pass):
    """A switch begun before chunk m is used from chunk m + switch_chunks, with
    no slack (its quota rides over the budget), a little or a lot."""
    p = make(slots=2, depth=depth, budget=2 * F * T + slack_frames * T, clean_pass=clean_pass,
             switch_chunks=switch_chunks)
    live(p, 0)
    live(p, 1)
    for _ in range(2 * p.cfg.steps_per_chunk):  # two chunks
        step(p)
    assert p.streams[0].chunk == 2 and p.streams[0].step == 0
    assert p.begin_switch(0) == 2 + switch_chunks
    swapped = None
    for _ in range(40 * p.cfg.steps_per_chunk):
        plan, ev = step(p)
        for w in plan.denoise:
            if w.swap_reference:
                swapped = w.chunk
                assert w.slot == 0 and w.step == 0
        assert {w.slot for w in plan.denoise} == {0, 1}  # nobody waits for the switch
        if swapped is not None:
            break
    assert swapped == 2 + switch_chunks
    assert p.streams[0].prefill is None


def test_switch_begun_mid_chunk_counts_from_the_next_chunk():
    p = make(slots=1, depth=30, budget=F * T, switch_chunks=4)
    live(p, 0)
    step(p)  # chunk 0, step 0 of 2
    assert p.begin_switch(0) == 1 + 4


def test_switch_quota_is_paced_over_the_chunks():
    p = make(slots=1, depth=30, budget=F * T, switch_chunks=4)  # zero slack: only the quota
    live(p, 0)
    p.begin_switch(0)
    done = []
    for _ in range(8):
        plan, _ = step(p)
        done.append(p.streams[0].prefill.done if p.streams[0].prefill else None)
    total = 30 * T
    assert done[-1] == total and done == sorted(done)
    assert done[0] == total // 8  # one eighth per stream step (4 chunks x 2 steps)


def test_leaving_stream_frees_its_slot_at_the_chunk_boundary():
    p = make(slots=2, depth=2)
    live(p, 0)
    live(p, 1)
    step(p)  # both mid-chunk
    assert p.leave(1) is False  # finishes its chunk first
    with pytest.raises(AdmissionError, match="slots"):
        p.join()
    plan, ev = step(p)
    assert 1 in {w.slot for w in plan.denoise} and ("left", 1) in ev
    assert p.free_slots == [1]
    assert p.join() == 1
    assert p.leave(1) is True  # not streaming yet: free at once


def test_admission_control_checks_slots_and_deadlines():
    p = make(slots=3, depth=2, budget=default_token_budget(3, T, F))
    live(p, 0)
    assert p.admission_check(25.0, None) is None
    assert p.admission_check(25.0, step_time_s=0.005) is None
    # 2 steps per chunk of 3 frames at 25 fps: a step must take < 60 ms
    assert "period" in p.admission_check(25.0, step_time_s=0.07)
    with pytest.raises(AdmissionError):
        p.join(fps=25.0, step_time_s=0.07)
    # token capacity: many fast streams on a small budget
    q = make(slots=8, depth=2, budget=F * T)
    for s in range(4):
        live(q, s)
    assert "tokens/s" in q.admission_check(25.0, step_time_s=0.02)


def test_steady_state_steps_are_full_while_side_work_waits():
    p = make(slots=4, depth=4, budget=3 * F * T + T // 4)  # a reference layer per step
    for s in range(3):
        live(p, s)
    p.join(3)
    fills = []
    for _ in range(4):
        plan, _ = step(p)
        fills.append(plan.utilization)
    assert all(abs(u - 1.0) <= 0.05 for u in fills)


def test_config_rejects_a_budget_below_one_forward():
    with pytest.raises(ValueError, match="smaller than one chunk"):
        make(budget=F * T - 1)
