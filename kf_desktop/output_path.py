"""Where a command may write: one check used by every command that writes a
file (render, demo, run --record) or a folder (dataset, train, eval).

Refused, before any work starts, with a message that names the option:
- an output that is the same file as one of the command's inputs (compared
  by resolved path and by ``samefile``, so links and ``./`` tricks count);
- an output that exists and is not a regular file (a FIFO, a device node,
  a folder, a socket): the final rename would replace it;
- a video name whose extension is not one the recorder writes;
- a missing folder;
- an existing file, unless the user agrees: ``--overwrite``/``-y``, or a
  "yes" on a terminal (the convention of ffmpeg).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import Callable, Iterable

from kf_desktop.errors import UserError
from kf_desktop.input_path import kind_of

#: Video extensions the recorder writes, and the ffmpeg muxer for each.
VIDEO_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
#: Muxers that take the fragmented-mp4 flags (playable while written, salvageable).
FRAGMENTED = ("mp4", "mov")


def video_format(path: Path, option: str = "--out") -> str:
    """The ffmpeg muxer for ``path``'s extension, or a UserError naming the ones that work."""
    fmt = VIDEO_FORMATS.get(path.suffix.lower())
    if fmt is None:
        what = f"a {path.suffix} file" if path.suffix else "a name without an extension"
        raise UserError(f"cannot write a video to {path}: {what} is not a video format "
                        "kf-desktop writes",
                        f"pass {option} with a name ending in .mp4, .mov or .mkv")
    return fmt


def same_file(a: Path, b: Path) -> bool:
    try:
        if Path(os.path.realpath(a)) == Path(os.path.realpath(b)):
            return True
    except OSError:
        pass
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def refuse_inputs(out: Path, inputs: Iterable[tuple[str, Path | None]], option: str) -> None:
    """UserError when ``out`` is the same file (or folder) as a named input."""
    for name, path in inputs:
        if path is not None and same_file(out, Path(path)):
            what = "folder" if Path(path).is_dir() else "file"
            raise UserError(f"{option} {out} is the same {what} as the {name} {path}: writing it "
                            f"would destroy the {name}",
                            f"pass {option} with another file name")


def _stat(path: Path, problem: str, hint: str) -> os.stat_result | None:
    """``os.stat(path)``, None when it does not exist; any other failure is a
    UserError ``problem: reason`` with ``hint``."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UserError(f"{problem}: {e.strerror or e}", hint) from None


def refuse_non_regular(path: Path, option: str, *, folder_ok: bool = False) -> bool:
    """UserError when ``path`` exists and is not a regular file (or, with
    ``folder_ok``, a folder); returns whether it exists."""
    st = _stat(path, f"cannot write {path}", f"pass {option} with a file in a folder you can write to")
    if st is None:
        return False
    if stat.S_ISREG(st.st_mode) or (folder_ok and stat.S_ISDIR(st.st_mode)):
        return True
    example = f" (e.g. {Path(path) / 'take.mp4'})" if stat.S_ISDIR(st.st_mode) else ""
    raise UserError(f"cannot write {path}: it is {kind_of(st)}, and kf-desktop only writes "
                    "regular files", f"pass {option} with the name of a new file{example}")


def refuse_missing_folder(path: Path, option: str) -> None:
    folder = path.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {path}: the folder {folder} does not exist",
                        f"create it first, or pass {option} with a file in an existing folder")


def _ask_on_terminal(path: Path) -> bool | None:
    """ffmpeg's question, when both stdin and stderr are a terminal; else None."""
    try:
        if not (sys.stdin and sys.stdin.isatty() and sys.stderr.isatty()):
            return None
    except (AttributeError, ValueError):
        return None
    print(f"File '{path}' already exists. Overwrite? [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")


def may_replace(path: Path, overwrite: bool, option: str,
                ask: Callable[[Path], bool | None] = _ask_on_terminal) -> None:
    """An existing ``path`` is replaced only with the user's say-so."""
    if overwrite:
        return
    answer = ask(path)
    if answer:
        return
    if answer is None:
        raise UserError(f"{path} already exists; kf-desktop does not replace a file unasked",
                        f"pass --overwrite (or -y) to replace it, or {option} with another name")
    raise UserError(f"not overwriting {path}", f"pass {option} with another name")


def check_video_out(out: str | os.PathLike, inputs: Iterable[tuple[str, Path | None]], *,
                    option: str = "--out", overwrite: bool = False,
                    ask: Callable[[Path], bool | None] = _ask_on_terminal) -> bool:
    """Every check of a video output, before any work; returns whether the
    user agreed to replace an existing file (the recorder then may)."""
    path = Path(out)
    refuse_inputs(path, inputs, option)
    exists = refuse_non_regular(path, option)
    video_format(path, option)
    refuse_missing_folder(path, option)
    if exists:
        may_replace(path, overwrite, option, ask)
        return True
    return False


def check_folder_out(out: str | os.PathLike, inputs: Iterable[tuple[str, Path | None]], *,
                     option: str = "--out") -> Path:
    """An output folder: not an input (nor inside one's place), not a file or a FIFO."""
    path = Path(out)
    refuse_inputs(path, list(inputs), option)
    st = _stat(path, f"cannot write into {path}", f"pass {option} with a folder you can write to")
    if st is None:
        return path
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"cannot write into {path}: it is {kind_of(st)}, not a folder",
                        f"pass {option} with a folder (it is created when missing)")
    return path


def replace_into(tmp: Path, dest: Path, option: str = "--out") -> None:
    """The final rename, re-checking ``dest`` just before it: never over
    something that is not a regular file (it may have changed since start)."""
    refuse_non_regular(dest, option)
    os.replace(tmp, dest)


def free_name(path: Path) -> Path:
    """``<stem>-2<ext>``, ``-3``, ... : the first name not taken."""
    n = 2
    while True:
        cand = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not os.path.lexists(cand):
            return cand
        n += 1
