"""Each Triton kernel of engine/kernels against its torch reference.

On a machine without a GPU they run in Triton's CPU interpreter
(TRITON_INTERPRET=1, set by the ``triton_backend`` fixture for this module
only) on small shapes; with a GPU, on the GPU. Inputs are fresh random
numbers every run (KF_TEST_SEED=N reproduces one). Bounds: the kernel's
error against a float64 truth must stay within 3x the torch reference's own
error in the same dtype (plus a few ulps), so bf16 is held to bf16's
accuracy, not to a loose absolute tolerance.
"""

from __future__ import annotations

from tests.engine.kernel_helpers import assert_within_reference_error, fresh_seed, max_err, triton_backend  # noqa: F401, I001 (first: sets TRITON_INTERPRET before triton is imported)

import pytest
import torch

from engine.config import ModelConfig
from engine.kernels.attention import (
    RopeTables, attention_bytes, attention_flops, chunk_attention, chunk_attention_reference, rope_positions,
)
from engine.kernels.norm import (
    gated_residual, gated_residual_reference, kv_write, kv_write_reference, ln_modulate,
    ln_modulate_reference, residual_ln_modulate, residual_ln_modulate_reference,
)
from engine.model import Rope3D

DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True, scope="module")
def small_tiles():
    """Interpreter tiles of 16 here (the kernels' interpreter default is 64,
    for speed): the shapes below then span several query and key tiles,
    with partial last tiles and masked segments starting mid-tile."""
    from engine.kernels import attention, norm

    saved = [(k, dict(k.interp_meta)) for k in (attention._KERNEL, norm._MOD, norm._KV)]
    attention._KERNEL.interp_meta.update(BLOCK_M=16, BLOCK_N=16)
    norm._MOD.interp_meta.update(BLOCK_R=4)
    norm._KV.interp_meta.update(BLOCK_T=16)
    yield
    for k, meta in saved:
        k.interp_meta = meta


def _rope(heads: int, head_dim: int, hp: int, wp: int) -> Rope3D:
    cfg = ModelConfig(in_channels=1, height=hp, width=wp, patch=1, dim=heads * head_dim, heads=heads, depth=1)
    return Rope3D(cfg.validate())


def _rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


# heads, head dim, frame grid (T = hp * wp), window L, frames F of the forward's
# chunk, frames committed so far, how far the reference is ahead of the
# chunk's last frame, which queries, RoPE source, mask form.
CASES = {
    # ring wrapped (w0 = 8: slot s holds frame w0 + (s - w0) mod L), window full, odd heads, Dh/2 = 10
    "ring_wrap": dict(H=3, Dh=20, grid=(2, 3), L=5, F=3, written=13, ahead=4, nq="chunk", rope="pos", mask="none"),
    # window not yet full: the unwritten ring slots are skipped as a key range; 5 heads, T = 7
    "not_full": dict(H=5, Dh=16, grid=(1, 7), L=4, F=4, written=2, ahead=6, nq="chunk", rope="pos", mask="range"),
    # the model hook's form: per-token cos/sin tables and a boolean key vector
    "not_full_tables": dict(H=3, Dh=16, grid=(1, 7), L=4, F=4, written=3, ahead=6, nq="chunk", rope="table",
                            mask="vector"),
    # reference far ahead of the chunk (relative position ~400)
    "ref_far_ahead": dict(H=1, Dh=24, grid=(1, 5), L=3, F=2, written=30, ahead=400, nq="chunk", rope="pos",
                          mask="none"),
    "ref_far_ahead_tables": dict(H=2, Dh=24, grid=(1, 5), L=3, F=2, written=30, ahead=400, nq="chunk",
                                 rope="table", mask="none"),
    # clean pass: the c committed frames only (Nq = c*T, n_keys = tail + c*T)
    "clean_pass": dict(H=3, Dh=20, grid=(2, 3), L=5, F=4, written=7, ahead=3, nq="clean", rope="table", mask="range"),
    # reference prefill: Nq = n_keys = T at offset 0, T = 11
    "prefill": dict(H=3, Dh=16, grid=(1, 11), L=2, F=2, written=0, ahead=0, nq="ref", rope="table", mask="none"),
}


