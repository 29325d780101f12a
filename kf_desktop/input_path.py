"""Paths the user names as inputs (photo, driving video, speech WAV, dataset).

Every one is checked before it is opened: a FIFO or a device node would
block the decoder for ever (nothing ever writes to it), a folder gives a
misleading "cannot decode" later. And a path handed to ffmpeg or ffprobe is
always written as a ``file:`` URL of its absolute path, so a name such as
``concat:a.wav|b.wav`` or ``http:x.wav`` is only ever a local file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kf_desktop.errors import UserError


def kind_of(st: os.stat_result) -> str:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def is_regular_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an existing regular file (links followed), without opening it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def regular_file(path: str | os.PathLike, what: str, option: str = "") -> Path:
    """``path`` as a Path when it is an existing regular file (links are
    followed); else a UserError that names what it is. Never opens it."""
    p = Path(path).expanduser()
    name = f"{option} " if option else ""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise UserError(f"no {what} at {p}", f"check the path given to {name or 'the command'}".strip()) from None
    except OSError as e:
        raise UserError(f"cannot read the {what} {p}: {e.strerror or e}",
                        "check the file's permissions") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"the {what} {p} is {kind_of(st)}, not a file",
                        f"give {name}a regular {what} file".replace("  ", " "))
    return p


def ffmpeg_url(path: str | os.PathLike) -> str:
    """How to name a local file to ffmpeg/ffprobe so it can only be that file
    (no protocol prefix, no `concat:` list, no network)."""
    return "file:" + os.path.abspath(os.fspath(path))
