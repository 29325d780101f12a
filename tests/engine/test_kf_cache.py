"""KV cache equivalence, running ahead and relative positions (fp32, CPU, tiny).

Cache equivalence. A committed frame's keys/values are computed once, by the
forward that wrote it (the clean pass, or the chunk's last step), with the
reference and the window of *its* time. So the exact full-sequence
equivalent of a cached chunk forward is one forward over every writer
segment since the start plus the chunk, with the sliding-window block mask:

    ref copy R_j      -> R_j                      (at the position n_j that chunk j used)
    segment of chunk j -> R_j, itself, and committed frames f of earlier
                          segments with w0_j <= f < i_j (the window of chunk j)

(the reference's hidden states do not depend on its temporal position, since
all its tokens share it, so one copy per chunk is exact). The window frames
the chunk attends to are exactly KV_pre; the older segments are there because
the window frames' keys depend on them.
"""

from __future__ import annotations

import math

import pytest
import torch

from engine.config import StreamConfig, get_preset
from engine.kv_cache import KVCache
from engine.model import AttnSpec, apply_rope, build_model
from engine.stream import KnotForcingStream, plan_chunk

TINY = get_preset("tiny").model


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY, init="random", seed=0)


def _images(g: torch.Generator, b: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, TINY.height, TINY.width, generator=g)


def run_stream(model, cfg: StreamConfig, n_chunks: int, seed: int = 0, batch: int = 1, trace: bool = True):
    s = KnotForcingStream(model, cfg, batch_size=batch, seed=seed, allow_untrained=True)
    s._trace = [] if trace else None
    g = torch.Generator().manual_seed(seed + 100)
    s.set_reference(_images(g, batch))
    outs = []
    while s.chunk_index < n_chunks:
        o = s.feed(_images(g, batch))
        if o is not None:
            outs.append(o)
    return s, outs


def full_sequence_x0(model, stream: KnotForcingStream, chunk: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cached x0, full-sequence x0) of ``chunk``'s forward at ``step``."""
    cfg, c = stream.cfg, stream.c
    tr = stream._trace
    ref = [e for e in tr if e["kind"] == "ref"][-1]
    steps = {(e["chunk"], e["step"]): e for e in tr if e["kind"] == "step"}
    cleans = {e["chunk"]: e for e in tr if e["kind"] == "clean"}

    def writer(j: int) -> dict:
        return cleans[j] if cfg.cache_write == "clean_pass" else steps[(j, cfg.steps - 1)]

    frames, sigmas, pos, rows = [], [], [], []  # rows: (kind, chunk, abs frame, committed)
    for j in range(chunk + 1):
        p = plan_chunk(cfg, j)
        frames.append(ref["frames"])
        sigmas.append(ref["sigma"])
        pos.append(p.ref_position)
        rows.append(("ref", j, None, False))
    segs = [(j, writer(j)) for j in range(chunk)] + [(chunk, steps[(chunk, step)])]
    for j, e in segs:
        p = plan_chunk(cfg, j)
        nf = e["frames"].shape[1]
        frames.append(e["frames"])
        sigmas.append(e["sigma"])
        for m in range(nf):
            pos.append(p.start + m)
            rows.append(("seg", j, p.start + m, m < c))
    n = len(rows)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for qi, (qk, qj, qf, _) in enumerate(rows):
        p = plan_chunk(cfg, qj)
        for ki, (kk, kj, kf, kcommit) in enumerate(rows):
            if qk == "ref":
                mask[qi, ki] = kk == "ref" and kj == qj
            elif kk == "ref":
                mask[qi, ki] = kj == qj
            elif kj == qj:
                mask[qi, ki] = True
            else:
                mask[qi, ki] = kj < qj and kcommit and p.window_start <= kf < p.start
    w0 = plan_chunk(cfg, chunk).window_start
    t_pos = torch.tensor(pos, dtype=torch.float32) - w0  # small numbers, as the stream uses
    x_full = model.forward_full(torch.cat(frames, 1), torch.cat(sigmas, 1), t_pos, mask)
    nq = steps[(chunk, step)]["frames"].shape[1]
    return steps[(chunk, step)]["x0"], x_full[:, -nq:]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("cache_write", ["clean_pass", "reuse_last_step"])
