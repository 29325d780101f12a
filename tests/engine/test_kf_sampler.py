"""Flow-matching sampler, configs and presets, model shapes, import hygiene."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.config import ModelConfig, StreamConfig, get_preset
from engine.model import KnotForcingDiT, build_model, count_parameters
from engine.sampler import FlowMatchSampler, sample_training_sigmas, shift_sigma

ENGINE = Path(__file__).resolve().parents[2] / "engine"
MY_MODULES = ["config", "codec", "model", "kv_cache", "sampler", "stream", "weights", "bench_engine"]


@pytest.mark.parametrize("steps, shift", [(1, 1.0), (4, 1.0), (4, 5.0), (8, 3.0)])
def test_schedule(steps, shift):
    s = FlowMatchSampler(steps, shift)
    assert len(s.sigmas) == steps + 1 and s.sigmas[0] == pytest.approx(1.0) and s.sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(s.sigmas, s.sigmas[1:]))
    for i, sig in enumerate(s.sigmas[:-1]):
        assert sig == pytest.approx(shift_sigma(1 - i / steps, shift))
    if shift > 1:  # shifted: more time at high noise
        assert s.sigmas[steps // 2] > 0.5


def test_perfect_x0_prediction_recovers_the_clean_frame():
    """With the true x0 the Euler steps stay on the straight path and end on x0."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    s = FlowMatchSampler(4, 5.0)
    x = noise.clone()
    for i in range(4):
        torch.testing.assert_close(x, s.add_noise(x0, noise, s.sigmas[i]))
        s.step(x, x0, i, out=x)
    torch.testing.assert_close(x, x0)


def test_velocity_conversion_roundtrip():
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(5, generator=g), torch.randn(5, generator=g)
    xt = FlowMatchSampler.add_noise(x0, noise, 0.3)
    v = FlowMatchSampler.x0_to_velocity(xt, x0, 0.3)
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(FlowMatchSampler.velocity_to_x0(xt, v, 0.3), x0)
    with pytest.raises(ValueError):
        FlowMatchSampler.x0_to_velocity(xt, x0, 0.0)


def test_training_sigmas_in_range():
    s = sample_training_sigmas(1000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert s.shape == (1000,) and float(s.min()) > 0 and float(s.max()) < 1


def test_sampler_never_imports_the_model():
    tree = ast.parse((ENGINE / "sampler.py").read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any("model" in (m or "") for m in names), names


def test_engine_imports_no_gui_or_capture():
    code = (
        "import sys\n"
        + "".join(f"import engine.{m}\n" for m in MY_MODULES)
        + "bad = [m for m in sys.modules if m.split('.')[0] in ('cv2', 'PySide6', 'kf_desktop', 'ui', 'mediapipe', 'sounddevice')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ENGINE.parent)


def test_presets_derive_sizes():
    tiny, default, paper = (get_preset(n) for n in ("tiny", "default", "paper"))
    assert default.model.tokens_per_frame == 256 and default.model.frame_channels == 10
    assert 18e6 < count_parameters(build_model(default.model)) < 24e6
    assert paper.model.tokens_per_frame == 1560 and paper.model.head_dim == 128
    assert paper.model.frame_channels == 49 and paper.model.rope_split == (44, 42, 42)
    with torch.device("meta"):  # shapes only: no 4.5 GB allocation
        n = count_parameters(KnotForcingDiT(paper.model))
    assert 1.0e9 < n < 1.4e9
    assert tiny.model.tokens_per_frame == 16
    assert ModelConfig.from_dict(default.model.to_dict()) == default.model
    assert StreamConfig.from_dict(default.stream.to_dict()) == default.stream


def test_model_shapes_and_adaln_zero_start():
    cfg = get_preset("tiny").model
    m = build_model(cfg)  # adaLN-zero: every block starts as the identity, output 0
    frames = torch.rand(2, 3, cfg.frame_channels, cfg.height, cfg.width)
    out = m.forward_full(frames, torch.rand(2, 3), torch.arange(3.0))
    assert out.shape == (2, 3, cfg.in_channels, cfg.height, cfg.width)
    assert torch.count_nonzero(out) == 0
    toks = m.patchify(frames)
    assert toks.shape == (2, 3, cfg.tokens_per_frame, cfg.patch_dim)
    # unpatchify inverts patchify (on the first in_channels of each patch)
    back = m.unpatchify(m.patchify(frames[:, :, : cfg.in_channels]))
    torch.testing.assert_close(back, frames[:, :, : cfg.in_channels])


def test_shared_adaln_variant_runs():
    cfg = ModelConfig(height=16, width=16, patch=4, dim=48, depth=2, heads=4, adaln="shared", time_freq_dim=16)
    m = build_model(cfg, init="random", seed=0)
    out = m.forward_full(torch.rand(1, 2, cfg.frame_channels, 16, 16), torch.zeros(1, 2), torch.arange(2.0))
    assert out.shape == (1, 2, 3, 16, 16) and torch.isfinite(out).all()


def test_bad_model_config():
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="multiple of patch"):
        ModelConfig(height=30, patch=16).validate()
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(dim=100, heads=6).validate()
    with pytest.raises(ConfigError, match="unknown ModelConfig fields"):
        ModelConfig.from_dict({"dim": 64, "bogus": 1})


def test_build_model_is_seeded_and_fully_initialised():
    cfg = ModelConfig(height=16, width=16, patch=4, dim=48, depth=2, heads=4, adaln="shared", time_freq_dim=16)
    a, b = build_model(cfg, init="random", seed=5), build_model(cfg, init="random", seed=5)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q) and torch.isfinite(p).all(), n
    z = build_model(cfg)  # adaLN-zero on to_empty memory: norms are 1, gates 0
    assert all(torch.equal(blk.q_norm.weight, torch.ones(cfg.head_dim)) for blk in z.blocks)
    assert all(torch.count_nonzero(blk.ada_bias) == 0 for blk in z.blocks)