def _attention_case(name: str, device: torch.device, seed: int, b: int = 2, shift_ref: int = 0):
    """-> args(dtype, table_dtype): keyword arguments of chunk_attention for
    one fixed random case, in the given compute dtype."""
    c = CASES[name]
    g = torch.Generator().manual_seed(seed)
    h, dh, (hp, wp), win, f = c["H"], c["Dh"], c["grid"], c["L"], c["F"]
    t = hp * wp
    rope3d = _rope(h, dh, hp, wp)
    ncap = t * (1 + win + f)
    tail = t * (1 + win)
    i = c["written"]  # chunk start = frames committed so far
    w0 = max(0, i - win)
    n_window = min(i, win)
    slots = torch.remainder(torch.arange(win) - w0, win).float()  # relative position of each slot's frame
    chunk = torch.arange(f).float() + (i - w0)
    ref = torch.tensor([float(i + f - 1 + c["ahead"] - w0 + shift_ref)])
    t_pos = torch.cat((ref, slots, chunk)).to(device)  # (1 + L + F,)
    q_off, nq = {"chunk": (tail, f * t), "clean": (tail, (f - 1) * t), "ref": (0, t)}[c["nq"]]
    n_keys = q_off + nq
    wq = 3.0 + 0.3 * torch.randn(dh, generator=g)  # sharp attention, like the model's random init
    wk = 3.0 + 0.3 * torch.randn(dh, generator=g)
    k64 = _rms(torch.randn(b, h, ncap, dh, generator=g, dtype=torch.float64), wk.double())
    v64 = torch.randn(b, h, ncap, dh, generator=g, dtype=torch.float64)
    if c["mask"] != "none" and n_window < win:  # stale values in unwritten slots must not leak
        k64[:, :, t * (1 + n_window) : tail] = 50.0
        v64[:, :, t * (1 + n_window) : tail] = 1e4
    qkv64 = torch.randn(b, nq, 3, h, dh, generator=g, dtype=torch.float64)
    masked, key_mask = None, None
    if c["mask"] == "range":
        masked = (t * (1 + n_window), tail)
    elif c["mask"] == "vector":
        key_mask = torch.ones(1, 1, 1, n_keys, dtype=torch.bool)
        key_mask[..., t * (1 + n_window) : tail] = False
        key_mask = key_mask.to(device)

    def args(dt: torch.dtype, table_dtype: torch.dtype):
        if c["rope"] == "pos":
            rope = rope_positions(rope3d, t_pos)
        else:
            cos, sin = rope3d.angles(t_pos, table_dtype)  # the stream's tables, in the model dtype
            rope = RopeTables(cos[q_off : q_off + nq], sin[q_off : q_off + nq], cos, sin)
        qkv = qkv64.to(device, dt)  # q is a strided view of the qkv projection, as in the block
        return dict(q=qkv[:, :, 0], k=k64.to(device, dt), v=v64.to(device, dt), n_keys=n_keys, q_offset=q_off,
                    rope=rope, q_norm_weight=wq.to(device, dt), key_mask=key_mask, masked=masked)

    return args