@pytest.mark.parametrize("k", [0, 1])
@pytest.mark.parametrize("c", [1, 3])
def test_cached_chunk_equals_full_sequence_after_wraps(model, c, k, cache_write):
    window = 4
    cfg = StreamConfig(chunk=c, knot=k, window=window, steps=2, n_init=4, ref_step=2, cache_write=cache_write)
    # Chunk J starts after J*c committed frames: the ring has wrapped >= 3 times.
    J = math.ceil(3 * window / c) + 1
    stream, _ = run_stream(model, cfg, J + 1)
    assert stream.cache.frames_written // window >= 3
    for step in range(cfg.steps):
        cached, full = full_sequence_x0(model, stream, J, step)
        assert cached.abs().mean() > 1e-2  # non-trivial outputs
        assert rel_err(cached, full) <= 1e-5, (c, k, cache_write, step)


def test_window_warmup_masks_empty_slots(model):
    """Chunks before the window is full attend only to written slots."""
    cfg = StreamConfig(chunk=1, knot=1, window=4, steps=2, n_init=4, ref_step=2)
    stream, _ = run_stream(model, cfg, 4)
    for j in range(1, 4):
        cached, full = full_sequence_x0(model, stream, j, 1)
        assert rel_err(cached, full) <= 1e-5


def test_kv_cache_commit_wraps_without_growth():
    cache = KVCache(n_layers=2, batch=1, heads=1, head_dim=2, tokens_per_frame=2, window=3, tail_frames=2)
    ptr = cache.k.data_ptr()
    for f in range(10):  # commit one frame at a time; tail frame 0 carries the value f
        cache.k[:, :, :, cache.tail_offset : cache.tail_offset + 2] = float(f)
        cache.commit(1)
    # last three frames 7, 8, 9 sit in slots 7 % 3, 8 % 3, 9 % 3
    ring = cache.k[0, 0, 0, cache.ring_offset : cache.tail_offset, 0].view(3, 2)[:, 0]
    assert ring.tolist() == [9.0, 7.0, 8.0]
    assert cache.k.data_ptr() == ptr and cache.frames_written == 10
    assert cache.slot_positions(cache.window_start).tolist() == [2, 0, 1]  # frame - w0 per slot
    # two frames committed across the wrap point
    cache.k[:, :, :, cache.tail_offset : cache.tail_offset + 4] = torch.tensor([10.0, 10, 11, 11])[:, None]
    cache.commit(2)  # frames 10 (slot 1) and 11 (slot 2)
    ring = cache.k[0, 0, 0, cache.ring_offset : cache.tail_offset, 0].view(3, 2)[:, 0]
    assert ring.tolist() == [9.0, 10.0, 11.0]


# ---- running ahead --------------------------------------------------------------------


def _schedule_by_hand(cfg: StreamConfig, n_chunks: int) -> list[int]:
    out, n = [], cfg.n_init
    for j in range(n_chunks):
        i = j * cfg.chunk
        if cfg.ref_schedule == "offset":
            out.append(i + cfg.chunk + cfg.knot - 1 + cfg.ref_offset)
            continue
        while i + cfg.chunk + cfg.knot > n:
            n += cfg.ref_step
        out.append(n)
    return out


@pytest.mark.parametrize(
    "sched",
    [dict(ref_schedule="step", n_init=8, ref_step=4), dict(ref_schedule="step", n_init=2, ref_step=1),
     dict(ref_schedule="offset", ref_offset=3)],
)
def test_reference_position_follows_schedule(model, sched):
    cfg = StreamConfig(chunk=3, knot=1, window=4, steps=1, **sched)
    s = KnotForcingStream(model, cfg, allow_untrained=True)
    g = torch.Generator().manual_seed(0)
    s.set_reference(_images(g))
    seen = []
    for _ in range(12 * cfg.chunk):
        if s.feed(_images(g)) is not None:
            seen.append(s.last_plan.ref_position)
    expect = _schedule_by_hand(cfg, len(seen))
    assert seen == expect
    # always ahead of the chunk: n >= last frame + 1 (step) / + d (offset)
    for j, n in enumerate(seen):
        assert n >= j * cfg.chunk + cfg.chunk + cfg.knot - (1 if cfg.ref_schedule == "offset" else 0)


