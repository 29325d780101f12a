"""Model weights I/O: safetensors + a JSON config + sha256. Never pickle.

A weights directory holds::

    config.json          {"format": "kf-desktop-weights/1",
                          "model_config": {...ModelConfig...},
                          "trained": true | false,
                          "training": {...free-form: data, steps, losses...},
                          "dtype": "float16", "n_params": ...,
                          "files": [{"name": "model.safetensors", "sha256": "...", "bytes": ...}]}
    model.safetensors    (or model-00001-of-0000N.safetensors shards)

``load_model`` refuses, each with a ``WeightsError`` (message + hint):
pickle checkpoints (.pt/.pth/.ckpt/.bin/.pkl: loading them can run arbitrary
code), a file whose sha256 does not match the config (corrupt or modified),
and a config whose shapes do not match the tensors (naming the first
mismatching tensor). It never calls torch.load.

Trained vs random. ``model.trained`` is True only for weights whose
config.json says ``"trained": true``; ``build_model`` / ``random_model``
give False, ``save_model`` requires the caller to state it, and
KnotForcingStream refuses an untrained model unless explicitly allowed.
``try_load_trained`` is what an application calls: it returns the model, or
None and a sentence to show ("no trained weights ...; running guide-only").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.config import ConfigError, EngineError, ModelConfig
from engine.model import KnotForcingDiT, build_model, count_parameters
from engine.weights_config import read_json, validate

FORMAT = "kf-desktop-weights/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")
GUIDE_ONLY_HINT = "train or copy trained weights there; until then the app runs guide-only (the motion guide without the generator)"


class WeightsError(EngineError):
    """Weights that cannot or must not be loaded; ``message`` and ``hint``."""


@dataclass(frozen=True)
class WeightsInfo:
    trained: bool
    source: str  # directory, or "random init"
    config: ModelConfig
    training: dict[str, Any] = field(default_factory=dict)
    files: tuple[tuple[str, str], ...] = ()  # (name, sha256)
    n_params: int = 0
    dtype: str = "float32"

    def describe(self) -> str:
        m = f"{self.n_params / 1e6:.1f} M parameters"
        if not self.trained:
            return f"UNTRAINED model ({m}, {self.source}): random weights, not an avatar model"
        return f"trained model ({m}, {self.dtype}) from {self.source}"


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save_model(
    model: KnotForcingDiT,
    directory: str | os.PathLike,
    *,
    trained: bool,
    training: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    max_shard_bytes: int | None = None,
) -> WeightsInfo:
    """Write ``model`` as safetensors (+ shards of at most max_shard_bytes)
    and config.json. ``trained`` must be stated: a random init saved with
    trained=False stays flagged untrained wherever it is copied."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        tensors[name] = t.to("cpu").contiguous()
    # Greedy sharding in state-dict order.
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nb = t.numel() * t.element_size()
        if max_shard_bytes and shards[-1] and size + nb > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nb
    names = (
        [WEIGHTS_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    for stale in out.glob("model*.safetensors"):
        if stale.name not in names:
            stale.unlink()
    files = []
    for name, shard in zip(names, shards):
        path = out / name
        tmp = path.with_name(path.name + ".tmp")
        save_file(shard, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
        files.append({"name": name, "sha256": sha256_file(path), "bytes": path.stat().st_size})
    dt = _dtype_name(dtype if dtype is not None else next(model.parameters()).dtype)
    n_params = count_parameters(model)
    doc = {
        "format": FORMAT,
        "model_config": model.cfg.to_dict(),
        "trained": bool(trained),
        "training": training or {},
        "dtype": dt,
        "n_params": n_params,
        "files": files,
    }
    _write_atomic(out / CONFIG_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    return WeightsInfo(
        trained=bool(trained),
        source=str(out),
        config=model.cfg,
        training=training or {},
        files=tuple((f["name"], f["sha256"]) for f in files),
        n_params=n_params,
        dtype=dt,
    )


def _refuse_pickle(path: Path) -> WeightsError:
    return WeightsError(
        f"refusing to load {path.name}: it is a pickle checkpoint, and loading pickle can run arbitrary code",
        "convert it on a trusted machine with engine.weights.save_model() (safetensors + config.json)",
    )


def _resolve_dir(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        raise _refuse_pickle(p)
    if p.is_file():
        p = p.parent
    if not p.is_dir():
        raise WeightsError(f"no model weights at {p}", GUIDE_ONLY_HINT)
    if not (p / CONFIG_FILE).is_file():
        pickles = sorted(q for q in p.iterdir() if q.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise _refuse_pickle(pickles[0])
        if any(p.glob("*.safetensors")):
            raise WeightsError(
                f"{p} has safetensors but no {CONFIG_FILE}",
                "weights must come with the config.json written by engine.weights.save_model()",
            )
        raise WeightsError(f"no model weights at {p}", GUIDE_ONLY_HINT)
    return p


def _bad_field(where: Path, field_name: str, want: str, got: Any) -> WeightsError:
    return WeightsError(
        f"{where}: {field_name} must be {want}, got {got!r} ({type(got).__name__})",
        "re-download the weights or re-train; write configs with engine.weights.save_model()",
    )


def _check_model_config(mc: Any, where: Path) -> None:
    """Every ModelConfig field has the JSON type of its default (an int is
    not a bool, a string or 64.0), so a hand-edited config is refused with
    the field's name instead of failing somewhere inside the model."""
    if not isinstance(mc, dict):
        raise _bad_field(where, "model_config", "an object", mc)
    for f in dataclasses.fields(ModelConfig):
        if f.name not in mc:
            continue
        v, default = mc[f.name], f.default
        label = f"model_config.{f.name}"
        if v is None and "None" in str(f.type):
            continue
        if isinstance(default, bool):
            if not isinstance(v, bool):
                raise _bad_field(where, label, "true or false", v)
        elif isinstance(default, int):
            if isinstance(v, bool) or not isinstance(v, int):
                raise _bad_field(where, label, "an integer", v)
        elif isinstance(default, float):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise _bad_field(where, label, "a finite number", v)
        elif isinstance(default, str):
            if not isinstance(v, str):
                raise _bad_field(where, label, "a string", v)
        elif "tuple" in str(f.type):
            if not isinstance(v, list) or not all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                raise _bad_field(where, label, "a list of integers", v)


def _check_types(doc: dict[str, Any], where: Path) -> None:
    _check_model_config(doc["model_config"], where)
    if not isinstance(doc["trained"], bool):
        # "trained": "false" is a non-empty string: truthy, and must not
        # pass for trained weights.
        raise _bad_field(where, "trained", "true or false", doc["trained"])
    if not isinstance(doc.get("training", {}), dict):
        raise _bad_field(where, "training", "an object", doc["training"])
    files = doc["files"]
    if not isinstance(files, list):
        raise _bad_field(where, "files", "a list", files)
    for i, f in enumerate(files):
        if not isinstance(f, dict):
            raise _bad_field(where, f"files[{i}]", 'an object {"name": ..., "sha256": ...}', f)
        for key in ("name", "sha256"):
            if not isinstance(f.get(key), str):
                raise _bad_field(where, f"files[{i}].{key}", "a string", f.get(key))


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and sanity-check config.json of a weights directory."""
    d = _resolve_dir(path)
    doc = read_json(d / CONFIG_FILE, WeightsError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise WeightsError(
            f"{d / CONFIG_FILE} is not a kf-desktop weights config (format {doc.get('format') if isinstance(doc, dict) else None!r})",
            f"expected format {FORMAT!r}; write weights with engine.weights.save_model()",
        )
    for key in ("model_config", "trained", "files"):
        if key not in doc:
            raise WeightsError(f"{d / CONFIG_FILE} lacks {key!r}", "re-download the weights or re-train")
    _check_types(doc, d / CONFIG_FILE)
    validate(doc, d / CONFIG_FILE, WeightsError)
    if not doc["files"]:
        raise WeightsError(f"{d / CONFIG_FILE} lists no weight files", "re-download the weights or re-train")
    for f in doc["files"]:
        name = f["name"]
        if Path(name).suffix.lower() in PICKLE_SUFFIXES:
            raise _refuse_pickle(Path(name))
        if not name.endswith(".safetensors") or Path(name).name != name:
            raise WeightsError(f"config lists an unexpected weight file {name!r}", "only safetensors files in the same folder are loaded")
    return doc


#: A safetensors header larger than this is damage, not a model (safetensors' own limit).
MAX_HEADER_BYTES = 100_000_000


def check_safetensors_header(path: Path) -> None:
    """Cheap structural check (no tensor data read): the 8-byte length, a
    JSON header, and tensor offsets inside the file. A damaged file is
    refused here even when its sha256 was recorded after the damage."""
    size = path.stat().st_size

    def bad(why: str) -> WeightsError:
        return WeightsError(
            f"{path.name} is not a readable safetensors file ({why})",
            "re-download the weights or re-train; the file is damaged or not safetensors",
        )

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, shorter than a header")
        n = int.from_bytes(head, "little")
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise bad(f"header length {n} does not fit in {size} bytes")
        try:
            header = json.loads(f.read(n))
        except RecursionError:
            raise bad("header nests too deeply to be a tensor index") from None
        except ValueError as e:
            raise bad(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data = size - 8 - n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            raise bad(f"tensor {name!r} lies outside the file ({data} data bytes)")


def verify_files(path: str | os.PathLike, doc: dict[str, Any] | None = None) -> None:
    """Check every listed file exists, has the recorded sha256 and a sound
    safetensors header."""
    d = _resolve_dir(path)
    doc = doc if doc is not None else read_config(d)
    for f in doc["files"]:
        p = d / f["name"]
        if not p.is_file():
            raise WeightsError(f"weight file {p} is missing", "re-download the weights or re-train")
        try:
            got = sha256_file(p)
        except OSError as e:
            raise WeightsError(f"weight file {p} cannot be read ({e.strerror or e})",
                               "check the file's permissions, or re-download the weights") from None
        if got != f.get("sha256"):
            raise WeightsError(
                f"{p.name} is corrupt or modified: sha256 {got[:16]}... does not match "
                f"{str(f.get('sha256'))[:16]}... recorded in {CONFIG_FILE}",
                "re-download the weights or re-train; never edit weight files by hand",
            )
        check_safetensors_header(p)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one file; a damaged header or body (even one whose
    sha256 was recorded after the damage) is a WeightsError, not a raw
    SafetensorError."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError, OSError, a header that is not JSON...
        raise WeightsError(
            f"{path.name} is not a readable safetensors file ({type(e).__name__}: {e})",
            "re-download the weights or re-train; the file is damaged or not safetensors",
        ) from e


def load_model(
    path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[KnotForcingDiT, WeightsInfo]:
    """Load a weights directory -> (model in eval mode, info). ``info.trained``
    (and ``model.trained``) tell whether these are trained weights."""
    d = _resolve_dir(path)
    doc = read_config(d)
    try:
        cfg = ModelConfig.from_dict(doc["model_config"])
        with torch.device("meta"):
            model = KnotForcingDiT(cfg)  # shapes only, no memory
    except (ConfigError, TypeError, ValueError, ArithmeticError) as e:
        msg = e.message if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
        raise WeightsError(f"{d / CONFIG_FILE}: bad model_config ({msg})", "re-download the weights or re-train") from e
    verify_files(d, doc)
    tensors: dict[str, torch.Tensor] = {}
    for f in doc["files"]:
        tensors.update(_read_safetensors(d / f["name"]))
    expected = model.state_dict()
    for name, t in expected.items():
        if name not in tensors:
            raise WeightsError(
                f"config does not match the tensors: {name} {tuple(t.shape)} is missing from the weight files",
                "the config.json belongs to another model; re-download the weights or re-train",
            )
        if tuple(tensors[name].shape) != tuple(t.shape):
            raise WeightsError(
                f"config does not match the tensors: {name} should be {tuple(t.shape)} "
                f"for this config but the file has {tuple(tensors[name].shape)}",
                "the config.json belongs to another model; re-download the weights or re-train",
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise WeightsError(
            f"config does not match the tensors: unexpected tensor {extra[0]} (and {len(extra) - 1} more)",
            "the config.json belongs to another model; re-download the weights or re-train",
        )
    stored = doc.get("dtype")
    for name, t in expected.items():
        if stored and tensors[name].is_floating_point() and \
                _dtype_name(tensors[name].dtype) != stored:
            # The bytes would be read as another number format: garbage out.
            raise WeightsError(
                f"{d / CONFIG_FILE} says the weights are {stored}, but {name} is stored as "
                f"{_dtype_name(tensors[name].dtype)} in the weight files",
                "the config.json does not belong to these weight files; re-download the "
                "weights or re-train")
        if tensors[name].dtype.is_floating_point != t.dtype.is_floating_point:
            raise WeightsError(
                f"config does not match the tensors: {name} is {_dtype_name(tensors[name].dtype)} "
                f"in the file, the model needs a floating-point tensor",
                "the weight files belong to another program; re-download the weights or re-train",
            )
    model = model.to_empty(device=device)
    model.load_state_dict(tensors)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    model.trained = bool(doc["trained"])
    info = WeightsInfo(
        trained=model.trained,
        source=str(d),
        config=cfg,
        training=dict(doc.get("training") or {}),
        files=tuple((f["name"], f["sha256"]) for f in doc["files"]),
        n_params=count_parameters(model),
        dtype=_dtype_name(next(model.parameters()).dtype),
    )
    return model, info


def random_model(
    cfg: ModelConfig,
    *,
    seed: int = 0,
    init: str = "random",
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[KnotForcingDiT, WeightsInfo]:
    """A randomly initialised model, flagged untrained (tests, benchmarks)."""
    model = build_model(cfg, init=init, seed=seed, device=device, dtype=dtype).eval()
    info = WeightsInfo(
        trained=False,
        source=f"random init (seed {seed})",
        config=cfg,
        n_params=count_parameters(model),
        dtype=_dtype_name(next(model.parameters()).dtype),
    )
    return model, info


@dataclass
class LoadResult:
    model: KnotForcingDiT | None  # None -> run guide-only
    info: WeightsInfo | None
    message: str  # one sentence for the user, always set


def try_load_trained(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
) -> LoadResult:
    """What the application calls: the trained model, or None with a message
    saying why the app runs guide-only. Refusals (pickle, hash, config) are
    reported in the message, never replaced by a random model."""
    try:
        model, info = load_model(path, device, dtype)
    except WeightsError as e:
        return LoadResult(None, None, f"{e.message}. Running guide-only. ({e.hint})")
    except Exception as e:  # out of memory, a device error...: still guide-only, never a crash
        return LoadResult(None, None, f"could not load the weights at {path} "
                                      f"({type(e).__name__}: {e}). Running guide-only.")
    if not info.trained:
        return LoadResult(
            None,
            info,
            f"the weights at {info.source} are marked untrained (random init); running guide-only",
        )
    return LoadResult(model, info, info.describe())


def default_weights_dir() -> Path:
    """resources/models/default of this checkout (shipped weights live there)."""
    return Path(__file__).resolve().parents[1] / "resources" / "models" / "default"
