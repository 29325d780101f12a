"""The checks `train` and `eval` make on a dataset folder before anything is
written: the folder, its manifest.json (JSON, the known format, every clip
entry typed) and every file a clip entry names, which must lie inside the
folder (a manifest is data, and data must not steer the loader to
``../../etc/passwd``)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from kf_desktop.errors import UserError
from kf_desktop.input_path import kind_of

#: The largest manifest.json read (a built one is a few KB per clip).
MAX_MANIFEST_BYTES = 16 << 20
BUILD_HINT = "build one with `kf-desktop dataset --out DIR` (see `kf-desktop dataset --help`)"


def _bad(root: Path, what: str) -> UserError:
    return UserError(f"{root} is not a usable dataset: {what}",
                     f"{BUILD_HINT}, then pass --data DIR")


def _entry_ok(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("file"), str) and e["file"]
            and isinstance(e.get("name"), str)
            and isinstance(e.get("n_train"), int) and not isinstance(e.get("n_train"), bool)
            and isinstance(e.get("fps"), (int, float)) and not isinstance(e.get("fps"), bool))


def check_dataset(data: str | os.PathLike, option: str = "--data") -> dict[str, Any]:
    """The parsed manifest when ``data`` is a dataset folder the loader can
    read safely; else a UserError that names `kf-desktop dataset`."""
    from engine.training.data import DATASET_FORMAT

    root = Path(data)
    try:
        st = os.stat(root)
    except OSError:
        raise UserError(f"no dataset folder at {root}", f"{BUILD_HINT}, then pass {option} DIR") \
            from None
    if not stat.S_ISDIR(st.st_mode):
        raise _bad(root, f"it is {kind_of(st)}, not a folder")
    mf = root / "manifest.json"
    try:
        mst = os.stat(mf)
    except OSError:
        raise _bad(root, "it has no manifest.json") from None
    if not stat.S_ISREG(mst.st_mode) or mst.st_size > MAX_MANIFEST_BYTES:
        raise _bad(root, f"its manifest.json is {kind_of(mst)}"
                   if not stat.S_ISREG(mst.st_mode) else "its manifest.json is too large")
    try:
        doc = json.loads(mf.read_bytes())
    except OSError as e:
        raise _bad(root, f"its manifest.json cannot be read ({e.strerror or e})") from None
    except (ValueError, RecursionError):
        raise _bad(root, "its manifest.json is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != DATASET_FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise _bad(root, f"its manifest.json is not a kf-desktop dataset manifest (format {got!r})")
    clips = doc.get("clips")
    if not isinstance(clips, list) or not clips or not all(_entry_ok(e) for e in clips):
        raise _bad(root, "its manifest.json lists no clips, or a clip entry lacks "
                         "name/file/n_train/fps")
    real_root = os.path.realpath(root)
    for e in clips:
        target = os.path.realpath(root / e["file"])
        if os.path.commonpath([real_root, target]) != real_root:
            raise _bad(root, f"clip {e['name']!r} names {e['file']!r}, outside the dataset folder")
        try:
            cst = os.stat(target)
        except OSError:
            raise _bad(root, f"clip {e['name']!r}: {e['file']} is missing") from None
        if not stat.S_ISREG(cst.st_mode):
            raise _bad(root, f"clip {e['name']!r}: {e['file']} is {kind_of(cst)}")
    return doc
