"""KnotForcingStream: knot fusion, plain chunking at k = 0, constant memory,
determinism and batching, portrait switch, bad input (fp32, CPU, tiny)."""

from __future__ import annotations

import gc

import pytest
import torch

from engine.config import ConfigError, StreamConfig, get_preset
from engine.kv_cache import KVCache
from engine.model import AttnSpec, build_model
from engine.sampler import FlowMatchSampler
from engine.stream import (
    KnotForcingStream,
    StreamInputError,
    StreamStateError,
    UntrainedModelError,
    plan_chunk,
)

TINY = get_preset("tiny").model
H, W = TINY.height, TINY.width


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return build_model(TINY, init="random", seed=1)


def imgs(g: torch.Generator, b: int = 1) -> torch.Tensor:
    return torch.rand(b, 3, H, W, generator=g)


def cfg_(**kw) -> StreamConfig:
    base = dict(chunk=3, knot=1, window=4, steps=2, n_init=4, ref_step=2)
    base.update(kw)
    return StreamConfig(**base)


# ---- knot ----------------------------------------------------------------------------


@pytest.mark.parametrize("cache_write", ["clean_pass", "reuse_last_step"])
def test_committed_knot_is_mean_of_old_knot_and_new_prediction(model, cache_write):
    s = KnotForcingStream(model, cfg_(knot=2, cache_write=cache_write), allow_untrained=True)
    s._trace = []
    g = torch.Generator().manual_seed(0)
    s.set_reference(imgs(g))
    k, c = 2, 3
    prev_knot = None
    for _ in range(5):
        out = None
        while out is None:
            out = s.feed(imgs(g))
        pred, committed = s.last_prediction, s.last_committed_encoded
        if prev_knot is None:
            assert torch.equal(committed, pred[:, :c])  # first chunk: nothing to fuse
        else:
            torch.testing.assert_close(committed[:, :k], 0.5 * (prev_knot + pred[:, :k]), rtol=0, atol=1e-7)
            assert torch.equal(committed[:, k:], pred[:, k:c])
            # the old knot reached this chunk as an image-to-video condition
            step0 = [e for e in s._trace if e["kind"] == "step" and e["chunk"] == s.chunk_index - 1][0]
            C = TINY.in_channels
            assert torch.all(step0["frames"][:, :k, 2 * C] == 1) and torch.all(step0["frames"][:, k:, 2 * C] == 0)
            torch.testing.assert_close(step0["frames"][:, :k, 2 * C + 1 :], prev_knot, rtol=0, atol=0)
        # output frames are the committed ones, decoded
        torch.testing.assert_close(out, ((committed + 1) / 2).clamp(0, 1)[:, :, :3])
        prev_knot = s.knot.clone()
        assert torch.equal(prev_knot, pred[:, c:])


