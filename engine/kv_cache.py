"""KV cache for the Knot Forcing stream: KV_ref + a ring buffer KV_pre.

One preallocated buffer per keys and values holds every layer:

    k, v: (n_layers, B, H, Ncap, Dh),  Ncap = R + L*T + F*T

    tokens [0, R)            KV_ref: the reference portrait, run once at t = 0
    tokens [R, R + L*T)      KV_pre: ring buffer, committed frame f in slot f % L
    tokens [R + L*T, Ncap)   tail: the running forward's own keys/values
                             (F = c + k frames, the chunk being denoised)

``k_rot`` (same shape as ``k``) holds the keys rotated for the current
chunk's positions: positions only change between chunks, so the chunk's
first forward rotates the prefix once and later steps rotate only their own
tokens (S-fold less rotation work for one more K-sized buffer, +50% KV memory;
``rotated_copy=False`` trades back).

(R = T: one reference frame of T tokens.) A forward writes its un-rotated
keys and values into the tail and attends to the prefix it needs, so the
values tensor is read in place by scaled_dot_product_attention: no per-step
concatenation, no clone. Keys are stored un-rotated everywhere and rotated at
read with positions relative to the window start (engine/stream.py builds the
positions; the model's attention rotates), so moving the reference's temporal
position ("running ahead") costs nothing and angles stay bounded.

Committing frames copies their tail tokens into ring slots. The write pointer
``frames_written`` is a host integer (the number of committed frames, known
on the host because chunk sizes are), so a write is one or two slice copies
for all layers at once: no index tensors, no host sync, no growth.

The shadow slot (``shadow_k``/``shadow_v``, (n_layers, B, H, R, Dh)) takes a
new reference's prefill a few layers at a time; ``install_shadow`` copies it
over KV_ref at a chunk boundary.
"""

from __future__ import annotations

import torch

from engine.model import apply_rope


