"""The laptop model's pieces: guide-residual prediction, the full-resolution
detail path, the region metrics the evaluation reports, the CPU dtype pick."""

from __future__ import annotations

import dataclasses

import torch

from engine.config import ModelConfig, get_preset
from engine.detail import FullResStream, resize
from engine.evaluation.metrics import psnr, region_boxes, region_psnr_ssim
from engine.hardware import cpu_has_native_bf16
from engine.model import build_model
from engine.stream import KnotForcingStream


def _tiny_residual() -> ModelConfig:
    return dataclasses.replace(get_preset("tiny").model, predict="guide_residual").validate()


def test_laptop_preset_shape():
    p = get_preset("laptop")
    assert p.model.tokens_per_frame == 64 and p.model.predict == "guide_residual"
    assert p.stream.steps == 2 and p.stream.cache_write == "reuse_last_step"


def test_untrained_guide_residual_model_is_exactly_guide_only():
    # adaLN-zero init: the head outputs 0, so x0 = the guide; a stream of it
    # returns the guides themselves (what training starts from), except that
    # a knot frame (every c-th from the second chunk) is Eq. 5's average of
    # its provisional prediction (made with the held guide of the frame
    # before) and the new one
    model = build_model(_tiny_residual(), seed=0)
    st = KnotForcingStream(model, get_preset("tiny").stream, allow_untrained=True)
    ref = torch.rand(1, 3, 16, 16)
    st.set_reference(ref)
    guides = [torch.rand(1, 3, 16, 16) for _ in range(7)]
    outs = [f for g in guides for f in st.push(g)]
    assert len(outs) == 6
    want = guides[:3] + [(guides[2] + guides[3]) / 2] + guides[4:6]
    for w, o in zip(want, outs):
        torch.testing.assert_close(o, w, atol=1e-5, rtol=0)


def test_x0_model_does_not_add_the_guide():
    cfg = get_preset("tiny").model
    model = build_model(cfg, seed=0)
    st = KnotForcingStream(model, get_preset("tiny").stream, allow_untrained=True)
    st.set_reference(torch.rand(1, 3, 16, 16))
    outs = [f for _ in range(3) for f in st.push(torch.rand(1, 3, 16, 16))]
    torch.testing.assert_close(outs[0], torch.full_like(outs[0], 0.5))  # x0 = 0 -> mid-grey


def test_full_res_stream_keeps_the_guides_detail_and_adds_the_correction():
    model = build_model(_tiny_residual(), seed=0)
    fr = FullResStream(KnotForcingStream(model, get_preset("tiny").stream, allow_untrained=True))
    fr.set_reference(torch.rand(1, 3, 64, 64))
    guides = [torch.rand(1, 3, 64, 64) for _ in range(6)]
    outs = [f for g in guides for f in fr.push(g)]
    assert [tuple(o.shape) for o in outs] == [(1, 3, 64, 64)] * 6
    for g, o in zip(guides[:3], outs[:3]):  # zero correction: the full-size guide pixel for pixel
        torch.testing.assert_close(o, g, atol=1e-5, rtol=0)
    # a non-zero correction arrives upsampled on top of the full-size guide
    with torch.no_grad():
        model.head.bias.fill_(0.2)  # +0.2 in codec space = +0.1 in [0, 1]
    fr.reset()
    g = torch.full((1, 3, 64, 64), 0.5)
    outs = [f for _ in range(3) for f in fr.push(g)]
    torch.testing.assert_close(outs[0], torch.full_like(g, 0.6), atol=1e-4, rtol=0)
    assert fr.flush() == [] and not fr._pending


def test_resize_round_trip_is_identity_at_model_size():
    x = torch.rand(2, 3, 16, 16)
    assert resize(x, (16, 16)) is x
    assert resize(x, (32, 32)).shape[-1] == 32


def test_region_metrics_see_only_the_region():
    lms = torch.zeros(2, 478, 2)
    lms[:, :, 0], lms[:, :, 1] = 5.0, 5.0
    lms[:, 61] = torch.tensor([20.0, 40.0])  # mouth corner
    lms[:, 291] = torch.tensor([40.0, 48.0])
    from engine.training.augment import MOUTH

    boxes = region_boxes(lms, (61, 291), 64)
    x0, y0, x1, y1 = boxes[0]
    assert x0 <= 20 and x1 >= 40 and y0 <= 40 and y1 >= 48 and x1 <= 64
    real = torch.rand(2, 3, 64, 64)
    out = real.clone()
    out[:, :, 0:4, 0:4] = 0  # damage outside the box only
    p, s = region_psnr_ssim(out, real, boxes)
    assert p == float("inf") and abs(s - 1.0) < 1e-6
    out[:, :, 42:46, 25:35] += 0.2  # inside the box
    p2, s2 = region_psnr_ssim(out.clamp(0, 1), real, boxes)
    assert p2 < 40 and s2 < 1.0 and psnr(out, real) > p2 - 20
    assert len(region_boxes(lms, MOUTH, 64)) == 2


def test_cpu_bf16_detection_reads_cpu_flags(tmp_path):
    f = tmp_path / "cpuinfo"
    f.write_text("flags\t: fpu avx512f avx512_bf16 amx_tile\n")
    assert cpu_has_native_bf16(f)
    f.write_text("flags\t: fpu avx2\n")
    assert not cpu_has_native_bf16(f)
    assert not cpu_has_native_bf16(tmp_path / "missing")
