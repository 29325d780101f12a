"""KnotForcingStream reliability (issue 13 items 11 and 12): a portrait switch
honours switch_chunks exactly at any depth; one non-finite value does not
poison the stream (reset clears the window; a NaN is detected on the device,
never handed out, and recovered from with an event)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.config import StreamConfig, get_preset
from engine.model import build_model
from engine.stream import KnotForcingStream, NonFiniteWatch

TINY = get_preset("tiny").model
H, W = TINY.height, TINY.width

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg_(**kw) -> StreamConfig:
    base = dict(chunk=3, knot=1, window=4, steps=2, n_init=4, ref_step=2)
    base.update(kw)
    return StreamConfig(**base)


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, init="random", seed=1)


def _chunks_until_swap(model, cfg, begin_chunk: int = 2) -> int:
    g = torch.Generator().manual_seed(0)
    s = KnotForcingStream(model, cfg, seed=0, allow_untrained=True)
    s.set_reference(torch.rand(1, 3, H, W, generator=g))
    while s.chunk_index < begin_chunk:
        s.feed(torch.rand(1, 3, H, W, generator=g))
    s.begin_reference_switch(torch.rand(1, 3, H, W, generator=g))
    while s.switch_pending:
        s.feed(torch.rand(1, 3, H, W, generator=g))
    # the swap happens as the chunk that first uses the new reference starts
    return s.chunk_index - 1 - begin_chunk


@pytest.mark.parametrize("depth,switch_chunks", [(30, 4), (7, 3), (2, 2), (5, 5), (3, 4)])
def test_switch_takes_exactly_switch_chunks_at_any_depth(depth, switch_chunks):
    m = build_model(dataclasses.replace(TINY, depth=depth), init="random", seed=2)
    cfg = cfg_(switch_chunks=switch_chunks)
    assert _chunks_until_swap(m, cfg) == switch_chunks


def test_reset_clears_a_poisoned_window(model):
    g = torch.Generator().manual_seed(1)
    s = KnotForcingStream(model, cfg_(), seed=0, allow_untrained=True)
    s.set_reference(torch.rand(1, 3, H, W, generator=g))
    for _ in range(9):
        s.feed(torch.rand(1, 3, H, W, generator=g))
    r = s.cache.ref_tokens
    s.cache.k[:, :, :, r:] = float("nan")  # a poisoned window and tail
    s.cache.v[:, :, :, r:] = float("nan")
    s._knot.fill_(float("nan"))
    s.reset()
    outs = [o for o in (s.feed(torch.rand(1, 3, H, W, generator=g)) for _ in range(9)) if o is not None]
    assert len(outs) == 3
    assert all(torch.isfinite(o).all() for o in outs)
    assert torch.isfinite(s.last_prediction).all()  # not merely sanitised: the model output is clean


@pytest.mark.parametrize("cache_write", ["clean_pass", "reuse_last_step"])
def test_nan_guide_is_detected_and_recovered_with_an_event(model, cache_write):
    g = torch.Generator().manual_seed(2)
    # check_values=False: what a GPU stream does (no host sync on inputs)
    s = KnotForcingStream(model, cfg_(cache_write=cache_write), seed=0, allow_untrained=True, check_values=False)
    s.set_reference(torch.rand(1, 3, H, W, generator=g))
    outs, finite_pred = [], []
    for n in range(36):
        x = torch.rand(1, 3, H, W, generator=g)
        if n == 7:
            x[0, 1, 5, 5] = float("nan")  # one bad guide pixel
        o = s.feed(x)
        if o is not None:
            outs.append(o)
            finite_pred.append(bool(torch.isfinite(s.last_prediction).all()))
    assert len(outs) == 12
    assert all(torch.isfinite(o).all() for o in outs)  # never a NaN pixel out
    assert not finite_pred[2]  # the chunk with the bad guide
    assert all(finite_pred[4:])  # ... the stream is healthy again, not poisoned for good
    ev = s.pop_events()
    assert [e.kind for e in ev] == ["nonfinite_recovered"]
    assert s.pop_events() == []


def test_watch_accumulates_until_cleared():
    w = NonFiniteWatch(torch.device("cpu"))
    w.record(torch.ones(3))
    assert not w.poll()
    w.record(torch.tensor([1.0, float("inf")]))
    w.record(torch.ones(3))
    assert w.poll()
    w.clear()
    assert not w.poll()