class KVCache:
    def __init__(
        self,
        *,
        n_layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        tokens_per_frame: int,
        window: int,
        tail_frames: int,
        ref_frames: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        rotated_copy: bool | None = None,
    ) -> None:
        """rotated_copy: allocate ``k_rot``. None (default): only when the
        model on ``device`` uses the torch attention; the Triton attention
        (engine/kernels) rotates keys as it loads them and never reads it."""
        self.n_layers, self.batch, self.heads, self.head_dim = n_layers, batch, heads, head_dim
        self.tokens_per_frame = t = tokens_per_frame
        self.window = window
        self.tail_frames = tail_frames
        self.ref_tokens = ref_frames * t  # R
        self.ring_offset = self.ref_tokens
        self.tail_offset = self.ref_tokens + window * t
        self.capacity = self.tail_offset + tail_frames * t  # Ncap
        shape = (n_layers, batch, heads, self.capacity, head_dim)
        if rotated_copy is None:
            from engine.kernels.dispatch import rope_on_read

            rotated_copy = not rope_on_read(device)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        # Keys rotated for the current chunk's positions: derived data, rebuilt
        # by each chunk's first forward, so the S steps and the clean pass
        # rotate only their own tokens instead of the whole prefix.
        self.k_rot = torch.zeros(shape, device=device, dtype=dtype) if rotated_copy else None
        self.device = self.k.device
        self.frames_written = 0  # host write pointer: committed frames so far
        self.ref_ready = False
        self.shadow_k: torch.Tensor | None = None
        self.shadow_v: torch.Tensor | None = None
        # Device constants for masks, built once.
        self._ring_token_slot = torch.arange(window * t, device=self.device) // t  # (L*T,) slot of each token
        self._ones_ref = torch.ones(self.ref_tokens, dtype=torch.bool, device=self.device)
        self._ones_tail = torch.ones(tail_frames * t, dtype=torch.bool, device=self.device)

    # ---- bookkeeping ------------------------------------------------------
    @property
    def n_window(self) -> int:
        """Committed frames currently in KV_pre (min(frames_written, L))."""
        return min(self.frames_written, self.window)

    @property
    def window_start(self) -> int:
        """Frame index of the oldest committed frame in KV_pre."""
        return max(0, self.frames_written - self.window)

    @property
    def nbytes(self) -> int:
        n = self.k.nbytes + self.v.nbytes
        if self.k_rot is not None:
            n += self.k_rot.nbytes
        if self.shadow_k is not None:
            n += self.shadow_k.nbytes + self.shadow_v.nbytes  # type: ignore[union-attr]
        return n

    def reset(self, clear: bool = False) -> None:
        """Forget the committed frames (KV_ref stays). Stale ring contents are
        masked out until overwritten; ``clear=True`` also zeroes the window
        and the tail (needed after a non-finite value: a masked NaN still
        gives 0 x NaN = NaN in attention)."""
        self.frames_written = 0
        if clear:
            r = self.ref_tokens
            self.k[:, :, :, r:].zero_()
            self.v[:, :, :, r:].zero_()
            if self.k_rot is not None:
                self.k_rot.zero_()

    def slot_positions(self, window_start: int) -> torch.Tensor:
        """(L,) int64 temporal position of each ring slot's frame relative to
        ``window_start``: (slot - w0) mod L. Slots not yet written get their
        own index (they are masked)."""
        slots = self._ring_token_slot[:: self.tokens_per_frame]  # (L,) = arange(L)
        return torch.remainder(slots - window_start, self.window)

    def key_mask(self, n_tail_tokens: int) -> torch.Tensor | None:
        """Boolean key mask (1, 1, 1, R + L*T + n_tail_tokens), True = valid,
        or None once the window is full (the common case: no mask, so SDPA
        may pick its fastest kernel)."""
        nv = self.n_window
        if nv == self.window:
            return None
        ring = self._ring_token_slot < nv  # (L*T,)
        return torch.cat((self._ones_ref, ring, self._ones_tail[:n_tail_tokens])).view(1, 1, 1, -1)

    # ---- writes -------------------------------------------------------------
    def commit(self, n_frames: int) -> None:
        """Move the first ``n_frames`` frames of the tail into KV_pre slots
        for frames [frames_written, frames_written + n_frames), all layers at
        once; at most two slice copies (when the ring wraps)."""
        t, win = self.tokens_per_frame, self.window
        if not 0 < n_frames <= min(win, self.tail_frames):
            raise ValueError(f"cannot commit {n_frames} frames")
        first = self.frames_written % win
        done = 0
        while done < n_frames:
            slot = (first + done) % win
            run = min(n_frames - done, win - slot)  # contiguous slots before the wrap
            dst = slice(self.ring_offset + slot * t, self.ring_offset + (slot + run) * t)
            src = slice(self.tail_offset + done * t, self.tail_offset + (done + run) * t)
            self.k[:, :, :, dst].copy_(self.k[:, :, :, src])
            self.v[:, :, :, dst].copy_(self.v[:, :, :, src])
            done += run
        self.frames_written += n_frames

    # ---- reference shadow slot ----------------------------------------------
    def ensure_shadow(self) -> None:
        if self.shadow_k is None:
            shape = (self.n_layers, self.batch, self.heads, self.ref_tokens, self.head_dim)
            self.shadow_k = torch.zeros(shape, device=self.device, dtype=self.k.dtype)
            self.shadow_v = torch.zeros(shape, device=self.device, dtype=self.k.dtype)

    def install_shadow(self) -> None:
        """Copy the completed shadow prefill over KV_ref (n_layers * R tokens)."""
        assert self.shadow_k is not None and self.shadow_v is not None
        self.k[:, :, :, : self.ref_tokens].copy_(self.shadow_k)
        self.v[:, :, :, : self.ref_tokens].copy_(self.shadow_v)
        self.ref_ready = True

    # ---- reads (inspection / tests; the model reads the buffers directly) ----
    def rotated_keys(self, layer: int, n_keys: int, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Keys [0, n_keys) of ``layer`` rotated exactly as attention reads
        them. cos, sin (n_keys, Dh/2) -> (B, H, n_keys, Dh)."""
        return apply_rope(self.k[layer, :, :, :n_keys], cos, sin)
