"""One typed, bounded validation of a weights folder's config.json, used by
every reader (``read_config``: the generator mode, the auto mode's evidence,
the speed probe, `bench`, `doctor`), so every problem in the file is the
same clean refusal (a ``WeightsError`` naming the file and the field) and
the app falls back to guide-only instead of failing somewhere inside.

Checked: the file itself (a regular, readable file of bounded size), JSON
nesting depth, every ``model_config`` field's type and a bound on the sizes
that decide build time and memory (a depth of 20000 would take minutes and
gigabytes before anything else could refuse it), ``training.stream_config``
(known keys, typed, then the StreamConfig rules), the ``evaluation``
summary's shapes and the stored ``dtype``."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, Callable

from engine.config import ConfigError, ModelConfig, StreamConfig

#: A config.json is a few KB; anything this large is not one.
MAX_CONFIG_BYTES = 4 << 20
#: Deepest JSON nesting accepted (a real config nests 4 levels).
MAX_DEPTH = 24
#: Sizes beyond these are no model kf-desktop runs (the shipped one: dim 192, depth 4).
MODEL_BOUNDS = {"in_channels": 64, "height": 4096, "width": 4096, "patch": 256, "dim": 8192,
                "depth": 256, "heads": 256, "mlp_dim": 65536, "time_freq_dim": 8192,
                "stem_channels": 4096}
#: Any other integer field of ModelConfig / StreamConfig.
MAX_INT = 1 << 20
#: Transformer weights (elements) a config may ask for: ~8 GB of float16.
MAX_BLOCK_ELEMENTS = 4_000_000_000
FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")
EVALUATION_FLAGS = ("beats_guide_only_mouth", "whole_crop_not_worse", "identity_cross_kept",
                    "use_model")
HINT = "re-download the weights or re-train; write configs with engine.weights.save_model()"


def _depth_ok(doc: Any) -> bool:
    stack = [(doc, 1)]
    while stack:
        v, d = stack.pop()
        if d > MAX_DEPTH:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def read_json(path: Path, error: Callable[[str, str], Exception]) -> Any:
    """The parsed JSON of ``path``, or ``error(message, hint)`` raised."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})", HINT) from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file", HINT)
    if st.st_size > MAX_CONFIG_BYTES:
        raise error(f"{path} is {st.st_size} bytes, too large for a weights config", HINT)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror or e})",
                    "check the file's permissions, or " + HINT) from None
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise error(f"{path} nests deeper than {MAX_DEPTH} levels: not a weights config", HINT) \
            from None
    except ValueError as e:
        raise error(f"{path} is not valid JSON ({e})", HINT) from None
    if not _depth_ok(doc):
        raise error(f"{path} nests deeper than {MAX_DEPTH} levels: not a weights config", HINT)
    return doc


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _typed_fields(cls, d: dict, label: str, bad: Callable[[str, str, Any], Exception],
                  bounds: dict[str, int]) -> None:
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v, default, name = d[f.name], f.default, f"{label}.{f.name}"
        if v is None and "None" in str(f.type):
            continue
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise bad(name, "true or false", v)
        elif isinstance(default, int) or (default is None and "int" in str(f.type)
                                          and "tuple" not in str(f.type)):
            hi = bounds.get(f.name, MAX_INT)
            if not _is_int(v):
                raise bad(name, "an integer", v)
            if not 0 <= v <= hi:
                raise bad(name, f"an integer from 0 to {hi}", v)
        elif isinstance(default, float):
            if not _is_num(v) or abs(v) > 1e12:
                raise bad(name, "a finite number", v)
        elif isinstance(default, str):
            if not isinstance(v, str) or len(v) > 200:
                raise bad(name, "a string", v)
        elif "tuple" in str(f.type):
            if not isinstance(v, list) or len(v) > 16 or not all(
                    _is_int(x) and 0 <= x <= MAX_INT for x in v):
                raise bad(name, "a short list of integers", v)


def validate(doc: dict[str, Any], where: Path, error: Callable[[str, str], Exception]) -> None:
    """Raise ``error(message, hint)`` for the first problem in ``doc``'s
    model_config, training.stream_config, evaluation and dtype."""
    def bad(name: str, want: str, got: Any) -> Exception:
        shown = repr(got)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return error(f"{where}: {name} must be {want}, got {shown} ({type(got).__name__})", HINT)

    mc = doc.get("model_config")
    if not isinstance(mc, dict):
        raise bad("model_config", "an object", mc)
    _typed_fields(ModelConfig, mc, "model_config", bad, MODEL_BOUNDS)
    dim, depth = mc.get("dim", 384), mc.get("depth", 8)
    hidden = mc.get("mlp_dim") or 4 * dim
    if depth * dim * (10 * dim + 2 * hidden) > MAX_BLOCK_ELEMENTS:
        raise error(f"{where}: model_config asks for a model of about "
                    f"{depth * dim * (10 * dim + 2 * hidden) / 1e9:.0f} billion weights "
                    f"(depth {depth}, dim {dim}): far beyond any kf-desktop model", HINT)
    dtype = doc.get("dtype", "float32")
    if dtype not in FLOAT_DTYPES:
        raise bad("dtype", f"one of {', '.join(FLOAT_DTYPES)}", dtype)
    training = doc.get("training", {})
    if not isinstance(training, dict):
        raise bad("training", "an object", training)
    sc = training.get("stream_config")
    if sc is not None:
        if not isinstance(sc, dict):
            raise bad("training.stream_config", "an object", sc)
        known = {f.name for f in dataclasses.fields(StreamConfig)}
        unknown = sorted(set(sc) - known)
        if unknown:
            raise error(f"{where}: training.stream_config has unknown keys {unknown}",
                        "the weights were written by another kf-desktop version; " + HINT)
        _typed_fields(StreamConfig, sc, "training.stream_config", bad, {})
        try:
            StreamConfig.from_dict(sc)
        except ConfigError as e:
            raise error(f"{where}: training.stream_config: {e.message}", HINT) from None
    ev = doc.get("evaluation")
    if ev is not None:
        if not isinstance(ev, dict):
            raise bad("evaluation", "an object", ev)
        for key in EVALUATION_FLAGS:
            if ev.get(key) is not None and not isinstance(ev[key], bool):
                raise bad(f"evaluation.{key}", "true or false", ev[key])
        for key in ("generator_minus_guide_only", "generator", "guide_only"):
            v = ev.get(key)
            if v is None:
                continue
            if not isinstance(v, dict):
                raise bad(f"evaluation.{key}", "an object of numbers", v)
            for k, x in v.items():
                if x is not None and not _is_num(x):
                    raise bad(f"evaluation.{key}.{k}", "a number", x)
