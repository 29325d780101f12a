"""The Triton path end to end: backend choice, the model hook, and a stream
run with the Triton kernels equal to the torch path frame by frame (tiny
preset; on the CPU under Triton's interpreter)."""

from __future__ import annotations

import copy

from tests.engine.kernel_helpers import assert_within_reference_error, fresh_seed, triton_backend  # noqa: F401, I001 (first: sets TRITON_INTERPRET before triton is imported)

import pytest
import torch

from engine.config import EngineError, StreamConfig, get_preset
from engine.kernels import choose, install
from engine.kernels.floor import chunk_floor, format_floors, format_kv_memory, kv_memory
from engine.kv_cache import KVCache
from engine.model import build_model
from engine.stream import KnotForcingStream


def test_choice_follows_the_setting(monkeypatch):
    monkeypatch.delenv("KF_KERNELS", raising=False)
    assert choose("cpu").backend == "torch"
    assert choose("cpu", "torch").backend == "torch"
    monkeypatch.setenv("KF_KERNELS", "torch")
    assert choose("cpu").reason == "KF_KERNELS=torch"
    monkeypatch.setenv("KF_KERNELS", "cuda-please")
    with pytest.raises(EngineError):
        choose("cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    c = choose("cpu", "triton")
    assert c.backend == "torch" and "CUDA" in c.reason  # asked for, cannot run: says why
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert choose("cpu", "triton").backend == "triton"
    assert choose("cpu", "auto").backend == "torch"  # the interpreter is for tests, never chosen by itself


def test_model_chooses_once_at_first_forward(monkeypatch):
    monkeypatch.delenv("KF_KERNELS", raising=False)
    p = get_preset("tiny")
    model = build_model(p.model, init="random", seed=0)
    assert model.kernel_backend is None
    frames = torch.rand(1, 2, p.model.frame_channels, p.model.height, p.model.width)
    with torch.no_grad():
        model.forward_full(frames, torch.zeros(1, 2), torch.arange(2.0))
    assert model.kernel_backend == "torch" and all(b.kernels is None for b in model.blocks)
    # a cache on a torch-path device keeps its rotated copy
    cache = KVCache(n_layers=1, batch=1, heads=2, head_dim=16, tokens_per_frame=4, window=2, tail_frames=2)
    assert cache.k_rot is not None


def _run_stream(model, cfg: StreamConfig, n_chunks: int, seed: int) -> tuple[list[torch.Tensor], KnotForcingStream]:
    mc = model.cfg
    g = torch.Generator().manual_seed(seed)
    shape = (1, mc.in_channels, mc.height, mc.width)
    ref = torch.rand(shape, generator=g) * 2 - 1
    guides = [torch.rand(shape, generator=g) * 2 - 1 for _ in range(n_chunks * cfg.chunk)]
    stream = KnotForcingStream(model, cfg, allow_untrained=True, seed=seed, check_values=False)
    stream.set_reference_encoded(ref)
    out = []
    for gd in guides:
        if stream.feed_encoded(gd) is not None:
            out.append(stream.last_committed_encoded.double().cpu())  # codec space: no clamping hides errors
    return out, stream


@pytest.mark.parametrize(
    "dtype,cache_write",
    [(torch.float32, "clean_pass"), (torch.bfloat16, "clean_pass"), (torch.float32, "reuse_last_step")],
    ids=["fp32", "bf16", "fp32-reuse_last_step"],
)
def test_stream_triton_equals_torch(triton_backend, monkeypatch, dtype, cache_write):
    """3 chunks of the tiny preset (c=3, k=1, L=4): chunk 1 sees a window
    that is not full and its commit wraps the ring; chunk 2 reads the wrapped
    ring. Each committed frame of the Triton run is within 3x the
    torch run's own error (both against a float64 torch run)."""
    seed = fresh_seed()
    p = get_preset("tiny")
    cfg = StreamConfig(**{**p.stream.to_dict(), "cache_write": cache_write})
    n_chunks = 3
    base = build_model(p.model, init="random", seed=seed % 1000).eval()  # one set of weights for all runs
    truth_model = copy.deepcopy(base).to(torch.float64)
    install(truth_model, "torch")
    truth, _ = _run_stream(truth_model, cfg, n_chunks, seed)

    model = copy.deepcopy(base).to(device=triton_backend, dtype=dtype)
    model_t = model  # the same model, the other kernels
    assert install(model, "torch").backend == "torch"
    ref, s_torch = _run_stream(model, cfg, n_chunks, seed)
    assert s_torch.cache.k_rot is not None

    monkeypatch.setenv("KF_KERNELS", "triton")  # the stream's cache asks the same setting: no k_rot
    assert install(model_t, "triton").backend == "triton"
    out, s_tri = _run_stream(model_t, cfg, n_chunks, seed)
    assert s_tri.cache.k_rot is None, "the Triton attention rotates on read: no rotated copy"
    assert s_tri.kv_cache_bytes * 3 == s_torch.kv_cache_bytes * 2
    assert len(out) == len(ref) == len(truth) == n_chunks
    for j, (o, r, t) in enumerate(zip(out, ref, truth)):
        for f in range(o.shape[1]):
            assert_within_reference_error(o[:, f], r[:, f], t[:, f], dtype, f"chunk {j} frame {f}", seed)


def test_kv_memory_matches_the_cache():
    p = get_preset("tiny")
    mc, sc = p.model, p.stream
    args = dict(n_layers=mc.depth, batch=1, heads=mc.heads, head_dim=mc.head_dim, tokens_per_frame=mc.tokens_per_frame,
                window=sc.window, tail_frames=sc.chunk + sc.knot, dtype=torch.float32)
    with_rot, without = KVCache(rotated_copy=True, **args), KVCache(rotated_copy=False, **args)
    m = kv_memory("tiny", elem=4)
    assert with_rot.nbytes == m["bytes_with_k_rot"] and without.nbytes == m["bytes_without_k_rot"]
    assert kv_memory("paper")["bytes_saved"] == 30 * 12 * 21840 * 128 * 2


def test_floors_are_counted():
    r = chunk_floor("paper", 989e12, 4.8e12)
    assert 150 < r["tflop"] < 220 and r["tflop_attention"] > 0.5 * r["tflop"]  # attention dominates at 21,840 keys
    assert r["video_frames_per_chunk"] == 12
    text = format_floors() + format_kv_memory()
    for name in ("default", "laptop", "paper"):
        assert name in text


def test_bench_without_gpu_says_so_and_exits_0(capsys):
    from engine.kernels.bench import main

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real benchmark runs")
    assert main(["--kernels"]) == 0
    assert main(["--engine", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "GPU is needed" in out and "floor" in out and "paper" in out


def test_bench_code_paths_run(triton_backend, monkeypatch):
    """Dry run of the GPU benchmark's code on the tiny preset (interpreter
    on the CPU), so the GPU session does not find its bugs."""
    from engine.kernels.bench import bench_engine, bench_kernels, format_engine_rows, format_kernel_rows

    ceil = {"flops": 1e12, "bytes": 1e11}
    rows = bench_kernels("tiny", ceil, dtype=torch.float32, device=str(triton_backend))
    assert {r["kernel"] for r in rows} >= {"attention (tables)", "ln_modulate", "kv_write (+k RMSNorm)"}
    assert "attention" in format_kernel_rows(rows, ceil)
    monkeypatch.setenv("KF_KERNELS", "torch")
    eng = bench_engine("tiny", 1, False, ceil, dtype=torch.float32, device=str(triton_backend), warmup=0)
    assert [r["path"] for r in eng] == ["torch", "triton"] and all("chunk_ms" in r for r in eng), eng
    assert eng[1]["kv_cache_mib"] * 3 == pytest.approx(eng[0]["kv_cache_mib"] * 2)
    assert "x torch" in format_engine_rows(eng)
    import os

    assert os.environ["KF_KERNELS"] == "torch"  # restored


def test_block_rotates_from_positions_like_tables(triton_backend, monkeypatch):
    """AttnSpec.t_pos (angles computed in the kernel) gives the same forward
    as the stream's cos/sin tables."""
    import dataclasses

    from engine.model import AttnSpec

    monkeypatch.setenv("KF_KERNELS", "triton")
    p = get_preset("tiny")
    model = build_model(p.model, init="random", seed=3).to(triton_backend).eval()
    install(model, "triton")
    _, stream = _run_stream(model, p.stream, 1, 3)  # a window with 3 of its 4 frames committed (masked slot)
    cache, plan = stream.cache, stream.plan()
    cos, sin = stream.chunk_angles(plan)
    tail, n_tail = cache.tail_offset, stream.F * stream.T
    spec = AttnSpec(cos_q=cos[tail:], sin_q=sin[tail:], mask=cache.key_mask(n_tail), k_cache=cache.k, v_cache=cache.v,
                    write_at=tail, n_keys=tail + n_tail, cos_k=cos, sin_k=sin)
    frames = torch.rand(1, stream.F, p.model.frame_channels, p.model.height, p.model.width,
                        device=triton_backend) * 2 - 1
    sigma = torch.full((1, stream.F), 0.7, device=triton_backend)
    with torch.no_grad():
        a = model(frames, sigma, spec)
        b = model(frames, sigma, dataclasses.replace(spec, t_pos=stream._key_positions(plan), cos_k=None, sin_k=None,
                                                     cos_q=None, sin_q=None))
    assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