def _manual_chunked_generation(model, cfg: StreamConfig, ref: torch.Tensor, guides: list[torch.Tensor], seed: int):
    """Plain chunked causal generation written directly on KVCache + model +
    sampler: no knot anywhere. The stream with k = 0 must equal it."""
    c, L, T = cfg.chunk, cfg.window, TINY.tokens_per_frame
    C = TINY.in_channels
    cache = KVCache(n_layers=TINY.depth, batch=1, heads=TINY.heads, head_dim=TINY.head_dim,
                    tokens_per_frame=T, window=L, tail_frames=c)
    sampler = FlowMatchSampler(cfg.steps, cfg.shift)
    gen = torch.Generator().manual_seed(seed)

    def frame_in(x, guide):  # (1, n, C, H, W) x2 -> (1, n, 3C+1, H, W)
        return torch.cat((x, guide, torch.zeros(1, x.shape[1], C + 1, H, W)), dim=2)

    r = ref * 2 - 1
    cos0, sin0 = model.rope.angles(torch.zeros(1))
    model(frame_in(r[:, None], r[:, None]), torch.zeros(1, 1),
          AttnSpec(cos_q=cos0, sin_q=sin0, k_cache=cache.k, v_cache=cache.v, n_keys=T, cos_k=cos0, sin_k=sin0),
          kv_only=True)
    outs = []
    for j in range(len(guides) // c):
        i = j * c
        w0 = max(0, i - L)
        g = torch.stack(guides[i : i + c], 1) * 2 - 1  # (1, c, C, H, W)
        pos = torch.cat((torch.tensor([float(cfg.ref_position(i) - w0)]),
                         ((torch.arange(L) - w0) % L).float(), torch.arange(c).float() + (i - w0)))
        cos, sin = model.rope.angles(pos)
        mask = None
        if i < L:
            valid = torch.cat((torch.ones(T), (torch.arange(L * T) // T < i).float(), torch.ones(c * T))).bool()
            mask = valid.view(1, 1, 1, -1)
        tail = cache.tail_offset
        spec = AttnSpec(cos_q=cos[tail:], sin_q=sin[tail:], mask=mask, k_cache=cache.k, v_cache=cache.v,
                        write_at=tail, n_keys=cache.capacity, cos_k=cos, sin_k=sin)
        x = torch.randn(1, c, C, H, W, generator=gen)
        for s in range(cfg.steps):
            x0 = model(frame_in(x, g), torch.full((1, c), sampler.sigmas[s]), spec)
            x = sampler.step(x, x0, s)
        model(frame_in(x, g), torch.zeros(1, c), spec, kv_only=True)  # clean pass
        cache.commit(c)
        outs.append(((x + 1) / 2).clamp(0, 1))
    return outs


@pytest.mark.parametrize("c", [1, 3])
def test_k0_is_plain_chunked_generation(model, c):
    cfg = cfg_(chunk=c, knot=0)
    g = torch.Generator().manual_seed(2)
    ref = imgs(g)
    guides = [imgs(g) for _ in range(5 * c)]
    s = KnotForcingStream(model, cfg, seed=7, allow_untrained=True)
    s._trace = []
    s.set_reference(ref)
    outs = [o for o in (s.feed(x) for x in guides) if o is not None]
    assert len(outs) == 5 and all(o.shape == (1, c, 3, H, W) for o in outs)
    for e in s._trace:
        if e["kind"] in ("step", "clean"):
            assert e["frames"].shape[1] == c  # no knot frames are denoised
            assert torch.all(e["frames"][:, :, 2 * TINY.in_channels :] == 0)  # no knot condition
    with torch.no_grad():
        manual = _manual_chunked_generation(model, cfg, ref, guides, seed=7)
    for a, b in zip(outs, manual):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# ---- memory --------------------------------------------------------------------------


def _live_tensors() -> tuple[int, int]:
    gc.collect()
    seen, total, count = set(), 0, 0
    for o in gc.get_objects():
        if type(o) is torch.Tensor or type(o) is torch.nn.Parameter:
            try:
                st = o.untyped_storage()
            except Exception:
                continue
            count += 1
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return count, total


def test_memory_constant_over_1000_chunks(model):
    cfg = cfg_(chunk=1, knot=1, window=3, steps=1)
    s = KnotForcingStream(model, cfg, allow_untrained=True, check_values=False)
    g = torch.Generator().manual_seed(0)
    s.set_reference(imgs(g))
    guide = imgs(g)
    ptrs = (s.cache.k.data_ptr(), s.cache.v.data_ptr())

    def run(n):
        for _ in range(n):
            out = s.feed(guide)
            assert out is not None
        del out

    run(50)  # warm-up
    _live_tensors()  # the scan itself may import/cache things once
    tens0 = _live_tensors()
    objs0 = len(gc.get_objects())
    run(950)
    tens1 = _live_tensors()
    objs1 = len(gc.get_objects())
    assert s.chunk_index == 1000
    assert tens1 == tens0, (tens0, tens1)  # same number of live tensors and bytes
    assert objs1 - objs0 <= 5, (objs0, objs1)  # no per-chunk Python objects accumulate
    assert (s.cache.k.data_ptr(), s.cache.v.data_ptr()) == ptrs


# ---- determinism and batching ----------------------------------------------------------


def _run(model, cfg, refs, guides, seed, batch):
    s = KnotForcingStream(model, cfg, batch_size=batch, seed=seed, allow_untrained=True)
    s.set_reference(refs)
    return torch.cat([o for o in (s.feed(x) for x in guides) if o is not None], 1)


def test_same_seed_same_frames_and_batch_equals_singles(model):
    cfg = cfg_()
    g = torch.Generator().manual_seed(3)
    B = 3
    refs = imgs(g, B)
    guides = [imgs(g, B) for _ in range(12)]
    a = _run(model, cfg, refs, guides, seed=11, batch=B)
    b = _run(model, cfg, refs, guides, seed=11, batch=B)
    assert torch.equal(a, b)
    other = _run(model, cfg, refs, guides, seed=12, batch=B)
    assert not torch.allclose(a, other)
    for i in range(B):
        single = _run(model, cfg, refs[i : i + 1], [x[i : i + 1] for x in guides], seed=11 + i, batch=1)
        torch.testing.assert_close(a[i : i + 1], single, rtol=0, atol=1e-5)


# ---- portrait switch ---------------------------------------------------------------------


@pytest.mark.parametrize("explicit", [False, True])
def test_reference_switch_keeps_output_flowing_then_equals_direct_switch(model, explicit):
    cfg = cfg_(switch_chunks=2)  # 2 layers over 2 chunks: one layer per chunk
    g = torch.Generator().manual_seed(4)
    ref1, ref2 = imgs(g), imgs(g)
    guides = [imgs(g) for _ in range(10 * cfg.chunk)]
    a = KnotForcingStream(model, cfg, seed=0, allow_untrained=True)
    b = KnotForcingStream(model, cfg, seed=0, allow_untrained=True)
    a.set_reference(ref1)
    b.set_reference(ref1)
    outs_a, outs_b = [], []
    swapped_at = None
    for n, x in enumerate(guides):
        if n == 2 * cfg.chunk:  # after two chunks the user picks another portrait
            a.begin_reference_switch(ref2)
            assert a.switch_pending and not a.switch_ready
        if explicit and a.switch_pending and not a.switch_ready and n % cfg.chunk == 1:
            a.step_reference_switch(token_budget=TINY.tokens_per_frame)  # one layer
        if n % cfg.chunk == 0 and a.switch_ready:
            b.set_reference(ref2, keep_history=True)  # what the swap must equal
            swapped_at = a.chunk_index
        oa, ob = a.feed(x), b.feed(x)
        assert (oa is None) == (ob is None)  # output keeps coming during the switch
        if oa is not None:
            outs_a.append(oa)
            outs_b.append(ob)
    assert swapped_at is not None and not a.switch_pending
    assert swapped_at <= 4  # the prefill took at most two chunks
    assert len(outs_a) == 10
    for oa, ob in zip(outs_a, outs_b):
        torch.testing.assert_close(oa, ob, rtol=0, atol=1e-6)
    torch.testing.assert_close(a.cache.k, b.cache.k, rtol=0, atol=1e-6)
    # and the switch changed the output (ref2 differs from ref1)
    c = KnotForcingStream(model, cfg, seed=0, allow_untrained=True)
    c.set_reference(ref1)
    outs_c = [o for o in (c.feed(x) for x in guides) if o is not None]
    assert not torch.allclose(outs_a[-1], outs_c[-1], atol=1e-4)


# ---- bad input -------------------------------------------------------------------------------


def test_guide_before_reference(model):
    s = KnotForcingStream(model, cfg_(), allow_untrained=True)
    with pytest.raises(StreamStateError, match="before any reference") as e:
        s.feed(torch.rand(1, 3, H, W))
    assert "set_reference" in e.value.hint


@pytest.mark.parametrize(
    "bad, match, hint",
    [
        (torch.rand(3, H, W), "shape", "batch dimension"),
        (torch.rand(2, 3, H, W), "shape", "batch_size=1"),
        (torch.rand(1, 3, H + 4, W), "shape", "resize"),
        (torch.rand(1, H, W, 3), "shape", "channels first"),
        ((torch.rand(1, 3, H, W) * 255).to(torch.uint8), "dtype", "/ 255"),
        (torch.rand(1, 3, H, W) * 255, r"values span", "255"),
        (torch.rand(1, 3, H, W) * 2 - 1, r"values span", "255"),
        (torch.full((1, 3, H, W), float("nan")), "NaN", "source"),
        ([[0.0]], "torch.Tensor", "from_numpy"),
    ],
)
def test_bad_guides_and_references(model, bad, match, hint):
    s = KnotForcingStream(model, cfg_(), allow_untrained=True)
    with pytest.raises(StreamInputError, match=match) as e:
        s.set_reference(bad)
    assert hint in e.value.hint
    s.set_reference(torch.rand(1, 3, H, W))
    with pytest.raises(StreamInputError, match=match):
        s.feed(bad)
    assert s.feed(torch.rand(1, 3, H, W)) is None  # the stream still works


def test_untrained_model_is_refused_without_opt_in(model):
    with pytest.raises(UntrainedModelError, match="no trained weights") as e:
        KnotForcingStream(model, cfg_())
    assert "guide-only" in e.value.hint


@pytest.mark.parametrize(
    "kw, match",
    [(dict(chunk=3, knot=4), "knot"), (dict(chunk=4, window=3), "window"), (dict(steps=0), "steps"),
     (dict(cache_write="bogus"), "cache_write"), (dict(ref_schedule="x"), "ref_schedule")],
)
def test_bad_stream_config(kw, match):
    with pytest.raises(ConfigError, match=match):
        StreamConfig(**kw).validate()


def test_flush_returns_partial_chunk_and_latency(model):
    s = KnotForcingStream(model, cfg_(), allow_untrained=True)
    g = torch.Generator().manual_seed(0)
    s.set_reference(imgs(g))
    outs = [s.feed(imgs(g)) for _ in range(5)]
    assert [o is None for o in outs] == [True, True, False, True, True]
    tail = s.flush()
    assert tail.shape == (1, 2, 3, H, W)
    assert s.chunk_index == 0 and s.latency_frames == 2
    w = KnotForcingStream(model, cfg_(knot_guide="wait"), allow_untrained=True)
    w.set_reference(imgs(g))
    outs = [w.feed(imgs(g)) for _ in range(7)]
    assert [o is None for o in outs] == [True, True, True, False, True, True, False]  # one frame later
    assert w.latency_frames == 3


@pytest.mark.parametrize("mode", ["hold", "linear"])
def test_knot_guides_extrapolated(model, mode):
    s = KnotForcingStream(model, cfg_(knot=2, knot_guide=mode), allow_untrained=True)
    s._trace = []
    g = torch.Generator().manual_seed(0)
    s.set_reference(imgs(g))
    x = [imgs(g) for _ in range(3)]
    s.feed(x[0]), s.feed(x[1]), s.feed(x[2])
    C = TINY.in_channels
    guides = s._trace[1]["frames"][0, :, C : 2 * C]  # (F, C, H, W) chunk 0's guides
    e = [v[0] * 2 - 1 for v in x]
    if mode == "hold":
        expect = [e[2], e[2]]
    else:
        expect = [(2 * e[2] - e[1]).clamp(-1, 1), (3 * e[2] - 2 * e[1]).clamp(-1, 1)]
    torch.testing.assert_close(guides[3], expect[0])
    torch.testing.assert_close(guides[4], expect[1])


def test_plan_chunk_matches_stream_state(model):
    cfg = cfg_()
    s = KnotForcingStream(model, cfg, allow_untrained=True)
    g = torch.Generator().manual_seed(0)
    s.set_reference(imgs(g))
    for _ in range(8 * cfg.chunk):
        if s.feed(imgs(g)) is not None:
            p = s.last_plan
            assert p == plan_chunk(cfg, s.chunk_index - 1)
            assert p.n_window == min(p.start, cfg.window)
