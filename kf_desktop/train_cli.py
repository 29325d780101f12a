"""Entry points for the `kf-desktop` CLI (wired in kf_desktop/cli.py):

    kf-desktop dataset ...  -> dataset_main(argv)   (kf_desktop.dataset_build; needs mediapipe)
    kf-desktop train ...    -> train_main(argv)     (engine.training; torch only)
    kf-desktop eval ...     -> eval_main(argv)      (kf_desktop.evaluate; mediapipe, dlib optional)

Before a command writes anything, its paths are checked here (the dataset
folder and its manifest, the output folder against every input), so a bad
input is one clean refusal with exit 2 and leaves no folder or log behind.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Callable, Sequence

from kf_desktop.errors import UserError


def _folder_paths(argv: Sequence[str], names: Sequence[str]) -> argparse.Namespace:
    """The path options of a command, without its own parser's side effects
    (its --help and usage errors stay its own)."""
    ap = argparse.ArgumentParser(add_help=False)
    for n in names:
        ap.add_argument(n, action="append" if n == "--clips" else "store", nargs="+"
                        if n == "--clips" else None)
    return ap.parse_known_args(list(argv))[0]


def _run_leaving_nothing(out: str | None, fn: Callable[[], int]) -> int:
    """Run ``fn``; if it fails before producing anything, remove the output
    folder it created (with nothing but its log inside)."""
    made = out is not None and not Path(out).exists()
    try:
        return fn()
    except BaseException as e:
        if made and Path(out).is_dir() and \
                {p.name for p in Path(out).iterdir()} <= {"train.log"}:
            shutil.rmtree(out, ignore_errors=True)
        from engine.training.data import DatasetError

        if isinstance(e, DatasetError):
            raise UserError(f"the dataset cannot be used: {e}",
                            "rebuild it with `kf-desktop dataset --out DIR`") from None
        raise


def _checked(argv: Sequence[str], inputs: Sequence[tuple[str, str]]) -> argparse.Namespace | None:
    if any(a in ("-h", "--help") for a in argv):
        return None
    from kf_desktop.dataset_check import check_dataset
    from kf_desktop.output_path import check_folder_out

    a = _folder_paths(argv, ["--data", "--out", *(o for o, _ in inputs)])
    if a.data:
        check_dataset(a.data)
    if a.out:
        check_folder_out(a.out, [("dataset", a.data and Path(a.data)),
                                 *((name, getattr(a, o.lstrip("-")) and
                                    Path(getattr(a, o.lstrip("-")))) for o, name in inputs)])
    return a


def dataset_main(argv: Sequence[str] | None = None) -> int:
    from kf_desktop.dataset_build import main

    argv = list(argv or [])
    if not any(a in ("-h", "--help") for a in argv):
        from kf_desktop.output_path import check_folder_out

        a = _folder_paths(argv, ["--out", "--clips"])
        if a.out:
            clips = [c for group in (a.clips or []) for c in group]
            check_folder_out(a.out, [("clip", Path(c)) for c in clips])
    return main(argv)


def train_main(argv: Sequence[str] | None = None) -> int:
    from engine.training.cli import main

    argv = list(argv or [])
    a = _checked(argv, [("--init", "starting weights")])
    return _run_leaving_nothing(a and a.out, lambda: main(argv, prog="kf-desktop train"))


def eval_main(argv: Sequence[str] | None = None) -> int:
    from kf_desktop.evaluate import main

    argv = list(argv or [])
    a = _checked(argv, [("--weights", "weights")])
    return _run_leaving_nothing(a and a.out, lambda: main(argv, prog="kf-desktop eval"))


main = train_main
