"""KnotForcingStream: streaming, chunk-wise portrait animation (Knot Forcing,
arXiv 2512.21734), on top of the causal DiT (engine/model.py), the KV cache
(engine/kv_cache.py) and the flow-matching sampler (engine/sampler.py).

Use::

    stream = KnotForcingStream(model, StreamConfig(), batch_size=1, seed=0)
    stream.set_reference(portrait)          # (B, 3, H, W) float in [0, 1]
    for guide in guides:                    # (B, 3, H, W) float in [0, 1], one per frame
        frames = stream.feed(guide)         # None, or (B, c, 3, H, W) in [0, 1]
    tail = stream.flush()                   # the partial last chunk, if any

What one chunk does (frames i .. i+c+k-1; c committed, k knot):

1. Plan (host integers only): window start w0 = max(0, i - L); the
   reference's absolute temporal position n from the running-ahead schedule
   (``StreamConfig.ref_position``); every RoPE position is taken relative to
   w0, so angles are the same after 10^6 frames as after 100.
2. Condition: per frame [noisy, guide, knot mask, knot frame]. The first k
   frames are the previous chunk's knot: mask = 1 and the knot prediction
   in the condition channels (image-to-video conditioning).
3. S flow-matching steps from pure noise; each step is one forward of the
   c + k frames attending to KV_ref + KV_pre + the chunk itself.
4. Commit the first c frames. Knot positions are fused (Eq. 5): the average
   of the old knot and the new prediction. The last k predictions become the
   next knot.
5. Cache write: only the c committed frames reach KV_pre, via one extra
   forward at t = 0 ("clean_pass") or the last step's keys/values
   ("reuse_last_step").

Knot guides and latency. A chunk needs guides for its c + k frames, but live
only the first c are known when the c-th arrives. Default ``knot_guide =
"hold"``: the knot frames reuse the last known guide (zero-order hold). The
knot is only a provisional prediction: the next chunk re-denoises those
frames with their true guides and Eq. 5 averages the two, so the hold error
is halved and never committed alone. Linear extrapolation in guide space
("linear") was rejected as the default: guides are warped images, and a
per-pixel linear extrapolation of a moving edge produces a double edge
(ghost), not a moved edge; on fast motion it is worse than holding.
"wait" uses the true guides at the cost of k frames of extra latency.

Latency (guide of frame f arrives -> frame f is out): with hold/linear the
chunk runs when the guide of its c-th frame arrives, so frame i waits
(c - 1) frame periods for the rest of its chunk, frame i+c-1 waits 0, and all
of them wait one chunk compute: latency = (c - 1 - j) / fps + t_chunk for the
j-th frame of a chunk, worst case (c - 1) / fps + t_chunk (c = 3 at 25 fps:
80 ms + t_chunk). "wait" adds k / fps (40 ms for k = 1 at 25 fps).
``KnotForcingStream.latency_frames`` reports the buffering part.

Portrait switch without a stall: ``begin_reference_switch`` + (automatic or
explicit) ``step_reference_switch(token_budget)`` prefill the new KV_ref in a
shadow slot a few layers at a time; frames keep coming with the old
reference; the shadow is swapped in at the next chunk boundary after it is
complete. The result equals ``set_reference(new, keep_history=True)`` at
that boundary. Automatic: the chunk after ``begin`` and the next
``switch_chunks - 1`` ones each run their share of the layers
(``floor(depth * (j + 1) / switch_chunks)`` after the j-th), so the new
portrait is used exactly ``switch_chunks`` chunks later at any depth.
Several streams on one engine, with the prefill fused into the steps under a
token budget: engine/planner.py and engine/serving.py.

Non-finite values: one NaN (a bad guide pixel on a GPU, where input checks
are off) would spread through KV_pre for good. Each chunk ORs a device flag
"the prediction has a non-finite value" (no host sync; on CUDA the flag is
copied to pinned memory asynchronously and read when that copy is done).
Committed frames that are not finite are replaced by their guide on the
device, so a caller never gets NaN pixels; when the flag is seen, the next
chunk starts from a cleared window (``reset`` zeroes KV_pre, the knot and
the sample, because a masked stale slot still gives 0 x NaN = NaN) with the
same reference, and a ``StreamEvent("nonfinite_recovered")`` is queued for
``pop_events()``.

A plain reference path (``attention="plain"``) runs the same stream with no
KV cache: every step recomputes a full-sequence forward over [reference,
window frames, chunk] with a block mask (reference -> itself; window frame ->
reference + window frames of the same or earlier chunks; chunk -> all). It
is the naive implementation the benchmark compares against. It is not
bit-equal to the cached stream: there, a committed frame's keys were
computed once, with the window of *its* time, which a recomputation over the
current window cannot reproduce. The exact equivalent of the cached stream
is a full-sequence forward over the whole history with the sliding-window
block mask; tests/engine/test_kf_cache.py checks that.

Hot path: no ``.item()``, no tensor-dependent Python branching, no host to
device copies: positions, masks and sigmas are built on the device from host
integers. Input value-range checks read values back, so they run only for
CPU inputs or when ``check_values=True`` (see ``_check_images``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from engine.codec import Codec, IdentityCodec, make_codec
from engine.config import EngineError, StreamConfig
from engine.kv_cache import KVCache
from engine.model import AttnSpec, KnotForcingDiT
from engine.sampler import FlowMatchSampler


class StreamInputError(EngineError):
    """A reference or guide of the wrong type, shape, dtype or value range."""


class StreamStateError(EngineError):
    """A call in the wrong order (e.g. a guide before a reference)."""


class UntrainedModelError(EngineError):
    """A randomly initialised model was handed to a stream meant for users."""


@dataclass(frozen=True)
class StreamEvent:
    """Something the caller should know (``KnotForcingStream.pop_events``)."""

    kind: str  # "nonfinite_recovered"
    chunk: int  # the stream's chunk index when it happened
    message: str


class NonFiniteWatch:
    """A device-side "some output was not finite" flag, read without a host
    sync per frame: on CUDA each ``record`` copies the cumulative flag to
    pinned host memory with non_blocking=True and records an event; ``poll``
    reads it only once that copy is done (so a fault is seen one or two
    chunks late, never by blocking). On the CPU the flag is read directly."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self._acc = torch.zeros((), dtype=torch.bool, device=self.device)
        self._host = torch.zeros((), dtype=torch.bool, pin_memory=self._cuda)
        self._event = None

    def record(self, x: torch.Tensor) -> None:
        self._acc.logical_or_(~torch.isfinite(x).all())
        if self._cuda:
            self._host.copy_(self._acc, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def poll(self) -> bool:
        """True when a recorded output was not finite (never blocks)."""
        if not self._cuda:
            return bool(self._acc)
        if self._event is None or not self._event.query():
            return False
        self._event = None
        return bool(self._host)

    def clear(self) -> None:
        self._acc.zero_()
        self._host.zero_()
        self._event = None


def sanitize_(frames: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """frames[...] = fallback where frames is not finite; in place, on the device."""
    safe = torch.nan_to_num(fallback, nan=0.0, posinf=0.0, neginf=0.0)  # the guide may be the culprit
    return frames.copy_(torch.where(torch.isfinite(frames), frames, safe))


@dataclass(frozen=True)
class ChunkPlan:
    """Host-side plan of one chunk. All positions are absolute frame indices;
    the ``*_rel`` ones are what RoPE sees (relative to the window start)."""

    index: int  # chunk number
    start: int  # i: first frame of the chunk
    window_start: int  # w0 = max(0, i - L)
    n_window: int  # committed frames in KV_pre = i - w0
    ref_position: int  # n: the reference's absolute temporal position

    @property
    def ref_rel(self) -> int:
        return self.ref_position - self.window_start

    @property
    def chunk_rel(self) -> int:
        return self.start - self.window_start


def plan_chunk(cfg: StreamConfig, index: int) -> ChunkPlan:
    i = index * cfg.chunk
    w0 = max(0, i - cfg.window)
    return ChunkPlan(index=index, start=i, window_start=w0, n_window=i - w0, ref_position=cfg.ref_position(i))


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class KnotForcingStream:
    """A batch of B independent Knot Forcing streams sharing one model."""

    def __init__(
        self,
        model: KnotForcingDiT,
        config: StreamConfig | None = None,
        *,
        batch_size: int = 1,
        seed: int | Sequence[int] = 0,
        codec: Codec | None = None,
        attention: Literal["cached", "plain"] = "cached",
        allow_untrained: bool = False,
        check_values: bool | None = None,
    ) -> None:
        """model: a KnotForcingDiT (its device and dtype are used).
        seed: one int (stream b uses seed + b) or B ints; each stream draws
        its noise from its own generator, so a batch equals B single streams.
        allow_untrained: a model without trained weights is refused unless
        this is set (tests, benchmarks): random weights must never reach a
        user as if they were a trained avatar model.
        check_values: check guides/references for NaN and [0, 1] range.
        None = only for inputs on the CPU (free there; on a GPU it would cost
        a host sync per frame)."""
        cfg = (config or StreamConfig()).validate()
        if not getattr(model, "trained", False) and not allow_untrained:
            raise UntrainedModelError(
                "this model has no trained weights (randomly initialised)",
                "load trained weights with engine.weights.load_model(); without them run guide-only",
            )
        if attention not in ("cached", "plain"):
            raise EngineError(f"unknown attention mode {attention!r}", "use 'cached' or 'plain'")
        if batch_size < 1:
            raise StreamInputError("batch_size must be >= 1", "use one stream or more")
        mc = model.cfg
        self.model = model
        self.cfg = cfg
        self.mcfg = mc
        self.codec = codec if codec is not None else make_codec(mc)
        if self.codec.channels != mc.in_channels:
            raise EngineError(
                f"codec {self.codec.name!r} gives {self.codec.channels} channels, the model takes {mc.in_channels}",
                "use the codec the model was trained with",
            )
        self.attention = attention
        self.check_values = check_values
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.batch = b = batch_size
        seeds = [int(seed) + i for i in range(b)] if isinstance(seed, int) else [int(s) for s in seed]
        if len(seeds) != b:
            raise StreamInputError(f"{len(seeds)} seeds for a batch of {b}", "pass one seed or one per stream")
        self.seeds = seeds
        self._gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

        c, k, win = cfg.chunk, cfg.knot, cfg.window
        self.c, self.k, self.L = c, k, win
        self.F = f = c + k
        self.C, self.H, self.W = mc.in_channels, mc.height, mc.width
        self.T = t = mc.tokens_per_frame
        C, H, W = self.C, self.H, self.W
        self.sampler = FlowMatchSampler(cfg.steps, cfg.shift)
        dev, dt = self.device, self.dtype
        fp32 = torch.float32

        # ---- preallocated state (codec space) -------------------------------
        self._guides = torch.zeros(b, f, C, H, W, device=dev, dtype=fp32)  # guides of the chunk's frames
        self._n_guides = 0  # real guides buffered for the next chunk
        self._last_guide = torch.zeros(b, C, H, W, device=dev, dtype=fp32)  # for 'linear' with c == 1
        self._x = torch.zeros(b, f, C, H, W, device=dev, dtype=fp32)  # sample being denoised
        self._inp = torch.zeros(b, f, mc.frame_channels, H, W, device=dev, dtype=dt)  # model input
        self._knot = torch.zeros(b, k, C, H, W, device=dev, dtype=fp32)  # previous chunk's knot x0
        self._has_knot = False
        self._committed = torch.zeros(b, c, C, H, W, device=dev, dtype=fp32)
        self._clean_in = torch.zeros(b, c, mc.frame_channels, H, W, device=dev, dtype=dt)  # [x, guide, 0, 0]
        self._ref_in = torch.zeros(b, 1, mc.frame_channels, H, W, device=dev, dtype=dt)  # [ref, ref, 0, 0]
        self._switch_in = torch.zeros_like(self._ref_in)
        self._sig_steps = [torch.full((b, f), s, device=dev, dtype=fp32) for s in self.sampler.timesteps]
        self._sig_zero = torch.zeros(b, max(c, 1), device=dev, dtype=fp32)
        self._f_arange = torch.arange(f, device=dev, dtype=fp32)
        self._zero1 = torch.zeros(1, device=dev, dtype=fp32)
        self._ref_ready = False
        self._chunk_index = 0
        self._frames_emitted = 0
        self._last_plan: ChunkPlan | None = None
        self._switch: dict | None = None  # pending portrait switch
        self._cache_spec_clean: tuple[torch.Tensor, torch.Tensor] | None = None
        self._watch = NonFiniteWatch(dev)
        self._events: list[StreamEvent] = []
        #: Debug hook: set to a list to record every forward (tests only).
        self._trace: list | None = None

        if attention == "cached":
            self.cache: KVCache | None = KVCache(
                n_layers=mc.depth,
                batch=b,
                heads=mc.heads,
                head_dim=mc.head_dim,
                tokens_per_frame=t,
                window=win,
                tail_frames=f,
                device=dev,
                dtype=dt,
            )
            self._hist = None
        else:
            self.cache = None
            # plain path: clean inputs [x, guide, 0, 0] of the last L committed frames, slot f % L
            self._hist = torch.zeros(b, win, mc.frame_channels, H, W, device=dev, dtype=dt)
            self._hist_written = 0
            self._slot_arange = torch.arange(win, device=dev)

    # ---- properties -----------------------------------------------------------
    @property
    def switch_token_budget(self) -> int:
        """Average token-layers of shadow prefill done per chunk during a
        switch (the automatic schedule does whole layers, ``switch_layers``)."""
        return math.ceil(self.T * self.mcfg.depth / self.cfg.switch_chunks)

    def switch_layers(self, j: int) -> int:
        """Layers of the shadow prefill done after the j-th chunk of a switch
        (j = 0 .. switch_chunks - 1): floor(depth * (j + 1) / switch_chunks),
        an even split that reaches depth at the last chunk and not before, so
        the new portrait is used exactly switch_chunks chunks later (the old
        ceil-then-floor rounding took 5 chunks at depth 30)."""
        sc = self.cfg.switch_chunks
        return self.mcfg.depth * min(j + 1, sc) // sc

    def pop_events(self) -> list[StreamEvent]:
        """Events since the last call (e.g. a recovery from a non-finite output)."""
        ev, self._events = self._events, []
        return ev

    @property
    def latency_frames(self) -> int:
        """Worst-case frames a guide waits before its frame can be generated
        (buffering only; add one chunk's compute time)."""
        return self.c - 1 + (self.k if self.cfg.knot_guide == "wait" else 0)

    @property
    def frames_emitted(self) -> int:
        return self._frames_emitted

    @property
    def chunk_index(self) -> int:
        return self._chunk_index

    @property
    def last_plan(self) -> ChunkPlan | None:
        return self._last_plan

    @property
    def has_reference(self) -> bool:
        return self._ref_ready

    @property
    def switch_pending(self) -> bool:
        return self._switch is not None

    @property
    def switch_ready(self) -> bool:
        """A switch's shadow KV_ref is complete: it is swapped in when the
        next chunk starts."""
        return self._switch is not None and self._switch["done"]

    @property
    def kv_cache_bytes(self) -> int:
        return self.cache.nbytes if self.cache is not None else 0

    def plan(self, index: int | None = None) -> ChunkPlan:
        return plan_chunk(self.cfg, self._chunk_index if index is None else index)

    # ---- input checks -----------------------------------------------------------
    def _check_images(self, name: str, x: object, channels: int, height: int, width: int, encoded: bool) -> torch.Tensor:
        what = "codec-space tensor" if encoded else "image batch in [0, 1]"
        if not isinstance(x, torch.Tensor):
            raise StreamInputError(
                f"{name} must be a torch.Tensor, got {type(x).__name__}",
                "convert with torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255",
            )
        if x.dtype not in _FLOAT_DTYPES:
            raise StreamInputError(
                f"{name} has dtype {x.dtype}; expected a floating-point {what}",
                "convert uint8 images with x.float() / 255" if not encoded else "pass float latents",
            )
        want = (self.batch, channels, height, width)
        if tuple(x.shape) != want:
            hint = f"pass a ({self.batch}, {channels}, {height}, {width}) tensor"
            if x.dim() == 3 and tuple(x.shape) == want[1:]:
                hint = "add the batch dimension: x[None]"
            elif x.dim() == 4 and x.shape[0] != self.batch and tuple(x.shape[1:]) == want[1:]:
                hint = f"this stream was created with batch_size={self.batch}"
            elif x.dim() == 4 and x.shape[1] != channels and x.shape[-1] == channels:
                hint = "channels first: x.permute(0, 3, 1, 2)"
            elif x.dim() == 4 and tuple(x.shape[2:]) != (height, width):
                hint = f"resize/crop to {height}x{width} (the model's frame size)"
            raise StreamInputError(f"{name} has shape {tuple(x.shape)}, expected {want} ({what})", hint)
        check = self.check_values if self.check_values is not None else x.device.type == "cpu"
        if check:
            # Reads values back: free for CPU inputs, one host sync on a GPU.
            if not bool(torch.isfinite(x).all()):
                raise StreamInputError(f"{name} contains NaN or Inf", "check the upstream frame source")
            if not encoded:
                lo, hi = torch.aminmax(x.detach())
                tol = 1e-3
                if float(lo) < -tol or float(hi) > 1 + tol:
                    raise StreamInputError(
                        f"{name} values span [{float(lo):.3g}, {float(hi):.3g}]; expected [0, 1]",
                        "divide 8-bit images by 255 (and do not pass [-1, 1] tensors)",
                    )
        return x

    def _encode(self, name: str, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H*, W*) in [0, 1] -> (B, C, H, W) codec space, fp32 on the stream's device."""
        d = self.codec.downsample
        self._check_images(name, images, 3, self.H * d, self.W * d, encoded=False)
        x = images.to(device=self.device, dtype=torch.float32).clamp(0.0, 1.0)
        return self.codec.encode(x)

    def _check_encoded(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self._check_images(name, x, self.C, self.H, self.W, encoded=True)
        return x.to(device=self.device, dtype=torch.float32)

    # ---- reference ----------------------------------------------------------------
    def set_reference(self, reference: torch.Tensor, *, keep_history: bool = False) -> None:
        """reference: (B, 3, H, W) float in [0, 1], the portrait head crops.
        Builds KV_ref now (one forward at t = 0). keep_history=False starts a
        new stream (frames, knot, window forgotten); True keeps them (an
        immediate portrait switch). Cancels a pending switch."""
        self.set_reference_encoded(self._encode("reference", reference), keep_history=keep_history)

    def set_reference_encoded(self, reference: torch.Tensor, *, keep_history: bool = False) -> None:
        """Like set_reference with a codec-space (B, C, H, W) reference."""
        ref = self._check_encoded("reference", reference)
        self._switch = None
        self._write_reference_input(self._ref_in, ref)
        with torch.no_grad():
            if self.cache is not None:
                self._prefill_reference(self.cache.k, self.cache.v, self._ref_in)
                self.cache.ref_ready = True
        self._ref_ready = True
        if not keep_history:
            self.reset()

    def _write_reference_input(self, dst: torch.Tensor, ref: torch.Tensor) -> None:
        """The reference as a clean context frame: [ref, guide = ref (the
        portrait warped to its own pose is itself), mask 0, knot 0]."""
        C = self.C
        dst.zero_()
        dst[:, 0, :C].copy_(ref)
        dst[:, 0, C : 2 * C].copy_(ref)

    def _ref_spec(self, k_buf: torch.Tensor, v_buf: torch.Tensor) -> AttnSpec:
        # All reference tokens share one temporal position, so their mutual
        # attention does not depend on it: prefill at 0, rotate at read.
        cos, sin = self.model.rope.angles(self._zero1, self.dtype)  # (R, Dh/2)
        return AttnSpec(cos_q=cos, sin_q=sin, k_cache=k_buf, v_cache=v_buf, write_at=0,
                        n_keys=self.T, cos_k=cos, sin_k=sin)

    def _prefill_reference(self, k_buf: torch.Tensor, v_buf: torch.Tensor, ref_in: torch.Tensor) -> None:
        sig = self._sig_zero[:, :1]
        self.model(ref_in, sig, self._ref_spec(k_buf, v_buf), kv_only=True)
        if self._trace is not None:
            self._trace.append({"kind": "ref", "frames": ref_in.clone(), "sigma": sig.clone()})

    def begin_reference_switch(self, reference: torch.Tensor) -> None:
        """Start switching to a new portrait without stalling: its KV_ref is
        prefilled in a shadow slot during the next chunks (automatically,
        ``switch_token_budget`` per chunk, or by ``step_reference_switch``)
        and swapped in at the first chunk boundary after it is complete."""
        self.begin_reference_switch_encoded(self._encode("reference", reference))

    def begin_reference_switch_encoded(self, reference: torch.Tensor) -> None:
        ref = self._check_encoded("reference", reference)
        if not self._ref_ready:
            self.set_reference_encoded(ref)  # nothing is streaming yet: no stall to avoid
            return
        self._write_reference_input(self._switch_in, ref)
        if self.cache is not None:
            self.cache.ensure_shadow()
        self._switch = {"layer": 0, "x": None, "tcond": None, "done": self.cache is None, "chunks": 0,
                        "explicit": 0}

    def step_reference_switch(self, token_budget: int) -> bool:
        """Advance the shadow prefill by about ``token_budget`` token-layers
        (at least one layer). Returns True when the shadow is complete (it is
        swapped in at the next chunk boundary) or no switch is pending."""
        sw = self._switch
        if sw is None or sw["done"]:
            return True
        cache = self.cache
        assert cache is not None and cache.shadow_k is not None
        n_layers = max(1, int(token_budget) // cache.ref_tokens)
        before = sw["layer"]
        done = self._run_switch_to(sw["layer"] + n_layers)
        sw["explicit"] += sw["layer"] - before
        return done

    def _run_switch_to(self, layer_stop: int) -> bool:
        sw = self._switch
        assert sw is not None
        cache = self.cache
        assert cache is not None and cache.shadow_k is not None
        depth = self.mcfg.depth
        if layer_stop <= sw["layer"]:
            return sw["done"]
        with torch.no_grad():
            if sw["x"] is None:
                sw["x"] = self.model.embed(self._switch_in)  # (B, 1, T, D)
                sw["tcond"] = self.model.time_condition(self._sig_zero[:, :1])[1]
            start = sw["layer"]
            stop = min(depth, layer_stop)
            spec = self._ref_spec(cache.shadow_k, cache.shadow_v)  # type: ignore[arg-type]
            sw["x"] = self.model.run_blocks(sw["x"], sw["tcond"], spec, start, stop, kv_only=stop == depth)
            sw["layer"] = stop
            if stop == depth:
                sw["done"] = True
                sw["x"] = sw["tcond"] = None
        return sw["done"]

    def _maybe_swap_reference(self) -> None:
        sw = self._switch
        if sw is None or not sw["done"]:
            return
        if self.cache is not None:
            self.cache.install_shadow()
        self._ref_in.copy_(self._switch_in)
        self._switch = None
        if self._trace is not None:
            self._trace.append({"kind": "ref", "frames": self._ref_in.clone(), "sigma": self._sig_zero[:, :1].clone()})

    # ---- streaming ------------------------------------------------------------------
    def reset(self) -> None:
        """Forget frames, knot and window (the reference stays). The window
        is zeroed, not only masked: a masked stale NaN still poisons
        attention (0 x NaN = NaN)."""
        self._n_guides = 0
        self._frames_emitted = 0
        self._clear_history()

    def _clear_history(self) -> None:
        self._has_knot = False
        self._chunk_index = 0
        self._last_plan = None
        self._knot.zero_()
        self._x.zero_()
        self._committed.zero_()
        self._watch.clear()
        if self.cache is not None:
            self.cache.reset(clear=True)
        else:
            self._hist_written = 0
            self._hist.zero_()

    def _recover(self) -> None:
        """A non-finite prediction was seen: clear the window and the knot,
        rebuild KV_ref from the kept reference input and go on (the
        buffered guides stay)."""
        chunk = self._chunk_index
        self._clear_history()
        if self.cache is not None:
            with torch.no_grad():
                self._prefill_reference(self.cache.k, self.cache.v, self._ref_in)
        self._events.append(StreamEvent(
            "nonfinite_recovered", chunk,
            "the generator produced a non-finite value; the stream was reset (reference kept) and goes on"))

    def _needed_guides(self) -> int:
        return self.F if self.cfg.knot_guide == "wait" else self.c

    def feed(self, guide: torch.Tensor) -> torch.Tensor | None:
        """guide: (B, 3, H, W) float in [0, 1], the next frame's motion guide.
        Returns None, or the chunk's committed frames (B, c, 3, H, W) in [0, 1]
        once a chunk is complete (frame order = guide order)."""
        if not self._ref_ready:
            raise StreamStateError("a guide arrived before any reference portrait", "call set_reference() first")
        return self.feed_encoded(self._encode("guide", guide), _checked=True)

    def feed_encoded(self, guide: torch.Tensor, *, _checked: bool = False) -> torch.Tensor | None:
        """Like feed with a codec-space (B, C, H, W) guide; returns committed
        frames decoded to images, or codec-space frames when the codec
        cannot decode (latent models without a VAE)."""
        if not self._ref_ready:
            raise StreamStateError("a guide arrived before any reference portrait", "call set_reference() first")
        if not _checked:
            guide = self._check_encoded("guide", guide)
        self._guides[:, self._n_guides].copy_(guide)
        self._n_guides += 1
        if self._n_guides < self._needed_guides():
            return None
        return self._output(self._generate_chunk())

    def push(self, guide: torch.Tensor) -> list[torch.Tensor]:
        """feed() as a list of (B, 3, H, W) frames (empty until a chunk is done)."""
        out = self.feed(guide)
        return [] if out is None else list(out.unbind(1))

    def flush(self) -> torch.Tensor | None:
        """End a finite stream: generate the buffered frames (missing guides
        held at the last one) and return them (B, n, 3, H, W), or None. The
        stream is reset afterwards (the reference stays)."""
        pending = self._n_guides
        if pending == 0 or not self._ref_ready:
            if self._watch.poll():  # the last chunk's flag: no next chunk will look at it
                self._recover()
            self.reset()
            return None
        outs = []
        while pending > 0:
            n = self._n_guides
            need = self._needed_guides()
            if n < need:
                self._guides[:, n:need].copy_(self._guides[:, n - 1 : n].expand(-1, need - n, -1, -1, -1))
                self._n_guides = need
            committed = self._output(self._generate_chunk())
            take = min(self.c, pending)
            outs.append(committed[:, :take])
            pending -= take
        if self._watch.poll():  # the last chunk's flag: no next chunk will look at it
            self._recover()
        self.reset()
        return torch.cat(outs, dim=1)

    def _output(self, committed: torch.Tensor) -> torch.Tensor:
        """(B, c, C, H, W) codec space -> (B, c, 3, H', W') in [0, 1] (a new tensor)."""
        b, n = committed.shape[:2]
        try:
            imgs = self.codec.decode(committed.reshape(b * n, *committed.shape[2:]))
        except EngineError:
            return committed.clone()  # latent model without a VAE (benchmarks)
        return imgs.view(b, n, *imgs.shape[1:])

    # ---- one chunk ----------------------------------------------------------------------
    def _fill_knot_guides(self) -> None:
        """Guides of the k knot frames (positions c .. c+k-1) when live."""
        k, c, mode = self.k, self.c, self.cfg.knot_guide
        if k == 0 or mode == "wait":
            return
        last = self._guides[:, c - 1]  # (B, C, H, W)
        if mode == "hold":
            self._guides[:, c:].copy_(last[:, None].expand(-1, k, -1, -1, -1))
            return
        prev = self._guides[:, c - 2] if c >= 2 else self._last_guide
        steps = torch.arange(1, k + 1, device=self.device, dtype=torch.float32).view(1, k, 1, 1, 1)
        ext = last[:, None] + steps * (last - prev)[:, None]  # (B, k, C, H, W)
        if isinstance(self.codec, IdentityCodec):
            ext = ext.clamp_(-1.0, 1.0)
        self._guides[:, c:].copy_(ext)

    def _key_positions(self, plan: ChunkPlan) -> torch.Tensor:
        """(1 + L + F,) temporal positions of the cache's frames, relative to
        the window start: [reference, ring slots 0..L-1, chunk frames]."""
        assert self.cache is not None
        ref = self._zero1 + plan.ref_rel  # (1,)
        ring = self.cache.slot_positions(plan.window_start).to(torch.float32)  # (L,)
        chunk = self._f_arange + plan.chunk_rel  # (F,)
        return torch.cat((ref, ring, chunk))

    def chunk_angles(self, plan: ChunkPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (Ncap, Dh/2) for every cache token of this chunk's forwards."""
        return self.model.rope.angles(self._key_positions(plan), self.dtype)

    def _condition(self) -> None:
        """Write guide, knot mask and knot frame channels of the chunk input."""
        C, k = self.C, self.k
        inp = self._inp
        inp[:, :, C : 2 * C].copy_(self._guides)
        inp[:, :, 2 * C :].zero_()
        if self._has_knot:
            inp[:, :k, 2 * C].fill_(1.0)
            inp[:, :k, 2 * C + 1 :].copy_(self._knot)

    def _draw_noise(self) -> None:
        for b, g in enumerate(self._gens):
            torch.randn(self._x.shape[1:], generator=g, device=self.device, dtype=torch.float32, out=self._x[b])

    def _generate_chunk(self) -> torch.Tensor:
        if self._watch.poll():
            self._recover()
        self._maybe_swap_reference()
        plan = self.plan()
        self._last_plan = plan
        with torch.no_grad():
            self._fill_knot_guides()
            self._condition()
            self._draw_noise()
            if self.cache is not None:
                self._denoise_cached(plan)
            else:
                self._denoise_plain(plan)
            pred = self._x  # (B, F, C, H, W): the final step returns x0
            c, k = self.c, self.k
            self._committed.copy_(pred[:, :c])
            if self._has_knot:
                # Eq. 5: knot positions = mean of the old knot and the new prediction.
                torch.add(self._knot, pred[:, :k], out=self._committed[:, :k]).mul_(0.5)
            if k:
                self._knot.copy_(pred[:, c:])
            self._watch.record(pred)
            sanitize_(self._committed, self._guides[:, :c])  # never hand out NaN pixels
            self._write_history(plan)
        self._has_knot = k > 0
        self._last_guide.copy_(self._guides[:, c - 1])
        if self.cfg.knot_guide == "wait" and k:
            self._guides[:, :k].copy_(self._guides[:, c:])  # knot frames' true guides open the next chunk
            self._n_guides = k
        else:
            self._n_guides = 0
        self._chunk_index += 1
        self._frames_emitted += c
        sw = self._switch
        if sw is not None and not sw["done"]:
            # the even schedule, shifted by what explicit steps did (they only
            # ever make the swap earlier)
            self._run_switch_to(self.switch_layers(sw["chunks"]) + sw["explicit"])
            sw["chunks"] += 1
        return self._committed

    def _denoise_cached(self, plan: ChunkPlan) -> None:
        cache = self.cache
        assert cache is not None
        if plan.start != cache.frames_written:
            raise StreamStateError("internal: chunk plan and KV cache disagree", "call reset()")
        cos_k, sin_k = self.chunk_angles(plan)  # (Ncap, Dh/2)
        tail = cache.tail_offset
        n_tail = self.F * self.T
        spec = AttnSpec(
            cos_q=cos_k[tail:], sin_q=sin_k[tail:], mask=cache.key_mask(n_tail),
            k_cache=cache.k, v_cache=cache.v, write_at=tail, n_keys=tail + n_tail, cos_k=cos_k, sin_k=sin_k,
            k_rot=cache.k_rot, rotate_from=0,  # first step: rotate the prefix for this chunk
        )
        later = dataclasses.replace(spec, rotate_from=tail)  # prefix already rotated
        C, S = self.C, self.cfg.steps
        for s in range(S):
            self._inp[:, :, :C].copy_(self._x)
            x0 = self.model(self._inp, self._sig_steps[s], spec if s == 0 else later)  # (B, F, C, H, W)
            if self._trace is not None:
                self._trace.append({"kind": "step", "chunk": plan.index, "step": s, "plan": plan,
                                    "frames": self._inp.clone(), "sigma": self._sig_steps[s].clone(),
                                    "x0": x0.clone(), "cos_k": cos_k, "sin_k": sin_k})
            self.sampler.step(self._x, x0.float(), s, out=self._x)
        self._cache_spec_clean = (cos_k, sin_k)

    def _write_history(self, plan: ChunkPlan) -> None:
        """Put the c committed frames into the window (KV_pre or, for the
        plain path, the history of clean inputs)."""
        c, C = self.c, self.C
        self._clean_in[:, :, :C].copy_(self._committed)
        self._clean_in[:, :, C : 2 * C].copy_(self._guides[:, :c])
        if self.cache is None:
            for j in range(c):
                self._hist[:, (plan.start + j) % self.L].copy_(self._clean_in[:, j])
            self._hist_written += c
            return
        cache = self.cache
        if self.cfg.cache_write == "clean_pass":
            cos_k, sin_k = self._cache_spec_clean
            tail = cache.tail_offset
            n_tail = c * self.T
            mask = cache.key_mask(n_tail)
            spec = AttnSpec(
                cos_q=cos_k[tail : tail + n_tail], sin_q=sin_k[tail : tail + n_tail], mask=mask,
                k_cache=cache.k, v_cache=cache.v, write_at=tail, n_keys=tail + n_tail,
                cos_k=cos_k[: tail + n_tail], sin_k=sin_k[: tail + n_tail],
                k_rot=cache.k_rot, rotate_from=tail,  # same positions as the chunk's steps
            )
            sig = self._sig_zero[:, :c]
            self.model(self._clean_in, sig, spec, kv_only=True)
            if self._trace is not None:
                self._trace.append({"kind": "clean", "chunk": plan.index, "plan": plan,
                                    "frames": self._clean_in.clone(), "sigma": sig.clone()})
        # reuse_last_step: the tail still holds the last step's keys/values.
        cache.commit(c)
        self._cache_spec_clean = None

    def _denoise_plain(self, plan: ChunkPlan) -> None:
        """The naive reference path: no cache; each step re-runs the model
        over [reference, window frames, chunk]."""
        assert self._hist is not None
        nv, win, c = plan.n_window, self.L, self.c
        w0 = plan.window_start
        ring_rel = torch.remainder(self._slot_arange - w0, win)[:nv]  # (nv,) slots 0..nv-1 are valid
        hist = self._hist[:, :nv]
        t_pos = torch.cat((self._zero1 + plan.ref_rel, ring_rel.to(torch.float32), self._f_arange + plan.chunk_rel))
        n = 1 + nv + self.F
        # Frame mask: reference -> itself; window frame -> reference + window
        # frames of the same or earlier chunks; chunk -> everything.
        chunk_of = torch.div(ring_rel + w0, c, rounding_mode="floor")  # (nv,) chunk id of each slot's frame
        fm = torch.ones(n, n, dtype=torch.bool, device=self.device)
        fm[0, 1:] = False
        fm[1 : 1 + nv, 1 : 1 + nv] = chunk_of[None, :] <= chunk_of[:, None]
        fm[1 : 1 + nv, 1 + nv :] = False
        sig_ctx = self._sig_zero[:, :1].expand(-1, 1 + nv)
        C = self.C
        for s in range(self.cfg.steps):
            self._inp[:, :, :C].copy_(self._x)
            frames = torch.cat((self._ref_in, hist, self._inp), dim=1)  # (B, n, 3C+1, H, W)
            sigma = torch.cat((sig_ctx, self._sig_steps[s]), dim=1)  # (B, n)
            x0 = self.model.forward_full(frames, sigma, t_pos, fm)[:, 1 + nv :]  # (B, F, C, H, W)
            self.sampler.step(self._x, x0.float(), s, out=self._x)

    # ---- inspection --------------------------------------------------------------------
    @property
    def knot(self) -> torch.Tensor:
        """(B, k, C, H, W) the current knot prediction (codec space)."""
        return self._knot

    @property
    def last_committed_encoded(self) -> torch.Tensor:
        """(B, c, C, H, W) the last committed frames in codec space (a view)."""
        return self._committed

    @property
    def last_prediction(self) -> torch.Tensor:
        """(B, c + k, C, H, W) the last chunk's final x0 prediction (a view)."""
        return self._x


def describe_latency(cfg: StreamConfig, fps: float, chunk_ms: float | None = None) -> str:
    """One line: the buffering latency of the knot-guide mode, plus compute."""
    buf = cfg.chunk - 1 + (cfg.knot if cfg.knot_guide == "wait" else 0)
    s = f"knot_guide={cfg.knot_guide}: worst-case buffering {buf} frames = {1000 * buf / fps:.0f} ms at {fps:g} fps"
    if chunk_ms is not None:
        s += f", + {chunk_ms:.0f} ms chunk compute = {1000 * buf / fps + chunk_ms:.0f} ms"
    return s


__all__ = [
    "ChunkPlan",
    "KnotForcingStream",
    "NonFiniteWatch",
    "StreamEvent",
    "StreamInputError",
    "StreamStateError",
    "UntrainedModelError",
    "describe_latency",
    "plan_chunk",
]