def _check_attention(case: str, dtype: torch.dtype, dev: torch.device) -> None:
    seed = fresh_seed()
    args = _attention_case(case, dev, seed)
    out = chunk_attention(**args(dtype, dtype))
    ref = chunk_attention_reference(**args(dtype, dtype))
    truth = chunk_attention_reference(**args(torch.float64, dtype))  # same tables, fp64 arithmetic
    assert out.shape == ref.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert_within_reference_error(out, ref, truth, dtype, f"attention {case}", seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_chunk_attention_matches_reference(triton_backend, case, dtype):
    _check_attention(case, dtype, triton_backend)


def test_chunk_attention_fp16(triton_backend):
    _check_attention("ring_wrap", torch.float16, triton_backend)


def test_attention_bound_notices_a_wrong_position(triton_backend):
    """The bound is tight enough to catch the reference one frame off."""
    dev, seed = triton_backend, fresh_seed()
    good = _attention_case("ring_wrap", dev, seed)
    bad = _attention_case("ring_wrap", dev, seed, shift_ref=1)
    out = chunk_attention(**good(torch.float32, torch.float32))
    truth = chunk_attention_reference(**good(torch.float64, torch.float32))
    truth_bad = chunk_attention_reference(**bad(torch.float64, torch.float32))
    assert max_err(out, truth) < 1e-4
    assert max_err(out, truth_bad) > 1e-2, "a one-frame reference shift must be visible"


def test_rope_positions_match_rope3d():
    """The kernel's angles, pos[n // T] * inv_t + spatial[n % T], are Rope3D's."""
    rope3d = _rope(3, 20, 2, 3)
    t_pos = torch.tensor([17.0, 3.0, 4.0, 0.0, 1.0, 2.0, 5.0, 6.0])
    ang = rope_positions(rope3d, t_pos).angles(0, t_pos.numel() * 6)
    cos, sin = rope3d.angles(t_pos)
    assert torch.allclose(ang.cos(), cos, atol=1e-6) and torch.allclose(ang.sin(), sin, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("d", [48, 100])
def test_modulate_kernels_match_reference(triton_backend, dtype, d):
    dev, seed = triton_backend, fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, f, t = 2, 3, 5
    x64 = torch.randn(b, f, t, d, generator=g, dtype=torch.float64) * 2 + 0.5
    mod64 = torch.randn(b, f, 6, d, generator=g, dtype=torch.float64) * 0.5
    y64 = torch.randn(b, f * t, d, generator=g, dtype=torch.float64)

    def run(fn, dt):
        x, mod, y = x64.to(dev, dt), mod64.to(dev, dt), y64.to(dev, dt)
        sh, sc, gt = mod.unbind(2)[:3]  # (B, F, D) views of (B, F, 6, D), as in the block
        return fn(x, sh, sc, gt, y)

    ops = {
        "ln_modulate": (lambda x, sh, sc, gt, y: ln_modulate(x, sh, sc),
                        lambda x, sh, sc, gt, y: ln_modulate_reference(x, sh, sc)),
        "gated_residual": (lambda x, sh, sc, gt, y: gated_residual(x, gt, y),
                           lambda x, sh, sc, gt, y: gated_residual_reference(x, gt, y)),
        "residual_ln_modulate": (lambda x, sh, sc, gt, y: torch.cat(residual_ln_modulate(x, gt, y, sh, sc)),
                                 lambda x, sh, sc, gt, y: torch.cat(residual_ln_modulate_reference(x, gt, y, sh, sc))),
    }
    for name, (kern, ref) in ops.items():
        out = run(kern, dtype)
        assert out.dtype == dtype
        assert_within_reference_error(out, run(ref, dtype), run(ref, torch.float64), dtype, f"{name} D={d}", seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm", [True, False], ids=["rmsnorm", "no_norm"])
def test_kv_write_matches_reference(triton_backend, dtype, norm):
    dev, seed = triton_backend, fresh_seed()
    g = torch.Generator().manual_seed(seed)
    b, n, h, dh, ncap, at = 2, 37, 3, 20, 80, 29
    qkv64 = torch.randn(b, n, 3, h, dh, generator=g, dtype=torch.float64)
    w64 = 3 + 0.3 * torch.randn(dh, generator=g, dtype=torch.float64)

    def run(fn, dt):
        qkv = qkv64.to(dev, dt)
        kc = torch.full((b, h, ncap, dh), 7.0, device=dev, dtype=dt)
        vc = torch.full((b, h, ncap, dh), 7.0, device=dev, dtype=dt)
        fn(qkv[:, :, 1], qkv[:, :, 2], kc, vc, at, w64.to(dev, dt) if norm else None)
        return torch.cat((kc, vc))

    out = run(kv_write, dtype)
    ref = run(kv_write_reference, dtype)
    assert (out[:, :, :at] == 7).all() and (out[:, :, at + n :] == 7).all(), "wrote outside its slice"
    assert torch.equal(out[b:], ref[b:]), "values are copied exactly"
    assert_within_reference_error(out, ref, run(kv_write_reference, torch.float64), dtype, "kv_write", seed)


def test_kv_write_refuses_overflow(triton_backend):
    k = torch.zeros(1, 5, 1, 16, device=triton_backend)
    c = torch.zeros(1, 1, 8, 16, device=triton_backend)
    with pytest.raises(ValueError):
        kv_write(k, k, c, c, 4)


def test_cost_model():
    assert attention_flops(1, 12, 6240, 21840, 128) == 4 * 12 * 6240 * 21840 * 128
    assert attention_bytes(1, 1, 3, 5, 2, 2) == 2 * 2 * (2 * 3 + 2 * 5)
