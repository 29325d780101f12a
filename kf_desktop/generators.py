"""The generator stage: turns motion-guide crops into output crops.

Two implementations share one small interface so the session runtime does not
care which one runs:
- ``GuideOnlyGenerator``: the warp itself (the honest baseline and the
  fallback on machines too slow for the neural generator);
- ``KnotForcingGenerator``: the Knot Forcing stream from engine/ (frames come
  out in chunks of ``c``, so pushes return 0 or ``c`` frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import torch


class Generator(Protocol):
    name: str
    #: True only for a neural model loaded from trained weights.
    trained: bool

    def set_reference(self, crop: torch.Tensor, landmarks=None) -> None:
        """crop: (3, S, S) float in [0, 1], the portrait's head crop;
        landmarks: its (478, 2+) crop-pixel landmarks (the mouth model cuts
        its region with them)."""

    def push(self, guide: torch.Tensor, landmarks=None) -> list[torch.Tensor]:
        """guide: (3, S, S) in [0, 1]; landmarks: the (478, 2) target
        landmarks it was warped to. Returns the frames now ready, oldest
        first, each (3, S, S) in [0, 1]; frame i answers the i-th oldest
        guide not yet answered."""

    def flush(self) -> list[torch.Tensor]:
        """Finish any partial chunk at the end of a finite stream."""

    def reset(self) -> None:
        """Forget history (e.g. after a long source outage)."""


class GuideOnlyGenerator:
    """Passes the motion guide through unchanged."""

    name = "guide-only"
    trained = False

    def set_reference(self, crop: torch.Tensor, landmarks=None) -> None:
        pass

    def push(self, guide: torch.Tensor, landmarks=None) -> list[torch.Tensor]:
        return [guide]

    def flush(self) -> list[torch.Tensor]:
        return []

    def reset(self) -> None:
        pass

    def pop_events(self) -> list[str]:
        return []

    never_finite = False


#: The model alone must run this many times faster than the output rate on a
#: CPU: the face tracker, the guide and paste-back share the same two cores
#: (issue 12: guide + paste-back ~11 ms and face ~7 ms of a 40 ms frame).
CPU_HEADROOM = 1.6


@dataclass(frozen=True)
class AutoDecision:
    mode: str  # "generator" | "guide"
    reason: str  # one sentence for the status line / GUI
    measured_fps: float | None = None  # the start-up probe's model-alone frames/s (CPU)


def _shipped_evidence(weights) -> tuple[bool, str]:
    """(model beats guide-only on the mouth, why) from the weights' recorded
    evaluation (``kf-desktop eval --record``)."""
    from engine.weights import default_weights_dir, read_config

    try:
        doc = read_config(weights or default_weights_dir())
    except ValueError as e:
        return False, str(getattr(e, "message", e))
    ev = doc.get("evaluation")
    if not isinstance(ev, dict):
        return False, "the weights carry no evaluation against guide-only (kf-desktop eval --record)"
    d = ev.get("generator_minus_guide_only") or {}
    pm, sm = d.get("psnr_mouth"), d.get("ssim_mouth")
    num = lambda x: isinstance(x, (int, float))  # noqa: E731
    if ev.get("beats_guide_only_mouth") is not True:
        return False, (f"the model does not beat guide-only in the mouth region (PSNR {pm:+.2f} dB, SSIM {sm:+.3f})"
                       if num(pm) and num(sm) else "the model does not beat guide-only in the mouth region")
    if ev.get("whole_crop_not_worse") is False:
        s = d.get("ssim")
        return False, (f"the model's whole-crop SSIM is below guide-only's ({s:+.3f})" if num(s)
                       else "the model's whole-crop SSIM is below guide-only's")
    if ev.get("identity_cross_kept") is False:
        i = d.get("id_cross")
        return False, (f"the model changes other people's identity (dlib distance {i:+.3f} vs guide-only)"
                       if num(i) else "the model changes other people's identity")
    return True, f"mouth PSNR {pm:+.2f} dB, SSIM {sm:+.3f} over guide-only"


def probe_speed(generator, fps: float, seconds: float = 0.8) -> float:
    """Model-alone frames/s of ``generator``'s stream on this machine, measured
    on a throw-away stream of the same model (the real one stays untouched)."""
    import time

    from engine.serving import EngineStream
    from engine.stream import KnotForcingStream

    from kf_desktop.compute import engine_threads

    st = generator.stream
    if st.device.type == "cpu":  # measured as the engine thread will run it
        torch.set_num_threads(engine_threads(guide_only=False))
    kind = EngineStream if isinstance(st, EngineStream) else KnotForcingStream  # the same code path
    probe = kind(st.model, st.cfg, allow_untrained=True)
    g = torch.rand(1, 3, st.H, st.W, device=st.device)
    with torch.inference_mode():
        probe.set_reference(g)
        for _ in range(st.c * 2):  # warm-up: first chunks allocate
            probe.push(g)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds or n < 2 * st.c:
            n += len(probe.push(g))
        return n / (time.perf_counter() - t0)


def decide_auto(device: str, weights=None, fps: float = 25.0, generator=None) -> AutoDecision:
    """--mode auto: the Knot Forcing model when its weights verify, its recorded
    evaluation beats guide-only in the mouth region, and (on a CPU) a short
    start-up probe shows real time with headroom; else guide-only, with why.
    ``generator``: an already loaded KnotForcingGenerator to probe."""
    from kf_desktop.kf_generator import describe_shipped_model

    ok, detail, _fix = describe_shipped_model(weights)
    if not ok:
        return AutoDecision("guide", f"guide-only: {detail}")
    better, why = _shipped_evidence(weights)
    if not better:
        return AutoDecision("guide", f"guide-only: {why}")
    if str(device).startswith("cuda"):
        return AutoDecision("generator", f"Knot Forcing model on {device} ({why})")
    if generator is None:
        return AutoDecision("generator", f"Knot Forcing model ({why}); speed not yet measured")
    rate = probe_speed(generator, fps)
    need = CPU_HEADROOM * fps
    if rate < need:
        return AutoDecision("guide", f"guide-only: this CPU runs the model at {rate:.0f} frames/s, "
                                     f"{need:.0f} are needed for {fps:g} fps live", rate)
    return AutoDecision("generator", f"Knot Forcing model on the CPU at {rate:.0f} frames/s ({why})", rate)


def auto_mode(device: str, weights=None) -> str:
    """The mode --mode auto would pick before loading anything (no speed probe)."""
    return decide_auto(device, weights).mode


def make_generator(mode: str, device: str, *, weights=None, allow_untrained: bool = False,
                   untrained_preset: str = "default",
                   on_fallback: Callable[[str, str], None] | None = None,
                   on_decision: Callable[[AutoDecision], None] | None = None,
                   fps: float = 25.0) -> Generator:
    """'auto' -> see decide_auto (``on_decision`` hears what it chose and why);
    'guide' -> GuideOnlyGenerator; 'generator' -> the Knot Forcing model
    (trained weights, or a clearly labelled untrained one when allowed).

    Without trained weights the generator mode falls back to guide-only and
    tells ``on_fallback(message, hint)``; a random model is never used
    silently."""
    if mode == "auto":
        pre = decide_auto(device, weights, fps)
        if pre.mode == "guide":
            if on_decision is not None:
                on_decision(pre)
            return GuideOnlyGenerator()
        from kf_desktop.kf_generator import ModelUnavailable, load_knot_forcing

        try:
            gen = load_knot_forcing(device, weights)
        except ModelUnavailable as e:
            if on_decision is not None:
                on_decision(AutoDecision("guide", f"guide-only: {e.message}"))
            return GuideOnlyGenerator()
        final = decide_auto(device, weights, fps, generator=gen)
        if on_decision is not None:
            on_decision(final)
        return gen if final.mode == "generator" else GuideOnlyGenerator()
    if mode == "guide":
        return GuideOnlyGenerator()
    if mode == "generator":
        from kf_desktop.kf_generator import ModelUnavailable, load_knot_forcing

        try:
            return load_knot_forcing(device, weights, allow_untrained=allow_untrained,
                                     untrained_preset=untrained_preset)
        except ModelUnavailable as e:
            if on_fallback is None:
                raise
            on_fallback(e.message + "; running guide-only", e.hint)
            return GuideOnlyGenerator()
    raise ValueError(f"unknown generator mode {mode!r}")