def test_reference_keys_rotated_at_read_equal_direct_keys(model):
    cfg = StreamConfig(chunk=3, knot=1, window=4, steps=1, n_init=4, ref_step=2)
    stream, _ = run_stream(model, cfg, 7, trace=False)
    plan = stream.plan()  # the next chunk: n has advanced several times
    assert plan.ref_position > cfg.n_init
    cos, sin = stream.chunk_angles(plan)
    r = stream.cache.ref_tokens
    # direct: run the reference through the blocks with its temporal position
    # set to the chunk's n (relative to the window start), rotate the keys.
    ref_in = stream._ref_in
    pos = torch.tensor([float(plan.ref_rel)])
    cos_d, sin_d = model.rope.angles(pos)
    x = model.embed(ref_in)
    _, tcond = model.time_condition(torch.zeros(1, 1))
    spec = AttnSpec(cos_q=cos_d, sin_q=sin_d)
    with torch.no_grad():
        for layer, block in enumerate(model.blocks):
            k_direct = apply_rope(block.keys_values(x, tcond)[0], cos_d, sin_d)
            k_read = stream.cache.rotated_keys(layer, r, cos[:r], sin[:r])
            assert rel_err(k_read, k_direct) <= 1e-6
            x = block(x, tcond, spec, layer)
    # and they differ from keys at the initial position (the rotation moved)
    cos0, sin0 = model.rope.angles(torch.tensor([float(cfg.n_init)]))
    k0 = stream.cache.rotated_keys(0, r, cos0, sin0)
    assert rel_err(stream.cache.rotated_keys(0, r, cos[:r], sin[:r]), k0) > 1e-3


@pytest.mark.parametrize("schedule", ["step", "offset"])
def test_positions_relative_to_window_start(model, schedule):
    """After ~10^6 frames RoPE sees exactly the angles it saw after ~100."""
    cfg = StreamConfig(chunk=3, knot=1, window=9, steps=1, ref_schedule=schedule, n_init=8, ref_step=4)
    s = KnotForcingStream(model, cfg, allow_untrained=True)
    period = cfg.window * cfg.ref_step * cfg.chunk  # layouts repeat with this chunk period
    a = 100 // cfg.chunk
    b = a + period * (10**6 // (period * cfg.chunk))
    pa, pb = s.plan(a), s.plan(b)
    assert pb.start >= 10**6 - period * cfg.chunk and pa.start < 120
    assert (pa.ref_rel, pa.chunk_rel) == (pb.ref_rel, pb.chunk_rel)
    # same relative layout -> the same ring slots rotate the same way
    s.cache.frames_written = pa.start
    ca, sa = s.chunk_angles(pa)
    s.cache.frames_written = pb.start
    cb, sb = s.chunk_angles(pb)
    assert torch.equal(ca, cb) and torch.equal(sa, sb)
    assert int(s._key_positions(pb).max()) <= cfg.max_relative_position
    for j in range(0, 4000, 7):  # bounded over a long stream
        p = s.plan(j)
        s.cache.frames_written = p.start
        assert 0 <= int(s._key_positions(p).min()) and int(s._key_positions(p).max()) <= cfg.max_relative_position


def test_plain_path_equals_cached_while_nothing_has_left_the_window(model):
    """Before any frame slides out and with a fixed reference position, the
    naive recomputation sees exactly the context the cache stored."""
    cfg = StreamConfig(chunk=3, knot=1, window=12, steps=2, n_init=30, ref_step=4)
    outs = {}
    for mode in ("cached", "plain"):
        s = KnotForcingStream(model, cfg, attention=mode, seed=3, allow_untrained=True)
        g = torch.Generator().manual_seed(5)
        s.set_reference(_images(g))
        outs[mode] = [o for o in (s.feed(_images(g)) for _ in range(12)) if o is not None]
    assert len(outs["cached"]) == 4
    for a, b in zip(outs["cached"], outs["plain"]):
        assert rel_err(a, b) <= 1e-5
